"""The cost benchmark's page table and its yardstick (benchmarks/cost.py, benchmarks/reference_workload.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from prrt.runner.browser import find_browser

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def _record():
    return {"date": "2026-12-05", "commit": "0123456789abcdef", "reference_s": 1.5,
            "reference_before": {"median_s": 1.4}, "reference_after": {"median_s": 1.6},
            "machine": {"cpu": "Test CPU", "cores": 2, "memory_gib": 24, "gpu": "none"},
            "commands": {"make book": {"wall_time_s": 600.0, "cores_busy": 1.83, "peak_tree_rss_mib": 1500,
                                       "exit_code": 0},
                         "make test": {"wall_time_s": 240.0, "cores_busy": 1.9, "peak_tree_rss_mib": 1300,
                                       "exit_code": 0}}}


def test_the_page_table_gives_each_command_as_a_multiple_of_the_reference(tmp_path):
    cost = _load("cost")
    text = cost.cost_markdown(_record())
    assert text.startswith("Measured on 2026-12-05 by `benchmarks/cost.py` from a fresh clone of commit 0123456789ab, "
                           "on 2 cores (Test CPU), 24 GiB, no GPU. Reference workload")
    assert "| `make book` | 10.0 min (600 s) | 400 | 1.83 | 1500 MiB | 0 |" in text
    assert "| `make test` | 4.0 min (240 s) | 160 | 1.90 | 1300 MiB | 0 |" in text
    # whether the browser check ran is said where the machine recorded it
    record = _record()
    record["machine"]["browser"] = None
    assert "24 GiB, no GPU, no browser (`make book` skipped its browser check, `make test` the tests that open the " \
           "book). Reference workload" in cost.cost_markdown(record)
    record["machine"]["browser"] = "/usr/bin/chromium"
    assert "no GPU, Chromium for the book's browser check. Reference" in cost.cost_markdown(record)
    assert cost.machine()["browser"] == find_browser()
    page = tmp_path / "reproducibility.md"
    page.write_text(f"# R\n\nbefore\n{cost.START}\nold table\n{cost.END}\nafter\n")
    cost.write_page(_record(), page)
    out = page.read_text()
    assert "old table" not in out and out.startswith("# R\n\nbefore\n") and out.endswith(f"{cost.END}\nafter\n")
    assert "| `make book` |" in out
    page.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- cost:start -->"):
        cost.write_page(_record(), page)


def test_the_reference_workload_is_timed_after_a_warm_up():
    ref = _load("reference_workload").reference(runs=2, steps=1)
    assert len(ref["seconds"]) == 2 and ref["median_s"] > 0 and ref["steps"] == 1 and ref["torch_threads"] >= 1
