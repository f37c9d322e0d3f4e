"""Wall time and peak memory of a command and all its child processes.

    python benchmarks/measure_command.py -- make book

Peak memory is the largest *sum* of resident set sizes (RSS) of the command's process tree,
sampled every 0.2 s from /proc (Linux), so kernels, workers and subprocesses are all counted.
It prints one line per result, ready to paste into the reproducibility notes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _tree_rss_bytes(root: int) -> int:
    total, stack, seen = 0, [root], set()
    page = os.sysconf("SC_PAGE_SIZE")
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        stack += _children(pid)
    return total


def measure(cmd: list[str], interval_s: float = 0.2, cwd=None) -> dict:
    """Wall time, peak memory of the process tree, and the CPU time (user + system) of the command and every
    descendant that was waited for, with the mean number of busy cores (CPU time / wall time)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_bytes(proc.pid))
        time.sleep(interval_s)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"command": " ".join(cmd), "exit_code": proc.returncode, "wall_time_s": round(wall, 1),
            "peak_tree_rss_mib": round(peak / 2**20), "cpu_time_s": round(cpu, 1),
            "cores_busy": round(cpu / wall, 2) if wall > 0 else 0.0}


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    if not argv:
        print(__doc__)
        return 2
    r = measure(argv)
    print(f"command: {r['command']}\nexit code: {r['exit_code']}\nwall time: {r['wall_time_s']} s\n"
          f"peak memory (process tree RSS): {r['peak_tree_rss_mib']} MiB\n"
          f"CPU time: {r['cpu_time_s']} s, {r['cores_busy']} cores busy on average")
    return r["exit_code"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
