"""`prrt run` and `prrt book` without the smoke run: bad manifests, incomplete runs, a manifest with nothing
to model. (The tests that read the smoke run are in test_runner.py, which `make test` keeps on one worker.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from prrt.cli import main
from prrt.data import privacy
from prrt.runner import book, lock


def test_find_identifiers_catches_a_leak(tmp_path):
    (tmp_path / "page.html").write_text("<p>patient SYN-ABC123 had a lesion</p><p>SYN-ABC1234</p>")
    assert privacy.find_identifiers(tmp_path, {"SYN-ABC123": "P001", "SYN-000001": "P002", "12": "P003"}) == [
        ("page.html", "P001")]


def test_invalid_manifest_stops_the_run_before_anything_runs(tmp_path, small_cohort_dir, capsys):
    shutil.copytree(small_cohort_dir, tmp_path / "c")
    df = pd.read_csv(tmp_path / "c" / "cohort.csv", dtype=str)
    df.loc[0, "ggt"] = "lots"
    df.to_csv(tmp_path / "c" / "cohort.csv", index=False)
    rc = main(["run", "--manifest", str(tmp_path / "c" / "manifest.yaml"), "--profile", "smoke",
               "--run-dir", str(tmp_path / "r")])
    assert rc == 2 and "'lots' is not a number" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_folder_that_is_not_a_run_is_never_replaced(tmp_path, small_cohort_dir, capsys):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("years of work")
    rc = main(["run", "--manifest", str(small_cohort_dir / "manifest.yaml"), "--profile", "smoke",
               "--run-dir", str(tmp_path / "thesis")])
    assert rc == 1 and "is not empty and is not a run folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["thesis"]
    assert (tmp_path / "thesis" / "chapter1.tex").read_text() == "years of work"


def test_book_refuses_an_incomplete_run(tmp_path):
    with pytest.raises(lock.RunError, match="not a run directory"):
        book.build_book(tmp_path)


@pytest.mark.slow
def test_a_manifest_without_labs_or_images_runs_and_skips_with_reasons(small_cohort_dir, tmp_path):
    (tmp_path / "m.yaml").write_text(
        f"name: bare\ntable: {small_cohort_dir / 'cohort.csv'}\nid: patient_id\n"
        "endpoint: {time: pfs_months, event: progressed, horizon_months: 12}\nlabs: []\nclinical: [age, sex, grade]\n")
    assert main(["run", "--manifest", str(tmp_path / "m.yaml"), "--profile", "smoke",
                 "--run-dir", str(tmp_path / "run")]) == 0
    summary = pd.read_csv(tmp_path / "run" / "results" / "summary.csv").set_index("model")
    assert summary.loc["lab_rf", "status"] == "skipped: the manifest lists no laboratory values"
    assert summary.loc["pet_features_rf", "status"] == "skipped: the manifest names no PET images"
    assert summary.loc["pet_cnn", "status"] == "skipped: the manifest names no PET images"
    assert summary.loc["ct_cnn", "status"] == "skipped: the manifest names no CT images"
    assert summary.loc["ct_cnn_pretrained", "status"] == "skipped: the manifest names no CT images"
    for fusion in ("lab_pet_ct_fusion", "lab_pet_ct_late"):
        assert summary.loc[fusion, "status"] == "skipped: fewer than two of its modalities are in the manifest"
    ch4 = (tmp_path / "run" / "notebooks" / "04_fusion.ipynb").read_text()
    assert "No model of chapters 2 to 4 ran for this manifest, so there is nothing to compare." in ch4
    assert "No pretraining figure in this run" in ch4
    nb = (tmp_path / "run" / "notebooks" / "01_cohort.ipynb").read_text()
    assert "The manifest names no images." in nb and "Synthetic data" not in nb
    ch5 = (tmp_path / "run" / "notebooks" / "05_explainability.ipynb").read_text()
    assert "No image CNN ran in this run" in ch5 and "so there is nothing to ablate" in ch5
    assert "fusion did not run, so there is no laboratory importance inside it to measure" in ch5


# ---- one run per folder, and interruption -----------------------------------------------------------------
def _notebooks(tmp_path, *cells) -> Path:
    """A notebook directory with one notebook of ``cells`` (it gets prrt's parameters)."""
    import nbformat

    d = tmp_path / "nbs"
    d.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('manifest = ""\nrun_dir = ""\nprofile = ""\ncache_dir = ""\nseed = 0',
                                          metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, d / "01_only.ipynb")
    return d


@pytest.mark.slow
def test_each_notebook_has_its_own_kernel_started_while_the_one_before_ran(small_cohort_dir, tmp_path):
    """The runner starts the next notebook's kernel while a notebook runs: every notebook still gets a kernel of its
    own (its own process, started in the staging folder with the notebook's name in its environment and prrt's
    imports done), the second was started before the first finished, and no kernel outlives the run, also when a
    notebook fails. Progress bars in the kernels redraw seldom (each redraw is an output of the notebook)."""
    import nbformat
    import psutil

    report = ("import json, os, sys, time, pathlib, psutil\n"
              "me = psutil.Process()\n"
              "pathlib.Path(os.environ['PRRT_CHAPTER'] + '.json').write_text(json.dumps(dict(\n"
              "    pid=os.getpid(), created=me.create_time(), cwd=os.getcwd(), finished=time.time() + 2,\n"
              "    preloaded='prrt.study.notebook' in sys.modules)))\n"
              "time.sleep(2)")
    bars = "from tqdm.auto import tqdm\nfor _ in tqdm(range(300), desc='steps'):\n    time.sleep(0.005)"
    nbs = _notebooks(tmp_path, report, bars)
    shutil.copy(nbs / "01_only.ipynb", nbs / "02_two.ipynb")
    run_dir = tmp_path / "runs" / "r"
    assert main(["run", "--manifest", str(small_cohort_dir / "manifest.yaml"), "--profile", "smoke", "--run-dir",
                 str(run_dir), "--no-book", "--notebooks-dir", str(nbs)]) == 0
    seen = {p.stem: json.loads(p.read_text()) for p in run_dir.glob("0*.json")}
    assert sorted(seen) == ["01_only.ipynb", "02_two.ipynb"]
    assert len({k["pid"] for k in seen.values()}) == 2
    assert all(k["preloaded"] and Path(k["cwd"]).name == f".r.staging-{os.getpid()}" for k in seen.values()), seen
    assert seen["02_two.ipynb"]["created"] < seen["01_only.ipynb"]["finished"] - 1
    assert not any(psutil.pid_exists(k["pid"]) and psutil.Process(k["pid"]).status() != psutil.STATUS_ZOMBIE
                   for k in seen.values())
    # a progress bar of 1.5 s leaves its first and last state in the notebook, not one output per redraw
    bar = nbformat.read(run_dir / "notebooks" / "01_only.ipynb", as_version=4).cells[-1].outputs
    assert len(bar) <= 4 and any("300/300" in out["text"] for out in bar), bar  # tqdm's warning, 0, 300, newline
    # the first notebook fails while the second's kernel is up: that kernel is stopped too
    nb = nbformat.read(nbs / "01_only.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("raise ValueError('planted')"))
    nbformat.write(nb, nbs / "01_only.ipynb")
    before = set(psutil.Process().children(recursive=True))
    assert main(["run", "--manifest", str(small_cohort_dir / "manifest.yaml"), "--profile", "smoke", "--run-dir",
                 str(tmp_path / "runs" / "failing"), "--no-book", "--notebooks-dir", str(nbs)]) == 1
    time.sleep(1)
    left = [c for c in set(psutil.Process().children(recursive=True)) - before
            if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert left == [], [(c.pid, c.cmdline()) for c in left]


def _prrt(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prrt.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_runs_into_one_folder_one_runs_and_the_other_is_refused(small_cohort_dir, tmp_path):
    nbs = _notebooks(tmp_path, "import time, pathlib\ntime.sleep(5)\n"
                               "pathlib.Path(run_dir, 'seed.txt').write_text(str(seed))")
    run_dir = tmp_path / "runs" / "r"
    (tmp_path / "runs" / ".r.staging-99999999").mkdir(parents=True)  # what a run killed by SIGKILL leaves
    procs = {seed: _prrt("run", "--manifest", small_cohort_dir / "manifest.yaml", "--profile", "smoke", "--run-dir",
                         run_dir, "--seed", seed, "--no-book", "--notebooks-dir", nbs) for seed in (1, 2)}
    out = {seed: p.communicate(timeout=300) for seed, p in procs.items()}
    rcs = {seed: p.returncode for seed, p in procs.items()}
    assert sorted(rcs.values()) == [0, 2], out
    winner = next(s for s, rc in rcs.items() if rc == 0)
    loser = 3 - winner
    assert re.search(rf"Run refused: .*{run_dir} is in use by another process: prrt run \(PID {procs[winner].pid} on "
                     r".*, started 20\d\d-", out[loser][1]), out[loser][1]
    # exactly one run's results, consistent with its record
    assert json.loads((run_dir / "run.json").read_text())["seed"] == winner
    assert (run_dir / "seed.txt").read_text() == str(winner)
    assert not list(run_dir.parent.glob(".r.staging*")) and not (run_dir.parent / ".r.failed").exists()
    assert json.loads((run_dir.parent / ".r.lock").read_text() or "{}") == {}  # released


def test_a_kernel_that_dies_leaves_the_notebook_with_the_outputs_of_its_cells_so_far(small_cohort_dir, tmp_path, capsys):
    """The executed notebook is written when it starts, every 30 s and when it ends, failed or not (not before and after
    every cell, :func:`prrt.runner.execute.papermill_engine`): a kernel that dies in the middle still leaves the outputs
    of the cells it ran, in the failed run's folder."""
    import nbformat

    nbs = _notebooks(tmp_path, "print('written before the kernel died')", "import os\nos._exit(3)", "print('never')")
    run_dir = tmp_path / "runs" / "r"
    rc = main(["run", "--manifest", str(small_cohort_dir / "manifest.yaml"), "--profile", "smoke", "--run-dir",
               str(run_dir), "--no-book", "--notebooks-dir", str(nbs)])
    assert rc == 1 and "notebook 01_only.ipynb failed" in capsys.readouterr().err
    kept = nbformat.read(run_dir.with_name(".r.failed") / "notebooks" / "01_only.ipynb", as_version=4)
    outputs = ["".join(o.get("text", "") for o in cell.get("outputs", [])) for cell in kept.cells]
    assert "written before the kernel died\n" in outputs and "never\n" not in outputs, outputs
    assert not run_dir.exists()


def test_the_lock_names_its_holder_and_a_dead_holder_is_recovered(tmp_path):
    run_dir = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", f"import time\nfrom prrt.runner.lock import RunLock\n"
                               f"RunLock({str(run_dir)!r}, 'book').__enter__()\nprint('locked', flush=True)\n"
                               "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(lock.RunLocked, match=rf"in use by another process: prrt book \(PID {holder.pid} on "):
            with lock.RunLock(run_dir, "run"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock
        holder.wait()
    said = []
    with lock.RunLock(run_dir, "run", log=said.append):
        assert json.loads((tmp_path / ".r.lock").read_text())["pid"] == os.getpid()
    assert len(said) == 1 and f"left by PID {holder.pid} (prrt book" in said[0] and "no longer running" in said[0]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_run_stops_its_kernel_and_leaves_the_previous_run(small_cohort_dir, tmp_path, signum):
    import psutil

    nbs = _notebooks(tmp_path, "import os, pathlib, time\npathlib.Path('kernel.pid').write_text(str(os.getpid()))\n"
                               "time.sleep(120)")
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "book").mkdir(parents=True)
    previous = {"run.json": '{"status": "complete", "seed": 5}', "book/index.html": "<p>the previous book</p>"}
    for name, text in previous.items():
        (run_dir / name).write_text(text)
    proc = _prrt("run", "--manifest", small_cohort_dir / "manifest.yaml", "--profile", "smoke", "--run-dir", run_dir,
                 "--no-book", "--notebooks-dir", nbs)
    marker = run_dir.with_name(f".r.staging-{proc.pid}") / "kernel.pid"
    deadline = time.time() + 120
    while not marker.is_file() or not marker.read_text():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    kernel = int(marker.read_text())
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    lines = [ln for ln in err.splitlines() if ln.startswith("Run interrupted")]
    assert lines == [f"Run interrupted: stopped by {signal.Signals(signum).name}: the run was abandoned and its staging "
                     f"folder removed; the previous results and book in {run_dir} (if any) are untouched"], err
    assert "Traceback" not in err
    assert not list(run_dir.parent.glob(".r.staging*"))
    for name, text in previous.items():
        assert (run_dir / name).read_text() == text
    time.sleep(1)
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE


def test_the_guard_leaves_out_the_books_own_words_and_counts_them(tmp_path):
    """A hospital whose IDs look like `P001` can publish (the pseudonyms then read `PS001`, and `P001` is a word of the
    book's own text); a rare value that is not a word of the book is searched for and found."""
    tokens = {"P001": "the patient ID of PS004", "Other": "a rare value of column 'site'", "AB": "the patient ID of PS002",
              "Zürich-Ward-3": "a rare value of column 'ward'"}
    keep, unchecked = privacy.checkable_tokens(tokens, "Outputs use pseudonyms (P001, P002, …). Other notes.")
    assert keep == {"Zürich-Ward-3": "a rare value of column 'ward'"} and unchecked == 3
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "theme.js").write_text("Zürich-Ward-3")  # the theme's own files are not the run's
    (tmp_path / "page.html").write_text("<td>PS001</td><td>P0011</td>")
    assert privacy.find_identifiers(tmp_path, keep) == []
    (tmp_path / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\n...tEXtComment\x00Z\xc3\xbcrich-Ward-3\x00")
    assert privacy.find_identifiers(tmp_path, keep) == [("fig.png", "a rare value of column 'ward'")]
    assert "P001" in privacy.fixed_text()  # the book's own text names the pseudonym format
