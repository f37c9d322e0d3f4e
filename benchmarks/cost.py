"""The cost of the README's two commands, measured from a fresh clone against the reference workload (issue 29).

    python benchmarks/cost.py                       # clone HEAD into a temporary folder, measure both commands
    python benchmarks/cost.py --only test           # one of them
    python benchmarks/cost.py --clone DIR --keep    # clone into DIR and keep it

What it does: clones this repository's HEAD (what CI would get), times the reference workload
(:mod:`benchmarks.reference_workload`), runs ``make book`` and then ``make test`` in the clone under
:func:`benchmarks.measure_command.measure` (wall time, CPU time, cores busy, peak memory of the process tree), times
the reference workload again, and writes:

* ``benchmarks/results/cost.json``: the machine, the reference times before and after, and each command's
  numbers with its wall time as a multiple of the reference (the mean of the two reference medians);
* the table between the markers ``<!-- cost:start -->`` and ``<!-- cost:end -->`` of ``book/reproducibility.md``
  (:func:`cost_markdown`): the page shows the latest measured figures, written here and never by hand.

Run it on a machine that is otherwise idle: the reference and the commands then measure the same machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
START, END = "<!-- cost:start -->", "<!-- cost:end -->"


def machine() -> dict:
    """The machine's CPU model, core count and memory (Linux /proc; what is unknown stays empty)."""
    cpu, mem = "", 0
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
        mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal"))) // 2**20
    except (OSError, StopIteration, ValueError):
        pass
    from prrt.runner.browser import find_browser

    # without a browser `make book` skips its browser check and `make test` the tests that open the book
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "memory_gib": mem, "gpu": "none",
            "browser": find_browser()}


#: What the page says of the machine's browser (records from before it was recorded say nothing).
BROWSER = {True: ", Chromium for the book's browser check",
           False: ", no browser (`make book` skipped its browser check, `make test` the tests that open the book)"}


def cost_markdown(record: dict) -> str:
    """The page's table of a ``cost.json`` record: each command's wall time, its multiple of the reference, the
    cores busy on average and the peak memory, with the machine and the date."""
    m = record["machine"]
    ref = record["reference_s"]
    lines = [(f"Measured on {record['date']} by `benchmarks/cost.py` from a fresh clone of commit "
              f"{record['commit'][:12]}, on {m['cores']} cores ({m['cpu'] or 'CPU model unknown'}), "
              f"{m['memory_gib']} GiB, no GPU{BROWSER[bool(m['browser'])] if 'browser' in m else ''}. "
              "Reference workload (`benchmarks/reference_workload.py`): "
              f"{ref:.2f} s (median before {record['reference_before']['median_s']:.2f} s, after "
              f"{record['reference_after']['median_s']:.2f} s)."), "",
             "| command | wall time | × reference | cores busy | peak memory | exit |",
             "|---|---|---|---|---|---|"]
    for name, r in record["commands"].items():
        lines.append(f"| `{name}` | {r['wall_time_s'] / 60:.1f} min ({r['wall_time_s']:.0f} s) | "
                     f"{r['wall_time_s'] / ref:.0f} | {r['cores_busy']:.2f} | {r['peak_tree_rss_mib']} MiB | "
                     f"{r['exit_code']} |")
    return "\n".join(lines)


def write_page(record: dict, page: Path = ROOT / "book" / "reproducibility.md") -> None:
    """Put :func:`cost_markdown` between the page's markers (an error when they are missing)."""
    text = page.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{page} has no {START} ... {END} block for the cost table")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    page.write_text(f"{head}{START}\n{cost_markdown(record)}\n{END}{tail}", encoding="utf-8")


def main(argv=None) -> int:
    from measure_command import measure
    from reference_workload import reference

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clone", help="where to clone (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the clone")
    ap.add_argument("--only", choices=["book", "test"], help="measure one command only")
    args = ap.parse_args(argv)

    tmp = None if args.clone else tempfile.TemporaryDirectory(prefix="prrt-cost-")
    clone = Path(args.clone or tmp.name) / "prrt"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                            check=True).stdout.strip()
    before = reference()
    commands = {}
    for name in (["book", "test"] if args.only is None else [args.only]):
        commands[f"make {name}"] = measure(["make", name], cwd=clone)
    after = reference()
    record = {"date": dt.date.today().isoformat(), "commit": commit, "machine": machine(),
              "reference_before": before, "reference_after": after,
              "reference_s": (before["median_s"] + after["median_s"]) / 2, "commands": commands}
    out = ROOT / "benchmarks" / "results" / "cost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    write_page(record)
    print(cost_markdown(record))
    if tmp is not None and not args.keep:
        tmp.cleanup()
    return max(r["exit_code"] for r in commands.values())


if __name__ == "__main__":
    sys.exit(main())
