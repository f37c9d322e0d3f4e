"""Imaging: readers, geometry (PET onto CT by affine, masks on either grid), scaling, cache, errors."""

from __future__ import annotations

import shutil
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REAL_CT
from image_phantoms import body_ct

from prrt.imaging import boxes, io, resample
from prrt.imaging.io import ImageError
from prrt.imaging.preprocess import ImageCache, preprocess
from prrt.imaging.settings import PreprocessSettings
from prrt.profiles import get_profile

SETTINGS = PreprocessSettings((32, 32, 24), (320.0, 320.0, 240.0), (-160.0, 240.0), (0.0, 30.0))


def sphere_image(path, shape, spacing, origin, centre_mm, radius_mm, inside, outside, flip_xy=False, dtype=np.float32):
    """A NIfTI (RAS affine) with a sphere at a world position; optionally stored with x and y flipped."""
    sign = np.array([-1.0, -1.0, 1.0]) if flip_xy else np.ones(3)
    aff = np.diag(np.r_[sign * np.asarray(spacing), 1.0])
    aff[:3, 3] = origin
    idx = np.indices(shape).reshape(3, -1).T
    world = idx @ aff[:3, :3].T + aff[:3, 3]
    d = np.linalg.norm(world - np.asarray(centre_mm), axis=1).reshape(shape)
    arr = np.where(d <= radius_mm, inside, outside).astype(dtype)
    nib.save(nib.Nifti1Image(arr, aff), path)
    return path


def world_of_voxel(settings, centre_mm, ijk):
    """World (ITK LPS) position of a voxel of the target grid."""
    spacing = np.asarray(settings.field_of_view_mm) / np.asarray(settings.input_size_voxels)
    origin = np.asarray(centre_mm) - (np.asarray(settings.input_size_voxels) - 1) / 2 * spacing
    return origin + np.asarray(ijk) * spacing


def centroid(arr):
    return np.argwhere(arr > 0.5 * arr.max()).mean(axis=0)


# ---- reading ------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_readers_agree_across_formats(tmp_path, suffix):
    ct = body_ct(tmp_path / "ct.nii.gz")
    ref = sitk.ReadImage(str(ct))
    other = tmp_path / f"ct{suffix}"
    sitk.WriteImage(ref, str(other), useCompression=True)
    a = preprocess({"ct": ct}, SETTINGS)
    b = preprocess({"ct": other}, SETTINGS)
    np.testing.assert_array_equal(a["ct"], b["ct"])
    h = io.read_header(other, "ct")
    assert h["size"] == (100, 100, 60) and np.allclose(h["spacing_mm"], (3, 3, 4))


def test_real_ct_reads_with_its_geometry_and_preprocesses():
    h = io.read_header(REAL_CT, "ct")
    assert h["size"] == (122, 101, 112)
    assert np.allclose(h["spacing_mm"], (3.0, 3.0, 3.0), atol=0.05)
    img = io.read_image(REAL_CT, "ct")
    arr = sitk.GetArrayViewFromImage(img)
    assert -1300 < arr.min() < -900 and arr.max() > 1000  # air and bone in HU
    out = preprocess({"ct": REAL_CT}, SETTINGS)
    assert out["ct"].shape == SETTINGS.input_size_voxels and out["ct"].dtype == np.float32
    assert 0.0 <= out["ct"].min() and out["ct"].max() <= 1.0
    # the body (above -500 HU) is centred: its centroid lies near the middle of the target grid
    body = out["ct"] > (-500 + 160) / 400
    c = np.argwhere(body).mean(axis=0)
    assert np.all(np.abs(c - (np.asarray(SETTINGS.input_size_voxels) - 1) / 2) < 3)
    # orientation: ITK LPS target grid; the real CT's header says which way is anterior.  The
    # spine (bone, > 300 HU) must lie posterior (larger y in LPS) of the body centroid.
    full = resample.resample_to(img, boxes.target_grid(boxes.body_centre_mm(img), (64, 64, 56), (320, 320, 280)), "ct")
    bone = np.argwhere(full > 300).mean(axis=0)
    body_c = np.argwhere(full > -500).mean(axis=0)
    assert bone[1] > body_c[1]


