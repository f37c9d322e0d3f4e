"""Lesion-centred inputs: the box rule, its fallbacks, and the crop's robustness cases.

Phantoms: a CT (water cylinder in air, 100 × 100 × 60 voxels of 3 × 3 × 4 mm, x/y flipped) and a
PET with hot spheres on another grid (other spacing, origin and orientation). World positions are
RAS millimetres in the NIfTI files; the preprocessed grid follows ITK's LPS axes (x and y negated).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from image_phantoms import LESIONS, PET_GRID, patient, spheres

from prrt.imaging import preprocess as imaging
from prrt.imaging.boxes import fit_box, input_box
from prrt.imaging.io import ImageError
from prrt.imaging.preprocess import ImageCache, preprocess
from prrt.imaging.settings import PreprocessSettings


def lps(ras):
    return np.asarray(ras, float) * [-1, -1, 1]


def world_of(box: dict, ijk):
    """LPS position of voxel ``ijk`` of a preprocessed grid, from its stored box record."""
    centre = np.array([box[f"centre_{a}_mm"] for a in "xyz"])
    spacing = np.array([box[f"spacing_{a}_mm"] for a in "xyz"])
    return centre + (np.asarray(ijk) - (np.asarray(LESIONS.input_size_voxels) - 1) / 2) * spacing


def touches_border(mask):
    return bool(mask[[0, -1]].any() or mask[:, [0, -1]].any() or mask[:, :, [0, -1]].any())


# ---- the box rule -----------------------------------------------------------------------------------
def test_lesion_box_from_the_mask(tmp_path):
    paths = patient(tmp_path, [((30, -20, 10), 15)])
    box, _ = input_box(paths, LESIONS)
    assert box.source == "lesion mask" and box.roi == "lesions"
    lo, hi = np.asarray(box.lesion_lo_mm), np.asarray(box.lesion_hi_mm)
    # the voxel-edge bounds of a 30 mm sphere drawn on a 5-6 mm grid: within a voxel of the sphere
    np.testing.assert_allclose((lo + hi) / 2, lps((30, -20, 10)), atol=3.5)
    assert np.all(np.abs((hi - lo) - 30) <= 6.0)
    assert box.spacing_mm[0] == box.spacing_mm[1] == box.spacing_mm[2]
    assert box.spacing_mm == (LESIONS.roi_spacing_mm,) * 3


def test_pet_ct_and_mask_line_up_inside_the_lesion_box(tmp_path):
    paths = patient(tmp_path, [((30, -20, 10), 15)])
    out = preprocess(paths, LESIONS)
    assert out["pet"].shape == out["ct"].shape == out["mask"].shape == (32, 32, 32)
    hot = np.argwhere(out["suv"] > 10).mean(axis=0)
    np.testing.assert_allclose(np.argwhere(out["mask"]).mean(axis=0), hot, atol=0.6)
    # the box is centred on the lesion and the world position is right
    np.testing.assert_allclose(hot, (np.asarray(LESIONS.input_size_voxels) - 1) / 2, atol=0.8)
    np.testing.assert_allclose(world_of(imaging.box_of(out), hot), lps((30, -20, 10)), atol=3)
    # the CT phantom's 300 HU sphere sits at the same world place: it lines up with the PET lesion
    np.testing.assert_allclose(np.argwhere(out["ct"] > 0.99).mean(axis=0), hot, atol=0.8)


# ---- robustness cases ---------------------------------------------------------------------------------
def test_lesion_at_the_edge_of_the_field_of_view_is_kept_whole_and_the_outside_is_padded(tmp_path):
    # the PET field of view ends at x = 160 mm (RAS); a lesion touches that edge
    paths = patient(tmp_path, [((150, 0, 0), 12)])
    out = preprocess(paths, LESIONS)
    box = imaging.box_of(out)
    assert box["source"] == "lesion mask"
    assert out["mask"].sum() > 0 and not touches_border(out["mask"] > 0)
    # voxels beyond the CT (x > 150 mm RAS) and beyond the PET are padding: air on CT, 0 on PET
    beyond = [i for i in range(32) if -world_of(box, (i, 16, 16))[0] > 175]
    assert beyond, "the box should reach past both scans"
    assert np.all(out["ct"][beyond] == 0.0) and np.all(out["suv"][beyond] == 0.0)


def test_lesion_far_from_the_body_centre_is_centred(tmp_path):
    # a "limb" lesion 130 mm right of the body centre and low in z, beside the CT's cylinder
    paths = patient(tmp_path, [((130, 40, -80), 10)])
    out = preprocess(paths, LESIONS)
    c = np.argwhere(out["mask"]).mean(axis=0)
    np.testing.assert_allclose(c, (np.asarray(LESIONS.input_size_voxels) - 1) / 2, atol=1.0)
    body = imaging.preprocess(paths, PreprocessSettings((32, 32, 32), (384.0, 384.0, 320.0), (-160.0, 240.0),
                                                        (0.0, 30.0)))
    assert np.linalg.norm(np.argwhere(body["mask"]).mean(axis=0) - 15.5) > 8  # far off-centre on the body grid


def test_mask_on_the_ct_grid_gives_the_same_box_as_on_the_pet_grid(tmp_path):
    a = input_box(patient(tmp_path / "a", [((30, -20, 10), 15)], mask_grid="pet"), LESIONS)[0]
    b = input_box(patient(tmp_path / "b", [((30, -20, 10), 15)], mask_grid="ct"), LESIONS)[0]
    np.testing.assert_allclose(a.centre_mm, b.centre_mm, atol=3.5)  # within a voxel of the coarser grid
    out = preprocess(patient(tmp_path / "c", [((30, -20, 10), 15)], mask_grid="ct"), LESIONS)
    np.testing.assert_allclose(np.argwhere(out["mask"]).mean(axis=0), np.argwhere(out["suv"] > 10).mean(axis=0),
                               atol=0.8)


def test_single_tiny_lesion_gets_the_one_spacing_and_stays_visible(tmp_path):
    paths = patient(tmp_path, [((30, -20, 10), 6)])  # a few voxels of 5-6 mm
    n_voxels = int((nib.load(paths["mask"]).get_fdata() > 0).sum())
    assert 1 <= n_voxels <= 12
    out = preprocess(paths, LESIONS)
    box = imaging.box_of(out)
    assert box["spacing_x_mm"] == LESIONS.roi_spacing_mm
    assert out["mask"].sum() >= n_voxels  # finer voxels: the lesion is not lost
    peak = np.unravel_index(np.argmax(out["suv"]), out["suv"].shape)
    assert out["mask"][peak] == 1


def test_burden_larger_than_the_input_keeps_the_spacing_and_is_cut_saying_how_far(tmp_path):
    # two lesions 90 mm apart (114 mm with their radii): more than 32 voxels x 3 mm
    lesions = [((-45, 0, -30), 12), ((45, 20, 30), 12)]
    out = preprocess(patient(tmp_path, lesions), LESIONS)
    box = imaging.box_of(out)
    assert box["spacing_x_mm"] == box["spacing_z_mm"] == LESIONS.roi_spacing_mm  # never squeezed onto coarser voxels
    assert box["extent_x_mm"] == pytest.approx(32 * LESIONS.roi_spacing_mm)
    # the lesions' voxel-edge bounds reach beyond the 96 mm grid on both sides in x: the grid cuts them
    assert box["note"].startswith("lesions reach beyond the input by x ")
    assert touches_border(out["mask"] > 0)


def test_fit_box_centres_the_grid_and_notes_only_what_does_not_fit():
    centre, note = fit_box((-10, 0, 0), (30, 20, 10), (32, 32, 32), 3.0)
    np.testing.assert_allclose(centre, (10, 10, 5))
    assert note == ""
    _, note = fit_box((0, 0, 0), (100, 96, 96), (32, 32, 32), 3.0)
    assert note == "lesions reach beyond the input by x 2 mm each side"


def test_a_liver_box_is_centred_on_the_liver_with_the_one_spacing_and_falls_back_to_the_lesions(tmp_path):
    paths = patient(tmp_path, [((30, -20, 10), 15)])
    # an organ map on the PET grid: the liver (label 1) a sphere of 50 mm at world (-40, 30, -20) mm (RAS)
    paths["organs"] = spheres(tmp_path / "organs.nii.gz", [((-40, 30, -20), 50)], 1, 0, dtype=np.uint8, **PET_GRID)
    liver = PreprocessSettings(**{**LESIONS.__dict__, "roi": "liver", "roi_spacing_mm": 5.0})
    box, seg = input_box(paths, liver)
    assert box.source == "liver label" and box.spacing_mm == (5.0, 5.0, 5.0)
    np.testing.assert_allclose(box.centre_mm, lps((-40, 30, -20)), atol=3)
    assert seg is not None  # the lesion mask is still the mask channel
    out = preprocess(paths, liver)
    assert out["mask"].sum() > 0 and imaging.box_of(out)["source"] == "liver label"
    # no liver label: centred on the lesions, with the same spacing, and the note says why
    no_organs = {k: v for k, v in paths.items() if k != "organs"}
    box2, _ = input_box(no_organs, liver)
    assert box2.source == "lesion mask" and "no organ map" in box2.note and box2.spacing_mm == (5.0, 5.0, 5.0)
    np.testing.assert_allclose(box2.centre_mm, lps((30, -20, 10)), atol=3.5)
    empty = spheres(tmp_path / "no_liver.nii.gz", [((-40, 30, -20), 50)], 2, 0, dtype=np.uint8, **PET_GRID)
    box3, _ = input_box({**paths, "organs": empty}, liver)
    assert box3.source == "lesion mask" and "no liver in the organ map" in box3.note


def test_empty_mask_falls_back_to_the_pet_threshold_then_to_the_body(tmp_path):
    paths = patient(tmp_path, [((30, -20, 10), 15)], mask_lesions=[])
    box, seg = input_box(paths, LESIONS)
    assert box.source == "PET threshold" and "empty" in box.note and "SUV >= 10" in box.note
    np.testing.assert_allclose((np.asarray(box.lesion_lo_mm) + box.lesion_hi_mm) / 2, lps((30, -20, 10)), atol=3.5)
    out = preprocess(paths, LESIONS)
    assert out["mask"].sum() > 0  # the threshold segmentation is the mask channel
    # no mask at all: the same fallback, and the note says why
    box2, _ = input_box({"ct": paths["ct"], "pet": paths["pet"]}, LESIONS)
    assert box2.source == "PET threshold" and "no lesion mask" in box2.note
    # no PET: a box around the body, with the one spacing, centred on the body
    box3, _ = input_box({"ct": paths["ct"], "mask": paths["mask"]}, LESIONS)
    assert box3.source == "body (no lesion found)"
    assert box3.spacing_mm == (LESIONS.roi_spacing_mm,) * 3
    np.testing.assert_allclose(box3.centre_mm, (0, 0, 0), atol=3)
    # a PET without anything above the threshold: the body as well
    cold = spheres(tmp_path / "cold.nii.gz", [((30, -20, 10), 15)], 4.0, 1.0, **PET_GRID)
    box4, seg4 = input_box({"ct": paths["ct"], "pet": cold}, LESIONS)
    assert box4.source == "body (no lesion found)" and seg4 is None and "no voxel above" in box4.note


def test_mask_that_does_not_overlap_the_pet_is_an_error_naming_patient_and_file(tmp_path):
    paths = patient(tmp_path, [((30, -20, 10), 15)], mask_grid="pet")
    # the same mask shifted 1 m away (an affine that lost its origin, or another patient's mask)
    img = nib.load(paths["mask"])
    moved = img.affine.copy()
    moved[:3, 3] += (0, 0, 1000)
    bad = tmp_path / "moved_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), moved), bad)
    with pytest.raises(ImageError, match=r"patient 'P012', image \"mask\" \(.*moved_mask.nii.gz\): the lesion mask "
                                         r"does not overlap the (PET|CT)"):
        input_box({**paths, "mask": bad}, LESIONS, patient="P012")
    with pytest.raises(ImageError, match="P012"):
        ImageCache(tmp_path / "cache").get({**paths, "mask": bad}, LESIONS, patient="P012")


# ---- cache and records ----------------------------------------------------------------------------------
def test_the_box_is_stored_and_part_of_the_cache_key(tmp_path):
    paths = patient(tmp_path, [((30, -20, 10), 15)])
    cache = ImageCache(tmp_path / "cache")
    a = cache.get(paths, LESIONS)
    assert imaging.box_of(a)["source"] == "lesion mask"
    cache.get(paths, LESIONS)
    assert (cache.misses, cache.hits) == (1, 1)
    box = input_box(paths, LESIONS)[0]
    assert cache.key(paths, LESIONS, box) != cache.key(paths, LESIONS, None)
    # another spacing changes the box, hence the key and the arrays
    wider = PreprocessSettings(**{**LESIONS.__dict__, "roi_spacing_mm": 6.0})
    b = cache.get(paths, wider)
    assert cache.misses == 2 and imaging.box_of(b)["extent_x_mm"] > imaging.box_of(a)["extent_x_mm"]
    # the body grid ignores the region's spacing
    body = PreprocessSettings(**{**LESIONS.__dict__, "roi": "body"})
    body2 = PreprocessSettings(**{**LESIONS.__dict__, "roi": "body", "roi_spacing_mm": 6.0})
    assert cache.key(paths, body) == cache.key(paths, body2)


def test_a_lookup_reads_the_stored_box_instead_of_the_masks_and_other_box_code_draws_it_again(tmp_path, monkeypatch):
    paths = patient(tmp_path, [((30, -20, 10), 15)])
    first = ImageCache(tmp_path / "cache").get(paths, LESIONS)
    drawn = []
    monkeypatch.setattr(imaging, "input_box", lambda *a, **k: drawn.append(a) or input_box(*a, **k))
    again = ImageCache(tmp_path / "cache")
    second = again.get(paths, LESIONS)
    assert drawn == [] and (again.hits, again.misses) == (1, 0)
    assert imaging.box_of(second) == imaging.box_of(first)
    np.testing.assert_array_equal(second["pet"], first["pet"])
    # the box code changed: the box is drawn again (the same box here, so the arrays are found)
    monkeypatch.setattr(imaging, "BOX_RULE", "another rule")
    third = ImageCache(tmp_path / "cache")
    third.get(paths, LESIONS)
    assert len(drawn) == 1 and (third.hits, third.misses) == (1, 0)
    # a changed mask: another box, drawn and preprocessed anew
    img = nib.load(paths["mask"])
    nib.save(nib.Nifti1Image(np.roll(np.asarray(img.dataobj), 6, axis=0), img.affine), paths["mask"])
    moved = third.get(paths, LESIONS)
    assert len(drawn) == 2 and third.misses == 1  # drawn once: the lookup's box is the one preprocessed
    assert imaging.box_of(moved) != imaging.box_of(first)


def test_unknown_roi_is_a_clear_error(tmp_path):
    paths = patient(tmp_path, [((30, -20, 10), 15)])
    with pytest.raises(ValueError, match="unknown roi 'tumour'"):
        input_box(paths, PreprocessSettings(**{**LESIONS.__dict__, "roi": "tumour"}))


def test_the_preprocessing_chain_runs_through_torchio(tmp_path, monkeypatch):
    import torchio as tio

    calls = []
    for name in ("ToCanonical", "Resample", "Clamp", "RescaleIntensity"):
        cls = getattr(tio, name)
        monkeypatch.setattr(tio, name, type(name, (cls,), {"apply_transform": (
            lambda self, subject, _cls=cls, _name=name: calls.append(_name) or _cls.apply_transform(self, subject))}))
    out = preprocess(patient(tmp_path, [((30, -20, 10), 15)]), LESIONS)
    assert {"ToCanonical", "Resample", "Clamp", "RescaleIntensity"} <= set(calls)
    assert out["mask"].sum() > 0
