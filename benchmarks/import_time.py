"""What a notebook's kernel pays before its first line of work: the imports of a chapter.

    python benchmarks/import_time.py [--repeats 5]

Times, in fresh Python processes (median of ``--repeats``), the import line of chapter 01 (the lightest) and of
chapter 04, with prrt imported first as the notebooks do (jsonschema then skips the optional rfc3987-syntax, see
prrt/__init__.py) and with jsonschema imported before prrt (as a process that did not know the trick would), and
``import monai`` (chapters 03-06 train or explain CNNs with it). Reports the machine's load while it ran: the
numbers are comparable only between lines of one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

LINES = {
    "chapter 01": "from prrt.study import ch01_cohort, figures, notebook",
    "chapter 01, jsonschema first": "import jsonschema; from prrt.study import ch01_cohort, figures, notebook",
    "chapter 04": "from prrt.study import ch04_comparison, ch04_fusion, figures, notebook",
    "chapter 04 + monai": "from prrt.study import ch04_comparison, ch04_fusion, figures, notebook; import monai",
    "chapter 04 + monai, jsonschema first": "import jsonschema; from prrt.study import ch04_comparison, ch04_fusion, "
                                            "figures, notebook; import monai",
}


def seconds(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    seconds(LINES["chapter 04 + monai"])  # warm the file cache and the bytecode
    load = os.getloadavg()[0]
    for name, code in LINES.items():
        runs = [seconds(code) for _ in range(args.repeats)]
        print(f"| {name} | {statistics.median(runs):.2f} s | {min(runs):.2f}-{max(runs):.2f} s |", flush=True)
    print(f"load average: {load:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
