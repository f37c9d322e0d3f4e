"""The input-signal table and the inputs of both regions of interest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prrt.data.load import load_cohort
from prrt.imaging import inputs
from prrt.profiles import get_profile


def fake_arrays(n=20, seed=0):
    """Short-PFS patients (first half) have more lesion voxels and *dimmer* lesions."""
    rng = np.random.default_rng(seed)
    arrays, labels = {}, {}
    for i in range(n):
        short = i < n // 2
        pet = rng.random((8, 8, 8)).astype(np.float32) * 0.1
        mask = np.zeros((8, 8, 8), np.uint8)
        k = 3 + (2 if short else 0) + int(rng.integers(0, 2))
        mask[:k, :2, :2] = 1
        pet[mask > 0] = 0.5 if short else 0.8
        arrays[f"P{i:03d}"] = {"pet": pet, "mask": mask}
        labels[f"P{i:03d}"] = float(short)
    return arrays, pd.Series(labels)


def test_input_statistics_and_their_auroc():
    arrays, y = fake_arrays()
    stats = inputs.input_statistics(arrays, "pet")
    assert list(stats.columns) == list(inputs.STATISTICS) and len(stats) == 20
    assert stats.loc["P000", "lesion voxels"] == arrays["P000"]["mask"].sum()
    assert stats.loc["P000", "mean value in the lesions"] == pytest.approx(0.5)
    table = inputs.input_signal_table({("pet", "lesions"): stats}, y).set_index("statistic")
    assert table.loc["lesion voxels", "auroc"] == pytest.approx(1.0)
    assert table.loc["lesion voxels", "direction"] == "higher → short PFS"
    # dimmer lesions in short PFS: AUROC 0, read the other way 1
    assert table.loc["mean value in the lesions", "auroc"] == pytest.approx(0.0)
    assert table.loc["mean value in the lesions", "direction"] == "lower → short PFS"
    assert table.loc["mean value in the lesions", "auroc_either_direction"] == pytest.approx(1.0)
    shown = inputs.format_signal_table(table.reset_index())
    assert shown.loc[("pet", "mean value in the lesions"), "AUROC, lesions input"] == "1.00\u00a0(↓)"


def test_unlabelled_patients_and_missing_masks_are_left_out():
    arrays, y = fake_arrays()
    y.iloc[0] = np.nan
    for p in ("P001", "P002"):
        arrays[p]["mask"][:] = 0
    stats = inputs.input_statistics(arrays, "pet")
    assert np.isnan(stats.loc["P001", "mean value in the lesions"]) and stats.loc["P001", "lesion voxels"] == 0
    row = inputs.signal_auroc(stats["mean value in the lesions"], y)
    assert row["n_patients"] == 17
    # a modality that no patient has gives no rows; a constant statistic gives no AUROC
    assert inputs.input_statistics(arrays, "ct").empty
    assert np.isnan(inputs.signal_auroc(pd.Series(1.0, index=y.index), y)["auroc"])


def test_prepare_inputs_writes_the_boxes_of_both_regions(small_cohort_dir, tmp_path):
    cohort = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    smoke = get_profile("smoke")
    got = inputs.prepare_inputs(cohort, smoke, tmp_path / "cache", tmp_path / "run", progress=False)
    assert list(got) == ["liver", "lesions"]
    boxes = pd.read_csv(tmp_path / "run" / "inputs" / "boxes_lesions.csv", index_col="patient")
    assert list(boxes.index) == list(cohort.data.index)  # pseudonyms only
    assert set(boxes["source"]) <= {"lesion mask", "PET threshold", "body (no lesion found)"}
    liver = pd.read_csv(tmp_path / "run" / "inputs" / "boxes_liver.csv", index_col="patient")
    assert (liver["source"] == "liver label").all()  # every synthetic patient has an organ map with a liver
    for b in (boxes, liver):  # one spacing for every patient
        assert (b[["spacing_x_mm", "spacing_y_mm", "spacing_z_mm"]] == smoke.roi_spacing_mm).all().all()
    summary = inputs.box_summary(boxes)
    assert summary["patients"].sum() == len(cohort.data)
    table = inputs.signal_table_for(got, cohort)
    assert set(table["input"]) == {"liver", "lesions"} and set(table["modality"]) == {"pet", "ct"}


def test_a_manifest_without_images_has_no_inputs(small_cohort_dir, tmp_path):
    import shutil

    import yaml

    dst = tmp_path / "c"
    shutil.copytree(small_cohort_dir, dst)
    doc = yaml.safe_load((dst / "manifest.yaml").read_text())
    doc.pop("images")
    (dst / "manifest.yaml").write_text(yaml.safe_dump(doc))
    cohort = load_cohort(dst / "manifest.yaml", check_images="none")
    assert inputs.prepare_inputs(cohort, get_profile("smoke"), tmp_path / "cache", progress=False) == {}
