"""prrt.timing: exclusive phase times, per process, gathered from the notebooks' processes and their workers."""

from __future__ import annotations

import json
import os
import time

import pandas as pd
import pytest

from prrt import timing


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    monkeypatch.setattr(timing, "_sums", {})
    monkeypatch.setattr(timing, "_stack", [])
    monkeypatch.setattr(timing, "_captures", [])
    monkeypatch.setenv(timing.ENV, str(tmp_path / "timings"))
    monkeypatch.setenv(timing.CHAPTER_ENV, "03_unimodal_cnn.ipynb")
    return tmp_path / "timings"


def test_a_phase_inside_another_pauses_it_and_takes_its_model(fresh):
    with timing.phase("training", model="pet_cnn"):
        time.sleep(0.05)
        with timing.phase("augmentation"):
            time.sleep(0.2)
    rows = timing.read_timings(fresh).set_index("phase")
    assert rows.loc["augmentation", "model"] == "pet_cnn"
    assert 0.2 <= rows.loc["augmentation", "wall_s"] < 0.3
    assert 0.05 <= rows.loc["training", "wall_s"] < 0.15  # the 0.2 s of augmentation are not training's
    assert set(rows["chapter"]) == {"03_unimodal_cnn.ipynb"} and rows["in_notebook"].all()


def test_phases_add_up_by_chapter_model_and_phase_and_count_their_calls(fresh):
    for _ in range(3):
        with timing.phase("prediction", model="ct_cnn"):
            pass
    rows = timing.read_timings(fresh)
    assert len(rows) == 1 and rows.loc[0, "calls"] == 3


def test_a_phase_in_an_untimed_helper_thread_counts_in_the_waiting_thread_s_phase_and_other_threads_time(fresh):
    import threading

    def helper(untimed):
        if untimed:
            timing.untimed()
        with timing.phase("training", model="other"):
            time.sleep(0.1)

    with timing.phase("preprocessing"):
        t = threading.Thread(target=helper, args=(True,))
        t.start()
        t.join()
    rows = timing.read_timings(fresh)
    assert list(rows["phase"]) == ["preprocessing"] and rows.loc[0, "wall_s"] >= 0.1
    t = threading.Thread(target=helper, args=(False,))  # a Dask worker runs its jobs on a thread of its own
    t.start()
    t.join()
    assert set(timing.read_timings(fresh)["phase"]) == {"preprocessing", "training"}


def test_cpu_time_is_measured_beside_wall_time(fresh):
    with timing.phase("statistics"):
        # busy for 0.1 s of CPU and of wall time: another thread of the process (pytest-xdist's) can make the
        # process's CPU time run ahead of the wall clock (measured in `make test`: 0.1000 s CPU in 0.0998 s)
        cpu_end, wall_end = time.process_time() + 0.1, time.perf_counter() + 0.1
        while time.process_time() < cpu_end or time.perf_counter() < wall_end:
            pass
    row = timing.read_timings(fresh).iloc[0]
    assert row["cpu_s"] >= 0.1 and row["wall_s"] >= 0.1


def test_an_unknown_phase_is_an_error():
    with pytest.raises(ValueError, match="unknown phase 'train'"), timing.phase("train"):
        pass


def test_nothing_is_written_without_the_folder(monkeypatch, fresh):
    monkeypatch.delenv(timing.ENV)
    with timing.phase("training"):
        pass
    assert timing.flush() is None and not fresh.exists()


def test_a_captured_job_is_written_only_once_merged_and_under_the_notebooks_chapter(monkeypatch, fresh):
    with timing.capture() as job, timing.phase("training", model="pet_cnn"):
        time.sleep(0.01)
    assert not fresh.exists()  # the job's phases wait for the notebook's process to merge them
    # a job from a worker in another process, which did not know the chapter
    worker = {("", "pet_cnn", "training", os.getpid() + 1): [2.0, 1.5, 1]}
    timing.merge(job)
    timing.merge(worker)
    rows = timing.read_timings(fresh)
    assert set(rows["chapter"]) == {"03_unimodal_cnn.ipynb"}
    assert sorted(rows["in_notebook"]) == [False, True]
    assert rows["wall_s"].sum() == pytest.approx(2.0 + rows.loc[rows["in_notebook"], "wall_s"].iloc[0])


def test_the_file_is_replaced_whole_and_names_its_process(fresh):
    with timing.phase("training"):
        pass
    path = timing.flush()
    assert path.name == f"03_unimodal_cnn.ipynb-{os.getpid()}.json"
    assert json.loads(path.read_text())["pid"] == os.getpid() and not list(fresh.glob("*.tmp"))


def rows_of(*records):
    return pd.DataFrame([dict(zip(["chapter", "model", "phase", "pid", "wall_s", "cpu_s", "calls", "in_notebook"], r))
                         for r in records])


def test_the_chapter_table_gives_phases_other_wall_and_cores_busy():
    rows = rows_of(("03", "pet_cnn", "training", 1, 100.0, 190.0, 15, True),
                   ("03", "pet_cnn", "prediction", 1, 5.0, 9.0, 15, True),
                   ("04", "fusion", "training", 2, 30.0, 30.0, 15, False),  # a worker's
                   ("04", "fusion", "training", 3, 30.0, 30.0, 15, False))
    notebooks = [{"name": "03", "wall_time_s": 120.0, "cpu_time_s": 228.0},
                 {"name": "04", "wall_time_s": 40.0, "cpu_time_s": 76.0},
                 {"name": "05", "wall_time_s": 10.0}]  # a record without CPU time
    table = timing.chapter_table(rows, notebooks)
    assert table.loc["03", "training"] == 100 and table.loc["03", "other"] == 15
    assert table.loc["04", "training"] == 60 and table.loc["04", "other"] == 40  # the workers' time is beside it
    assert table.loc["03", "cores busy"] == pytest.approx(1.9) and pd.isna(table.loc["05", "cores busy"])
    assert "Grad-CAM" not in table.columns  # no notebook spent time on it


def test_the_model_table_counts_fits_per_notebook_and_puts_the_costliest_first():
    rows = rows_of(("03", "pet_cnn", "training", 1, 100.0, 190.0, 15, True),
                   ("03", "pet_cnn", "augmentation", 1, 10.0, 19.0, 300, True),
                   ("04", "pet_cnn", "training", 1, 50.0, 95.0, 15, True),
                   ("04", "fusion", "training", 1, 200.0, 200.0, 15, True),
                   ("03", "", "loading inputs", 1, 3.0, 3.0, 100, True))
    table = timing.model_table(rows)
    assert list(table.index) == [("04", "fusion"), ("03", "pet_cnn"), ("04", "pet_cnn")]
    assert table.loc[("03", "pet_cnn"), "fits"] == 15 and table.loc[("03", "pet_cnn"), "total"] == 110
    assert list(table.columns[:2]) == ["training", "augmentation"]
