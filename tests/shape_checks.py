"""What a run of a manifest shape must show: every chapter ran or said in a sentence why not, with its book
(tests/e2e/test_shapes.py; tests/data/test_dicom.py runs the shape with patients missing a PET or a CT on the
cohort imported from DICOM)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd


def _outputs(nb) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            text.append(str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def check_shape_run(doc: dict, run_dir: Path, checked, some_without_images: bool = False) -> None:
    """``doc``: the manifest the run read; ``checked``: its :func:`prrt.data.load.load_cohort` result;
    ``some_without_images``: some patients lack the PET or the CT (every fusion must still predict all of them)."""
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
    if some_without_images:
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
