"""Scale-out that was run: a Dask scheduler and two workers as separate processes (``dask scheduler``,
``dask worker tcp://…``), and a chapter's fold jobs sent to them with ``prrt run --engine tcp://…``.

The results must be the files of a run in the notebook's own process with one thread (the engine runs one
thread per worker, and torch's CPU sums depend on the thread count), byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prrt.cli import main

REPO = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).with_name("dask")


def _start(*args, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([str(DASK), *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            cwd=log.parent)


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and two single-thread workers, each its own process, on this machine; yields the address."""
    info = tmp_path / "scheduler.json"
    procs = [_start("scheduler", "--scheduler-file", str(info), "--port", "0", "--no-dashboard",
                    log=tmp_path / "scheduler.log")]
    try:
        deadline = time.monotonic() + 120
        while not info.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert info.is_file(), (tmp_path / "scheduler.log").read_text()
        address = json.loads(info.read_text())["address"]
        assert address.startswith("tcp://")
        for i in range(2):
            procs.append(_start("worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                                "--name", f"w{i}", log=tmp_path / f"worker{i}.log"))
        from dask.distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()  # two processes, not this one
        yield address
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.slow
def test_a_chapter_on_a_scheduler_and_two_worker_processes_gives_the_files_of_a_run_in_one_process(
        cluster, small_cohort_dir, tmp_path, monkeypatch):
    chapter = tmp_path / "chapter_03"  # the image CNNs: two models x 2 repeats x 3 folds = 12 jobs
    chapter.mkdir()
    shutil.copy(REPO / "notebooks" / "03_unimodal_cnn.ipynb", chapter)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernels inherit it: one thread, as in each worker
    cache = tmp_path / "cache"

    def run(name, *engine):
        assert main(["run", "--manifest", str(small_cohort_dir / "manifest.yaml"), "--profile", "smoke",
                     "--run-dir", str(tmp_path / name), "--seed", "5", "--notebooks-dir", str(chapter),
                     "--cache-dir", str(cache), "--no-book", *engine]) == 0
        return tmp_path / name

    here = run("in_one_process")
    there = run("on_the_cluster", "--engine", cluster)
    info = json.loads((there / "run.json").read_text())
    assert info["engine"] == {"address": cluster, "workers": None}
    timings = [t for t in info["timings"] if t["phase"] == "training"]
    assert len({t["pid"] for t in timings}) == 2 and not any(t["in_notebook"] for t in timings)  # both workers fitted
    files = sorted(p.relative_to(here) for p in (here / "predictions").glob("*.csv"))
    assert [f.name for f in files] == ["ct_cnn.csv", "pet_cnn.csv"]
    for f in [*files, Path("results/summary.csv"), Path("checkpoints/pet_cnn/curves.csv")]:
        assert (there / f).read_bytes() == (here / f).read_bytes(), f
