"""Every chapter runs on every valid manifest shape (smoke scale, book included); a chapter with nothing to do
says so in a sentence. The shape with neither labs nor images is in test_run_checks.py; the shape of a hospital's
data, some patients without a PET or a CT, runs on the cohort imported from DICOM (tests/data/test_dicom.py)."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from shape_checks import check_shape_run

from prrt.cli import main
from prrt.data.load import load_cohort

SHAPES = {
    # a PET/CT collection with a generic binary endpoint: no labs, no clinical variables
    "images only, generic label": dict(endpoint={"label": "response"},
                                       images={"ct": "ct_path", "pet": "pet_path", "mask": "lesion_mask_path"},
                                       labs=[], clinical=[]),
    "labs only, generic label": dict(endpoint={"label": "response"}, clinical=["age", "sex"],
                                     labs=["chromogranin_a", "ggt", "alkaline_phosphatase", "albumin", "ldh"]),
    # what `prrt validate` only warns about must not stop the run: a patient without a mask, one without organs
    "labs and PET, a mask and an organ map missing": dict(
        endpoint={"time": "pfs_months", "event": "progressed", "horizon_months": 12},
        images={"pet": "pet_path", "mask": "lesion_mask_path", "organs": "organ_mask_path"}, clinical=["age"],
        labs=["chromogranin_a", "ggt"], blank={"lesion_mask_path": 5, "organ_mask_path": 6}),
    "labs and CT, PFS": dict(endpoint={"time": "pfs_months", "event": "progressed", "horizon_months": 12},
                             images={"ct": "ct_path", "mask": "lesion_mask_path"}, clinical=["age", "grade"],
                             labs=["chromogranin_a", "ggt", "alkaline_phosphatase", "albumin", "ldh"]),
}


@pytest.fixture(scope="module")
def shape_table(small_cohort_dir, tmp_path_factory):
    """The small cohort's table with a generic 0/1 column ``response`` (images stay where they are)."""
    d = tmp_path_factory.mktemp("shapes")
    df = pd.read_csv(small_cohort_dir / "cohort.csv", dtype=str, keep_default_na=False)
    t, e = df["pfs_months"].astype(float), df["progressed"].astype(float)
    df["response"] = ((e == 1) & (t <= 12)).astype(int).astype(str)
    df.to_csv(d / "cohort.csv", index=False)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_chapter_runs_on_the_manifest_shape(shape, shape_table, small_cohort_dir, tmp_path):
    manifest = tmp_path / "manifest.yaml"
    shape_doc = dict(SHAPES[shape])
    table = shape_table / "cohort.csv"
    if "blank" in shape_doc:
        df = pd.read_csv(table, dtype=str, keep_default_na=False)
        for col, rows in shape_doc.pop("blank").items():
            df.loc[rows, col] = ""
        table = tmp_path / "cohort.csv"
        df.to_csv(table, index=False)
    doc = {"name": "shape", "synthetic": True, "table": str(table), "image_root": str(small_cohort_dir),
           "id": "patient_id", **shape_doc}
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    run_dir = tmp_path / "run"
    checked = load_cohort(manifest, check_images="full", profile="smoke")
    assert len(checked.warnings) == len(SHAPES[shape].get("blank", {})), checked.warnings
    assert main(["run", "--manifest", str(manifest), "--profile", "smoke", "--run-dir", str(run_dir), "--seed", "3",
                 "--cache-dir", str(shape_table / "cache")]) == 0
    check_shape_run(doc, run_dir, checked)
