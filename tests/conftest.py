"""Shared fixtures: a small synthetic cohort (made once per test session) and helpers."""

from __future__ import annotations

import os

# `make test` runs the tests in parallel (pytest-xdist, one worker per core). Each worker, and each notebook
# kernel it starts, then gets its share of the cores: with torch's default of one thread per core in every
# worker, the workers' OpenMP threads competed for the same cores and the suite took longer than serially
# (measured on 2 cores: 268 s against 222 s serial, 179 s with one thread per worker).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _share = max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))

# Building a book opens it in headless Chromium (prrt.runner.browser) when one is found: about 11 s for the demo book (15
# pages, four at a time). The tests that build books for other reasons leave that out; the smoke run of
# tests/e2e/test_runner.py turns it on.
os.environ.setdefault("PRRT_BROWSER_CHECK", "off")

import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from prrt.data.load import load_cohort
from prrt.data.manifest import ManifestError
from prrt.data.synthetic import SyntheticConfig, generate

DATA = Path(__file__).parent / "fixtures"
REAL_CT = DATA / "example_ct.nii.gz"


@pytest.fixture(scope="session")
def small_cohort_dir(tmp_path_factory) -> Path:
    """24 labelled patients + 2 censored before the horizon, small geometry (read-only: copy to modify)."""
    out = tmp_path_factory.mktemp("small_cohort")
    cfg = SyntheticConfig.for_size(24, n_censored_before_horizon=2, geometry="small")
    generate(out, seed=7, config=cfg, workers=1, progress=False)
    return out


@pytest.fixture
def cohort_copy(small_cohort_dir, tmp_path) -> Path:
    """A writable copy of the small cohort; returns the folder (its manifest is manifest.yaml)."""
    dst = tmp_path / "cohort"
    shutil.copytree(small_cohort_dir, dst)
    return dst


def problems_of(manifest, **kwargs) -> list:
    """Every problem that the one door to a cohort (``load_cohort``) finds, errors then warnings ([] for none)."""
    try:
        load_cohort(manifest, strict=True, **kwargs)
    except ManifestError as exc:
        return exc.problems
    return []


def edit_manifest(path: Path, **changes) -> Path:
    doc = yaml.safe_load(path.read_text())
    for k, v in changes.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def pytest_collection_modifyitems(config, items):
    """Test files with the most end-to-end (`slow`) tests run first, each file's tests in their order: with
    `make test`'s one file per worker at a time (pytest-xdist `--dist loadfile --no-loadscope-reorder`),
    the longest file (the smoke run and the tests that read it) starts at once instead of after quicker ones."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])