def test_real_ct_nrrd_copy_gives_the_same_tensor(tmp_path):
    nrrd = tmp_path / "real.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(REAL_CT)), str(nrrd), useCompression=True)
    np.testing.assert_array_equal(preprocess({"ct": REAL_CT}, SETTINGS)["ct"], preprocess({"ct": nrrd}, SETTINGS)["ct"])


# ---- geometry -----------------------------------------------------------------------------------
def test_pet_on_another_grid_lands_where_the_ct_lesion_is(tmp_path):
    ct = body_ct(tmp_path / "ct.nii.gz", flip_xy=True)
    # PET: different spacing, field of view, origin and axis orientation; sphere at the same world place
    pet = sphere_image(tmp_path / "pet.nii.gz", (60, 50, 40), (5.0, 6.0, 5.5), (-140.0, -150.0, -100.0),
                       (30, -20, 10), 15, inside=20.0, outside=1.0)
    out = preprocess({"ct": ct, "pet": pet}, SETTINGS)
    c_ct = centroid(out["ct"] * (out["ct"] > 0.9))  # the 300 HU sphere saturates the window
    c_pet = centroid(out["suv"])
    assert np.linalg.norm((c_ct - c_pet) * 10.0) < 6.0  # within ~ half a voxel of 10 mm
    # and the world position is right: RAS (30, -20, 10) is LPS (-30, 20, 10)
    centre = boxes.body_centre_mm(sitk.ReadImage(str(ct)))
    assert np.allclose(world_of_voxel(SETTINGS, centre, c_pet), (-30, 20, 10), atol=6)
    assert out["suv"].max() == pytest.approx(20.0, rel=0.25)


@pytest.mark.parametrize("grid", ["pet", "ct"])
def test_mask_on_either_grid_is_placed_by_its_affine(tmp_path, grid):
    ct = body_ct(tmp_path / "ct.nii.gz", flip_xy=True)
    pet = sphere_image(tmp_path / "pet.nii.gz", (60, 50, 40), (5.0, 6.0, 5.5), (-140.0, -150.0, -100.0),
                       (30, -20, 10), 15, inside=20.0, outside=1.0)
    if grid == "pet":
        mask = sphere_image(tmp_path / "mask.nii.gz", (60, 50, 40), (5.0, 6.0, 5.5), (-140.0, -150.0, -100.0),
                            (30, -20, 10), 15, inside=1, outside=0, dtype=np.uint8)
    else:
        mask = sphere_image(tmp_path / "mask.nii.gz", (100, 100, 60), (3.0, 3.0, 4.0), (148.5, 148.5, -118.0),
                            (30, -20, 10), 15, inside=1, outside=0, flip_xy=True, dtype=np.uint8)
    out = preprocess({"ct": ct, "pet": pet, "mask": mask}, SETTINGS)
    assert out["mask"].dtype == np.uint8 and set(np.unique(out["mask"])) <= {0, 1}
    assert out["mask"].sum() > 0
    assert np.linalg.norm(centroid(out["mask"].astype(float)) - centroid(out["suv"])) < 0.8


def test_synthetic_patient_mask_covers_pet_hot_spots(small_cohort_dir):
    import pandas as pd

    row = pd.read_csv(small_cohort_dir / "cohort.csv").iloc[0]
    paths = {m: small_cohort_dir / row[c] for m, c in [("ct", "ct_path"), ("pet", "pet_path"), ("mask", "lesion_mask_path")]}
    out = preprocess(paths, PreprocessSettings.from_profile(get_profile("smoke")))
    assert out["ct"].shape == get_profile("smoke").input_size_voxels
    assert out["mask"].sum() > 0  # this patient has lesions (a test that passes on an empty mask proves nothing)
    assert out["suv"][out["mask"] > 0].mean() > 2 * np.median(out["suv"][out["ct"] > 0.2])


