"""Shared fixtures: a small synthetic cohort (made once per test session) and helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from prrt.synthetic import SyntheticConfig, generate

DATA = Path(__file__).parent / "data"
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


def edit_manifest(path: Path, **changes) -> Path:
    doc = yaml.safe_load(path.read_text())
    for k, v in changes.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
