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


def test_dark_liver_voxels_counts_cold_spots_in_the_liver_outside_the_mask():
    image = np.full((12, 12, 12), 0.2, np.float32)  # the body around the liver is darker than half the liver
    organs = np.zeros(image.shape, np.uint8)
    organs[2:10, 2:10, 2:10] = 1
    image[2:10, 2:10, 2:10] = 0.6
    mask = np.zeros(image.shape, bool)
    # a cold lesion left out of the liver label (a hole) and a cold voxel inside the label count
    organs[4:6, 4:6, 4:6] = 0
    image[4:6, 4:6, 4:6] = 0.1
    image[8, 8, 8] = 0.25
    # a cold lesion at the liver's edge leaves a notch in the label: closing puts back its deeper half
    organs[2:6, 6:8, 6:8] = 0
    image[2:6, 6:8, 6:8] = 0.1
    # a cold spot of the lesion mask does not, nor a bright one, nor anything outside the liver
    mask[3, 3, 3] = True
    image[3, 3, 3] = 0.05
    image[7, 7, 7] = 0.35  # above half the median (0.3)
    assert inputs.dark_liver_voxels(image, organs, mask) == 8 + 1 + 8
    region = inputs.liver_region(organs == 1)
    assert region[4:6, 6:8, 6:8].all() and not region[2:4, 6:8, 6:8].any()
    assert region[3:9, 3:9, 3:9].sum() == region.sum() == 6**3 - 4  # the rim of one voxel is left out
    # without the closing, holes are still filled but the notch stays out
    plain = inputs.liver_region(organs == 1, close_voxels=0)
    assert plain[4:6, 4:6, 4:6].all() and not plain[3:6, 6:8, 6:8].any() and plain.sum() < region.sum()
    arrays = {"P0": {"ct": image, "mask": mask.astype(np.uint8), "organs": organs}, "P1": {"ct": image}}
    stats = inputs.input_statistics(arrays, "ct")
    assert stats.loc["P0", "dark liver voxels"] == 17 and np.isnan(stats.loc["P1", "dark liver voxels"])
    assert np.isnan(inputs.dark_liver_voxels(image, np.zeros_like(organs), mask))  # no liver in the input


def test_the_mask_channel_shows_the_lesions_and_the_liver():
    organs = np.zeros((10, 10, 10), np.uint8)
    organs[2:8, 2:8, 2:8] = 1
    mask = np.zeros(organs.shape, np.uint8)
    mask[4:6, 4:6, 4:6] = 1
    organs[mask > 0] = 0  # an organ map leaves the lesion out of the liver
    pet = np.zeros(organs.shape, np.float32)
    ch = inputs.mask_channel_array({"pet": pet, "mask": mask, "organs": organs}, pet)
    assert ch.dtype == np.float32 and set(np.unique(ch)) == {0.0, inputs.LIVER_IN_MASK_CHANNEL, 1.0}
    np.testing.assert_array_equal(ch == 1, mask > 0)
    np.testing.assert_array_equal(ch == 0.5, inputs.liver_region(organs == 1) & (mask == 0))
    # without the liver, without an organ map, or without a mask
    np.testing.assert_array_equal(inputs.mask_channel_array({"mask": mask, "organs": organs}, pet, liver=False), mask)
    np.testing.assert_array_equal(inputs.mask_channel_array({"mask": mask}, pet), mask)
    liver_only = inputs.mask_channel_array({"organs": organs}, pet)
    np.testing.assert_array_equal(liver_only == 0.5, inputs.liver_region(organs == 1))
    assert not inputs.mask_channel_array({}, pet).any()
    # the lesions are read back from the channel, the liver is not a lesion
    np.testing.assert_array_equal(inputs.lesions_in_mask_channel(ch), mask > 0)
    assert inputs.liver_label(None) is None and inputs.liver_label(np.zeros_like(organs)) is None


def test_the_patients_are_preprocessed_on_threads_as_on_one_and_the_first_that_fails_is_named(small_cohort_dir,
                                                                                              tmp_path):
    import shutil

    from prrt.imaging.io import ImageError
    from prrt.imaging.preprocess import ImageCache, preprocess_cohort

    cohort = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    smoke, patients = get_profile("smoke"), list(cohort.data.index[:8])
    one = preprocess_cohort(cohort, smoke, tmp_path / "one", patients, progress=False, threads=1)
    cache = ImageCache(tmp_path / "two")
    two = preprocess_cohort(cohort, smoke, cache, patients[::-1], progress=False, threads=2)
    assert list(two) == patients[::-1] and (cache.hits, cache.misses) == (0, 8)
    for p in patients:
        assert set(one[p]) == set(two[p])
        for k in one[p]:
            np.testing.assert_array_equal(one[p][k], two[p][k])
    again = ImageCache(tmp_path / "two")
    preprocess_cohort(cohort, smoke, again, patients, progress=False, threads=2)
    assert (again.hits, again.misses) == (8, 0)
    # a damaged image: the error names its patient and file
    copy = tmp_path / "cohort"
    shutil.copytree(small_cohort_dir, copy)
    broken = load_cohort(copy / "manifest.yaml", check_images="none")
    pid = patients[3]
    broken.image_path(pid, "pet").write_bytes(b"not an image")
    with pytest.raises(ImageError, match=rf"{pid}.*pet"):
        preprocess_cohort(broken, smoke, tmp_path / "three", patients, progress=False, threads=2)