def test_intensity_scaling():
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 2000.0])
    np.testing.assert_allclose(resample.scale_intensity(hu, "ct", (-160, 240), (0, 30)), [0, 0, 0.5, 1, 1])
    suv = np.array([0.0, 3.0, 15.0, 30.0, 90.0])
    np.testing.assert_allclose(resample.scale_intensity(suv, "pet", (-160, 240), (0, 30)), [0, 0.1, 0.5, 1, 1])
    # the log scale: log(1 + SUV) over log(1 + 30); equal SUV ratios are equal steps, the CT is untouched
    logged = resample.scale_intensity(suv, "pet", (-160, 240), (0, 30), "log")
    np.testing.assert_allclose(logged, np.log1p([0.0, 3.0, 15.0, 30.0, 30.0]) / np.log1p(30.0), rtol=1e-6)
    np.testing.assert_allclose(resample.scale_intensity(hu, "ct", (-160, 240), (0, 30), "log"), [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError, match="suv_scale must be 'linear' or 'log'"):
        resample.scale_intensity(suv, "pet", (-160, 240), (0, 30), "sqrt")


def test_the_suv_scale_is_part_of_the_cache_key_only_when_it_is_not_linear():
    logged = PreprocessSettings.from_profile(get_profile("demo"))  # every profile's scale
    linear = PreprocessSettings.from_profile(replace(get_profile("demo"), suv_scale="linear"))
    assert linear.suv_scale == "linear" and "suv_scale" not in linear.key()  # arrays cached before stay valid
    assert logged.key()["suv_scale"] == "log" and logged.key() != linear.key()


# ---- cache --------------------------------------------------------------------------------------
def test_cache_reuses_and_invalidates(tmp_path, small_cohort_dir):
    import pandas as pd

    row = pd.read_csv(small_cohort_dir / "cohort.csv").iloc[0]
    ct = tmp_path / "ct.nii.gz"
    shutil.copy(small_cohort_dir / row["ct_path"], ct)
    cache = ImageCache(tmp_path / "cache")
    a = cache.get({"ct": ct}, SETTINGS)
    b = cache.get({"ct": ct}, SETTINGS)
    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(a["ct"], b["ct"])
    # a second cache object (a second run) finds the stored arrays
    again = ImageCache(tmp_path / "cache")
    again.get({"ct": ct}, SETTINGS)
    assert (again.misses, again.hits) == (0, 1)
    # other settings: a miss
    other = PreprocessSettings((24, 24, 20), SETTINGS.field_of_view_mm, SETTINGS.hu_window, SETTINGS.suv_range)
    again.get({"ct": ct}, other)
    assert again.misses == 1
    # the file changes: a miss, and the new content is used
    img = nib.load(ct)
    nib.save(nib.Nifti1Image((img.get_fdata() + 100).astype(np.int16), img.affine), ct)
    c = again.get({"ct": ct}, SETTINGS)
    assert again.misses == 2 and not np.array_equal(a["ct"], c["ct"])


# ---- errors -------------------------------------------------------------------------------------
def test_error_names_patient_image_and_file(tmp_path):
    f = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((10, 10, 10), 3.0, np.float32), np.eye(4)), f)
    with pytest.raises(ImageError, match=r"patient 'P007', image \"pet\" \(.*flat.nii.gz\): Standard deviation is 0"):
        io.read_image(f, "pet", "P007")


def test_single_slice_and_4d_are_rejected(tmp_path):
    f = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 1)).astype(np.float32), np.eye(4)), f)
    with pytest.raises(ImageError, match="single slice"):
        io.read_image(f, "ct")
    g = tmp_path / "dyn.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8, 3)).astype(np.float32), np.eye(4)), g)
    with pytest.raises(ImageError, match="4 dimensions"):
        io.read_image(g, "pet")


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        io.read_image(tmp_path / "nope.nii.gz", "ct")
    f = tmp_path / "scan.dcm"
    f.write_bytes(b"DICM")
    with pytest.raises(ImageError, match="unsupported file type"):
        io.read_image(f, "ct")


