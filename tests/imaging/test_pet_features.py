"""PET features on phantoms with known SUVs and volumes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from prrt.imaging import lesions as pf


def phantom(tmp_path, spacing=(2.0, 2.0, 2.0), shape=(60, 60, 60), mask_on_ct=False):
    """Background SUV 1; liver block SUV 5 (label 1); spleen block SUV 10 (label 2); two lesions SUV 20 and 12."""
    x, y, z = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    suv = np.ones(shape, np.float32)
    organs = np.zeros(shape, np.uint8)
    liver = (x < 40) & (y < 40)
    spleen = (x > 80) & (y > 80)
    suv[liver], organs[liver] = 5.0, 1
    suv[spleen], organs[spleen] = 10.0, 2
    l1 = (x - 60) ** 2 + (y - 60) ** 2 + (z - 60) ** 2 <= 10.0**2  # radius 10 mm
    l2 = (x - 20) ** 2 + (y - 90) ** 2 + (z - 30) ** 2 <= 8.0**2
    suv[l1], suv[l2] = 20.0, 12.0
    lesions = (l1 | l2).astype(np.uint8)
    aff = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(suv, aff), tmp_path / "pet.nii.gz")
    nib.save(nib.Nifti1Image(organs, aff), tmp_path / "organs.nii.gz")
    if mask_on_ct:  # the same lesions drawn on a finer CT grid (1 mm), placed by its own affine
        xc, yc, zc = np.meshgrid(*[np.arange(n * 2) * 1.0 for n in shape], indexing="ij")
        m = (((xc - 60) ** 2 + (yc - 60) ** 2 + (zc - 60) ** 2 <= 100) |
             ((xc - 20) ** 2 + (yc - 90) ** 2 + (zc - 30) ** 2 <= 64)).astype(np.uint8)
        nib.save(nib.Nifti1Image(m, np.diag([1.0, 1.0, 1.0, 1.0])), tmp_path / "mask.nii.gz")
    else:
        nib.save(nib.Nifti1Image(lesions, aff), tmp_path / "mask.nii.gz")
    return l1, l2, np.prod(spacing) / 1000


@pytest.mark.parametrize("mask_on_ct", [False, True])
def test_known_suvs_volume_count_and_ratios(tmp_path, mask_on_ct):
    l1, l2, voxel_ml = phantom(tmp_path, mask_on_ct=mask_on_ct)
    f = pf.patient_features(tmp_path / "pet.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "organs.nii.gz")
    n1, n2 = l1.sum(), l2.sum()
    assert f["suv_max"] == pytest.approx(20.0)
    assert f["lesion_count"] == 2
    assert f["mtv_ml"] == pytest.approx((n1 + n2) * voxel_ml, rel=0.05 if mask_on_ct else 1e-9)
    # the voxelised spheres are close to their true volumes (4.19 mL and 2.14 mL)
    assert f["mtv_ml"] == pytest.approx(4 / 3 * np.pi * (1000 + 512) / 1000, rel=0.05)
    if not mask_on_ct:
        assert f["suv_mean"] == pytest.approx((20 * n1 + 12 * n2) / (n1 + n2))
        assert f["tlse"] == pytest.approx(f["suv_mean"] * f["mtv_ml"])
    assert f["suv_peak"] == pytest.approx(20.0)  # a 1 mL sphere (r 6.2 mm) fits inside the 10 mm lesion
    assert f["tumour_to_liver"] == pytest.approx(4.0)
    assert f["tumour_to_spleen"] == pytest.approx(2.0)
    assert f["segmentation"] == "lesion mask"


def test_suv_peak_is_diluted_in_a_small_lesion(tmp_path):
    shape, spacing = (40, 40, 40), (2.0, 2.0, 2.0)
    x, y, z = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    suv = np.ones(shape, np.float32)
    tiny = (x - 40) ** 2 + (y - 40) ** 2 + (z - 40) ** 2 <= 3.0**2  # radius 3 mm << 6.2 mm
    suv[tiny] = 30.0
    out = pf.lesion_features(suv, tiny.astype(np.uint8), spacing)
    assert out["suv_max"] == 30.0
    # The 19 voxels whose centre lies within 3 mm all lie wholly inside the 1 mL sphere (farthest
    # corner 4.4 mm < 6.2 mm), which covers 1000 / 8 = 125 voxels: peak = 1 + 29 x 19 / 125 = 5.408,
    # up to the ~0.2 % by which the sub-sampled sphere's volume differs from 1 mL.
    assert tiny.sum() == 19
    assert out["suv_peak"] == pytest.approx(1 + 29 * 19 / 125, rel=0.005)


def test_threshold_segmentation_without_mask(tmp_path):
    phantom(tmp_path)
    f = pf.patient_features(tmp_path / "pet.nii.gz", None, tmp_path / "organs.nii.gz")
    # threshold 1.5 x 5 + 2 x 0 = 7.5: both lesions, not the spleen (SUV 10, left out as label 2)
    assert f["lesion_count"] == 2 and f["suv_max"] == 20.0
    assert f["segmentation"].startswith("SUV >= 1.5 x liver median")
    g = pf.patient_features(tmp_path / "pet.nii.gz", None, None)
    # without organs: fixed SUV 10, so the spleen block is counted as a lesion and the SUV-12 lesion too
    assert g["lesion_count"] == 3 and "physiological uptake included" in g["segmentation"]
    assert np.isnan(g["tumour_to_liver"])


def test_no_lesion_gives_zero_volume_and_missing_suv():
    suv = np.ones((10, 10, 10), np.float32)
    out = pf.lesion_features(suv, np.zeros_like(suv, dtype=np.uint8), (4.0, 4.0, 4.0))
    assert out["mtv_ml"] == 0 and out["lesion_count"] == 0 and out["tlse"] == 0
    assert np.isnan(out["suv_max"]) and np.isnan(out["suv_peak"])


def test_cohort_features_on_the_synthetic_cohort(small_cohort_dir):
    import pandas as pd
    from scipy import stats

    from prrt.data.load import load_cohort

    c = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    f = pf.cohort_features(c, progress=False)
    assert list(f.index) == list(c.data.index) and set(pf.FEATURES) <= set(f.columns)
    truth = pd.read_csv(small_cohort_dir / "truth.csv").set_index("patient_id")
    truth.index = [c.pseudonym_of_id()[i] for i in truth.index]
    vol = truth.loc[f.index, "tumour_volume_ml"]
    assert stats.spearmanr(vol, f["mtv_ml"]).statistic > 0.8  # MTV follows the generated burden
    # the patients on threads (the default on this machine's cores) give the loop's features
    pd.testing.assert_frame_equal(pf.cohort_features(c, progress=False, threads=1), f)


def test_threshold_is_robust_to_metastases_inside_the_liver_label():
    """A whole-liver label of which a fifth is metastasis (SUV 15 in a liver of SUV 6): mean and SD
    would put the threshold above 15 and miss them; median and MAD keep it near normal liver."""
    from prrt.imaging.lesions import (
        LIVER,
        robust_liver_reference,
        threshold_segmentation,
    )

    rng = np.random.default_rng(0)
    suv = rng.normal(6.0, 0.4, (20, 20, 20)).astype(np.float32)
    organs = np.full(suv.shape, LIVER, np.uint8)
    suv[:4] = 15.0  # 20 % of the liver label
    assert 1.5 * suv.mean() + 2 * suv.std() > 15.0  # the old rule misses every metastasis
    centre, spread = robust_liver_reference(suv[organs == LIVER])
    assert centre == pytest.approx(6.0, abs=0.2) and 0.3 < spread < 1.0
    mask, rule = threshold_segmentation(suv, organs)
    assert mask[:4].all() and not mask[4:].any()
    assert "median" in rule


@pytest.mark.parametrize("spacing", [(5.0, 4.8, 4.8), (4.0, 4.0, 4.0), (3.0, 2.0, 2.0), (2.0, 2.0, 2.0),
                                     (4.0, 3.5, 3.5)])
def test_suv_peak_sphere_holds_one_millilitre_on_any_grid(spacing):
    overlap = pf.sphere_overlap(spacing)
    assert overlap.sum() * np.prod(spacing) / 1000 == pytest.approx(1.0, abs=0.012)
    k = pf.sphere_kernel(spacing)
    assert k.sum() == pytest.approx(1.0) and k.max() == pytest.approx(k[tuple(np.array(k.shape) // 2)])


def test_mask_on_the_ct_grid_keeps_the_lesion_volume_on_the_pet_grid(tmp_path):
    """A 1 cm lesion drawn on the CT grid, at several sub-voxel positions: its MTV on the PET grid is
    the mask's own volume (exact overlap fractions), where nearest neighbour scatters it widely."""
    import SimpleITK as sitk
    from image_phantoms import spheres

    from prrt.imaging import io, resample

    pet_grid = dict(shape=(40, 40, 30), spacing=(4.8, 4.8, 5.0), origin=(-96.0, -96.0, -75.0))
    ct_grid = dict(shape=(100, 100, 60), spacing=(3.0, 3.0, 4.0), origin=(148.5, 148.5, -118.0), flip_xy=True)
    rng = np.random.default_rng(1)
    ours, nearest, own = [], [], []
    for i in range(8):
        c = tuple(rng.uniform(-3, 3, 3))
        pet = spheres(tmp_path / f"pet{i}.nii.gz", [(c, 5.0)], 20.0, 1.0, **pet_grid)
        mask = spheres(tmp_path / f"mask{i}.nii.gz", [(c, 5.0)], 1, 0, dtype=np.uint8, **ct_grid)
        m = io.read_image(mask, "mask")
        own.append((sitk.GetArrayViewFromImage(m) > 0).sum() * 36 / 1000)
        ours.append(pf.patient_features(pet, mask)["mtv_ml"])
        p = io.read_image(pet, "pet")
        nearest.append((resample.resample_to(m, p, "mask") > 0).sum() * np.prod(p.GetSpacing()) / 1000)
    np.testing.assert_allclose(ours, own, rtol=1e-6)
    err = lambda v: np.max(np.abs(np.asarray(v) - own))  # noqa: E731
    assert err(nearest) > 3 * err(ours) + 0.1
    # a mask on the PET grid itself: fractions are exactly 0 and 1, features as with the binary mask
    same = spheres(tmp_path / "same.nii.gz", [((0, 0, 0), 12.0)], 1, 0, dtype=np.uint8, **pet_grid)
    pet = spheres(tmp_path / "pet.nii.gz", [((0, 0, 0), 12.0)], 20.0, 1.0, **pet_grid)
    frac = resample.resample_fraction(io.read_image(same, "mask"), io.read_image(pet, "pet"))
    assert set(np.unique(frac)) == {0.0, 1.0}
