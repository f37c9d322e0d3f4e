"""What starting each notebook's kernel one notebook ahead saves (prrt.runner.execute.KernelsAhead).

    python benchmarks/kernel_start.py [--repeats 3]

Times papermill's execution of a one-cell notebook that does what every chapter does first (``from prrt.study import
notebook``): with a kernel that papermill starts itself (as every run did before), and with a kernel that the runner
started ahead (it had ``--wait`` seconds, standing for the previous notebook's run, to start and import). The
difference is what each notebook of a run no longer waits for, when the machine has a core to spare for it.
Reports the machine's load: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import nbformat
import papermill as pm

from prrt.runner.execute import KernelsAhead


def notebook(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from prrt.study import notebook")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "01_first.ipynb"
    nbformat.write(nb, path)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--wait", type=float, default=15.0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        nb = notebook(folder)
        times = {"kernel started by papermill": [], "kernel started ahead": []}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            pm.execute_notebook(str(nb), str(folder / "out.ipynb"), kernel_name="python3", progress_bar=False,
                                cwd=tmp)
            times["kernel started by papermill"].append(time.perf_counter() - t0)
            kernels = KernelsAhead(folder, lambda nb: {})
            kernels.start(nb)
            time.sleep(args.wait)
            km = kernels.take(nb)
            t0 = time.perf_counter()
            pm.execute_notebook(str(nb), str(folder / "out.ipynb"), kernel_name="python3", progress_bar=False,
                                cwd=tmp, km=km)
            times["kernel started ahead"].append(time.perf_counter() - t0)
            kernels.stop(km)
    print(f"load average before the last line: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for what, ts in times.items():
        print(f"{what:30s} median {statistics.median(ts):5.2f} s  ({', '.join(f'{t:.2f}' for t in ts)})")


if __name__ == "__main__":
    main()
