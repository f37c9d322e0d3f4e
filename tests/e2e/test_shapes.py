"""Every chapter runs on every valid manifest shape (smoke scale, book included); a chapter with nothing to do
says so in a sentence. The shape with neither labs nor images is in test_run_checks.py."""

from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest
import yaml

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
    # as a hospital's data come: a fifth of the patients without a PET, two others without a CT
    "labs, PET and CT, some patients without PET or CT": {
        "endpoint": {"time": "pfs_months", "event": "progressed", "horizon_months": 12},
        "images": {"ct": "ct_path", "pet": "pet_path", "mask": "lesion_mask_path", "organs": "organ_mask_path"},
        "clinical": ["age"], "labs": ["chromogranin_a", "ggt", "alkaline_phosphatase", "albumin", "ldh"],
        "blank": {"pet_path": [0, 5, 10, 15, 20], "ct_path": [2, 7]}},
    "labs and CT, PFS": dict(endpoint={"time": "pfs_months", "event": "progressed", "horizon_months": 12},
                             images={"ct": "ct_path", "mask": "lesion_mask_path"}, clinical=["age", "grade"],
                             labs=["chromogranin_a", "ggt", "alkaline_phosphatase", "albumin", "ldh"]),
}


def _outputs(nb) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            text.append(str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


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
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    for page in ("01_cohort", "02_lab_random_forest", "03_unimodal_cnn", "04_fusion", "05_explainability"):
        assert (run_dir / "book" / "notebooks" / f"{page}.html").is_file(), page
    text = {p.stem: _outputs(nbformat.read(p, as_version=4)) for p in (run_dir / "notebooks").glob("*.ipynb")}
    summary = pd.read_csv(run_dir / "results" / "summary.csv").set_index("model")["status"]
    assert summary.map(lambda s: s == "ran" or s.startswith("skipped: ")).all(), summary
    images, labs = "images" in doc, bool(doc["labs"])
    assert (summary["lab_rf"] == "ran") == labs
    for modality in ("pet", "ct"):
        assert (summary[f"{modality}_cnn"] == "ran") == (modality in doc.get("images", {})), modality
    if not labs:
        assert summary["lab_rf"] == "skipped: the manifest lists no laboratory values"
        assert "The manifest lists no laboratory values." in text["02_lab_random_forest"]
    if not images:
        assert summary["pet_cnn"] == "skipped: the manifest names no PET images"
        assert "No image CNN ran in this run" in text["05_explainability"]
    if not doc["labs"] and not doc["clinical"]:
        assert "The manifest lists no clinical or laboratory variables, so there is no Table 1." in text["01_cohort"]
    if shape == "labs, PET and CT, some patients without PET or CT":
        labelled = set(pd.read_csv(run_dir / "splits.csv", dtype={"patient": str})["patient"])
        ran = summary[summary == "ran"].index
        fusions = [m for m in ran if "fusion" in m or m.startswith("lab_pet_ct_")]
        assert "lab_pet_ct_fusion" in fusions and "lab_petfeatures_net" in ran
        for model in fusions:  # every fusion predicts every labelled patient in every repeat
            pred = pd.read_csv(run_dir / "predictions" / f"{model}.csv", dtype={"patient": str})
            per_repeat = pred[pred["fold"] >= 0].groupby("repeat")["patient"].apply(set)
            assert (per_repeat == labelled).all(), model
        # the single-image models scored the labelled patients with their image, and the summary says on how many
        counts = pd.read_csv(run_dir / "results" / "summary.csv").set_index("model")["n_patients"]
        has_label = checked.data["label"].notna()
        assert counts["lab_pet_ct_fusion"] == has_label.sum() == len(labelled)
        for modality in ("pet", "ct"):
            assert counts[f"{modality}_cnn"] == (has_label & checked.data[f"{modality}_path"].notna()).sum(), modality
        assert counts["pet_cnn"] < counts["lab_pet_ct_fusion"] and counts["ct_cnn"] < counts["lab_pet_ct_fusion"]
    if "label" in doc["endpoint"]:
        assert "wherever this book says \"short PFS\" it means response = 1" in text["01_cohort"]
        assert "no survival curve" in text["01_cohort"]
        t1 = pd.read_csv(run_dir / "cohort" / "table1.csv") if doc["clinical"] else None
        assert t1 is None or any(c.startswith("Response = 1") for c in t1.columns)
