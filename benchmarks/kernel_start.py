"""What a notebook's kernel costs before its first line of work, three ways: started by papermill, started one
notebook ahead by the runner and importing for itself (prrt.runner.execute.KernelsAhead, ``PRRT_FORK_KERNELS=off``),
and started ahead as a fork of the run's kernel server, which did the imports once (prrt.runner.forking).

    python benchmarks/kernel_start.py [--repeats 3] [--kernels 7]

Each way runs ``--kernels`` one-cell notebooks that do what every chapter does first (``from prrt.study import
notebook``) and then import MONAI, as the image chapters do, one after the other as a run does. It reports the wall
time papermill took per notebook and the CPU seconds per kernel (for the forked kernels, the server's imports are
reported apart: a run pays them once). Reports the machine's load: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import nbformat
import papermill as pm

from prrt.runner import forking
from prrt.runner.execute import KernelsAhead


def notebooks(folder: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("from prrt.study import notebook\nimport monai")]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        paths.append(folder / f"{i + 1:02d}_first.ipynb")
        nbformat.write(nb, paths[-1])
    return paths


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_round(folder: Path, nbs: list[Path], way: str, wait: float) -> dict:
    """Wall seconds per notebook and CPU seconds per kernel (and of the server) for one way."""
    out, walls, cpus = folder / "out.ipynb", [], []
    cpu0 = children_cpu()
    if way == "started by papermill":
        for nb in nbs:
            t0 = time.perf_counter()
            pm.execute_notebook(str(nb), str(out), kernel_name="python3", progress_bar=False, cwd=str(folder))
            walls.append(time.perf_counter() - t0)
        return {"wall": walls, "cpu": [(children_cpu() - cpu0) / len(nbs)], "server": 0.0}
    os.environ[forking.ENV] = "on" if way == "forked from the server" else "off"
    forking.stop_shared()  # each round starts its own server, as the first run of a process does
    kernels = KernelsAhead(folder, {}, lambda nb: {}, notebooks=len(nbs))
    try:
        for i, nb in enumerate(nbs):
            km = kernels.take(nb)
            if i + 1 < len(nbs):
                kernels.start(nbs[i + 1])
            time.sleep(wait)  # standing for the notebook before it: the kernel starts and imports meanwhile
            t0 = time.perf_counter()
            pm.execute_notebook(str(nb), str(out), kernel_name="python3", progress_bar=False, cwd=str(folder), km=km)
            walls.append(time.perf_counter() - t0)
            cpus.append(kernels.stop(km))
        # as the runner counts it: the processes jupyter_client started (the kernels, or the launchers of forked
        # ones), reaped as each kernel stopped, plus what the server reports of each forked kernel
        per_kernel = (children_cpu() - cpu0 + sum(cpus)) / len(nbs)
    finally:
        kernels.stop_all()
    server_cpu = kernels.server_cpu_s or 0.0
    return {"wall": walls, "cpu": [per_kernel], "server": server_cpu}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kernels", type=int, default=7)
    ap.add_argument("--wait", type=float, default=10.0)
    args = ap.parse_args(argv)
    ways = ["started by papermill", "started ahead, own imports", "forked from the server"]
    if not forking.available():
        ways.remove("forked from the server")
    results = {way: {"wall": [], "cpu": [], "server": []} for way in ways}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        nbs = notebooks(folder, args.kernels)
        for _ in range(args.repeats):
            for way in ways:
                r = one_round(folder, nbs, way, args.wait)
                for k in ("wall", "cpu"):
                    results[way][k] += r[k]
                results[way]["server"].append(r["server"])
    print(f"load average before the last line: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"{args.kernels} notebooks a round, {args.repeats} rounds")
    for way, r in results.items():
        print(f"{way:28s} papermill per notebook: median {statistics.median(r['wall']):5.2f} s;"
              f" CPU per kernel {statistics.median(r['cpu']):5.2f} s; server's imports, once a run:"
              f" {statistics.median(r['server']):5.2f} s CPU")


if __name__ == "__main__":
    main()