def test_bq_per_ml_pet_is_rejected_but_real_suv_is_not(tmp_path):
    suv = sphere_image(tmp_path / "suv.nii.gz", (30, 30, 30), (4, 4, 4), (0, 0, 0), (60, 60, 60), 20, 45.0, 0.8)
    io.read_image(suv, "pet")  # high lesion SUV is fine
    bq = sphere_image(tmp_path / "bq.nii.gz", (30, 30, 30), (4, 4, 4), (0, 0, 0), (60, 60, 60), 20, 45.0 * 5300, 0.8 * 5300)
    with pytest.raises(ImageError, match="Bq/mL"):
        io.read_image(bq, "pet")


def test_nan_values_are_rejected(tmp_path):
    arr = np.random.default_rng(0).random((10, 10, 10)).astype(np.float32)
    arr[3, 3, 3] = np.nan
    f = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), f)
    with pytest.raises(ImageError, match="NaN"):
        io.read_image(f, "pet")


def test_an_oblique_image_is_resampled_by_its_position(tmp_path):
    """A sphere in a volume rotated 30° about z and 20° about x (the affine of an oblique acquisition) lands on an
    axis-aligned grid where its world position says, with its volume."""
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_euler("zx", [30, 20], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 2.0, 3.0])
    affine[:3, 3] = [-40.0, 25.0, 60.0]
    shape = (40, 40, 30)
    world = np.indices(shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]  # RAS mm of every voxel
    centre = affine[:3, :3] @ np.array([25.0, 12.0, 18.0]) + affine[:3, 3]
    sphere = (np.linalg.norm(world - centre, axis=1) <= 10.0).reshape(shape).astype(np.uint8)
    nib.save(nib.Nifti1Image(sphere, affine), tmp_path / "mask.nii.gz")
    image = io.read_image(tmp_path / "mask.nii.gz", "mask")
    assert not np.allclose(np.abs(np.asarray(image.GetDirection())), np.eye(3).ravel())  # kept oblique
    size, spacing = (32, 32, 32), 1.5
    target = np.diag([spacing, spacing, spacing, 1.0])
    target[:3, 3] = centre - spacing * (np.array(size) - 1) / 2  # the sphere's centre at the grid's centre
    out = resample.resample_images({"mask": image}, size, target)["mask"]
    np.testing.assert_allclose(np.argwhere(out > 0).mean(axis=0), (np.array(size) - 1) / 2, atol=0.5)
    assert out.sum() * spacing ** 3 == pytest.approx(4 / 3 * np.pi * 10 ** 3, rel=0.1)
    # and the geometry check sees where it is: inside its own field of view, far from a box 1 m away
    from prrt.data.image_checks import box_gap_mm

    lo, hi = boxes.field_of_view_bounds_mm(io.read_header(tmp_path / "mask.nii.gz"))
    lps_centre = centre * [-1, -1, 1]
    assert np.all(lo < lps_centre) and np.all(lps_centre < hi)
    assert box_gap_mm((lo, hi), (hi + 1000, hi + 1100)) == pytest.approx(1000 * np.sqrt(3))


def test_every_supported_file_type_is_read_by_its_own_itk_reader_one_thread_at_a_time():
    """ITK is told which reader a file needs, instead of asking every format it knows (HDF5 among them, whose library
    is not thread-safe; a test process aborted in a header read while the image check read files on two threads), and
    SimpleITK reads files in one thread at a time."""
    from pathlib import Path

    for suffix in io.SUPPORTED_SUFFIXES:
        assert io._reader(Path(f"scan{suffix}")).GetImageIO() == io._ITK_IO[suffix], suffix
    assert io._ITK_FILES.acquire(blocking=False)  # a lock, free between reads
    io._ITK_FILES.release()
