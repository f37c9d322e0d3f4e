"""The book's "This run" page, from run.json (prrt.runner.book.run_page)."""

from __future__ import annotations

from prrt.runner.book import run_page


def info(**extra):
    return {"cohort": {"name": "demo", "synthetic": True, "patients": 10, "labelled": 9},
            "inputs": {"manifest": {"sha256": "a" * 64}, "table": {"sha256": "b" * 64}, "images": {}},
            "profile": {"name": "demo"}, "seed": 1, "git": {"commit": "c" * 40, "dirty": False}, "prrt": "0.1.0",
            "python": "3.11", "device": {"cpu": "x86_64", "cpu_count": 2}, "engine": None,
            "started": "s", "finished": "f", "packages": {"torch": "2.13.0"}, "wall_time_s": 100.0,
            "notebooks": [{"name": "03_unimodal_cnn.ipynb", "wall_time_s": 60.0, "cpu_time_s": 114.0},
                          {"name": "04_fusion.ipynb", "wall_time_s": 40.0, "cpu_time_s": 40.0}], **extra}


def table_rows(page: str, first: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in page.splitlines() if line.startswith(f"| {first}")]


def test_the_page_shows_where_the_time_went_per_notebook_phase_and_model():
    page = run_page(info(timings=[
        {"chapter": "03_unimodal_cnn.ipynb", "model": "pet_cnn", "phase": "training", "pid": 5, "wall_s": 40.4,
         "cpu_s": 80.0, "calls": 15, "in_notebook": True},
        {"chapter": "03_unimodal_cnn.ipynb", "model": "pet_cnn", "phase": "augmentation", "pid": 5, "wall_s": 5.0,
         "cpu_s": 9.0, "calls": 300, "in_notebook": True},
        {"chapter": "04_fusion.ipynb", "model": "lab_pet_ct_fusion", "phase": "training", "pid": 9, "wall_s": 30.0,
         "cpu_s": 30.0, "calls": 15, "in_notebook": False}]))
    assert "## Where the time goes" in page
    page, per_model = page.split("Seconds per model")
    header = table_rows(page, "notebook")[0]
    assert header == ["notebook", "training", "augmentation", "other", "wall", "cores busy"]
    rows = {r[0]: r[1:] for r in table_rows(page, "0") + table_rows(page, "**all**")}
    assert rows["03_unimodal_cnn.ipynb"] == ["40", "5", "15", "60", "1.90"]  # other = 60 - 40.4 - 5
    assert rows["04_fusion.ipynb"] == ["30", "", "40", "40", "1.00"]  # a worker's time is beside the notebook's
    assert rows["**all**"] == ["70", "5", "55", "100", "1.54"]
    assert table_rows(per_model, "notebook")[0] == ["notebook", "model", "training", "augmentation", "fits", "total"]
    models = {(r[0], r[1]): r[2:] for r in table_rows(per_model, "0")}
    assert models[("03_unimodal_cnn.ipynb", "pet_cnn")] == ["40", "5", "15", "45"]  # training, augmentation, fits, total
    assert next(iter(models)) == ("03_unimodal_cnn.ipynb", "pet_cnn")  # costliest first


def test_a_run_without_phases_or_cpu_times_still_gets_its_wall_times():
    record = info()
    for nb in record["notebooks"]:
        del nb["cpu_time_s"]
    page = run_page(record)
    rows = {r[0]: r[1:] for r in table_rows(page, "0") + table_rows(page, "**all**")}
    assert rows["03_unimodal_cnn.ipynb"] == ["60", "60", ""] and rows["**all**"] == ["100", "100", ""]
    assert "Seconds per model" not in page


def test_the_imports_of_forked_kernels_count_in_the_total_and_are_said():
    page = run_page(info(kernel_server={"forked_kernels": True, "import_cpu_time_s": 6.0}))
    rows = {r[0]: r[1:] for r in table_rows(page, "0") + table_rows(page, "**all**")}
    assert rows["**all**"][-1] == "1.60"  # (114 + 40 + 6) / 100
    assert rows["04_fusion.ipynb"][-1] == "1.00"
    assert "forked from one process that did their imports once (`prrt.runner.forking`): 6 s of CPU" in page
    reused = run_page(info(kernel_server={"forked_kernels": True, "reused": True, "import_cpu_time_s": 0.4}))
    assert "forked from a process that an earlier run of the same Python process had started" in reused
    assert "0 s of its CPU during this run" in reused and "did their imports once" not in reused
    plain = run_page(info(kernel_server={"forked_kernels": False, "import_cpu_time_s": None}))
    assert "forked" not in plain and {r[0]: r[1:] for r in table_rows(plain, "**all**")}["**all**"][-1] == "1.54"
