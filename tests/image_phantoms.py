"""Image phantoms written as NIfTI files, shared by the tests of prrt.imaging and prrt.explain."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from prrt.imaging.settings import PreprocessSettings


def body_ct(path, flip_xy=True):
    """A CT: a water cylinder (0 HU) in air with a 40 HU sphere at world (30, -20, 10) mm (RAS)."""
    shape, spacing = (100, 100, 60), (3.0, 3.0, 4.0)
    sign = np.array([-1.0, -1.0, 1.0]) if flip_xy else np.ones(3)
    origin = -sign * np.asarray(spacing) * (np.asarray(shape) - 1) / 2
    aff = np.diag(np.r_[sign * np.asarray(spacing), 1.0])
    aff[:3, 3] = origin
    idx = np.indices(shape).reshape(3, -1).T
    world = idx @ aff[:3, :3].T + aff[:3, 3]
    body = (world[:, 0] / 120) ** 2 + (world[:, 1] / 90) ** 2 <= 1
    sph = np.linalg.norm(world - [30, -20, 10], axis=1) <= 15
    arr = np.where(sph, 300, np.where(body, 0, -1000)).reshape(shape).astype(np.int16)
    nib.save(nib.Nifti1Image(arr, aff), path)
    return path


LESIONS = PreprocessSettings((32, 32, 32), (384.0, 384.0, 320.0), (-160.0, 240.0), (0.0, 30.0), roi="lesions",
                             roi_spacing_mm=3.0)


PET_GRID = dict(shape=(60, 50, 40), spacing=(5.0, 6.0, 5.5), origin=(-140.0, -150.0, -100.0))


def spheres(path, spheres_mm, inside, outside, shape, spacing, origin, flip_xy=False, dtype=np.float32):
    """A NIfTI with spheres ``[(centre_ras_mm, radius_mm), ...]`` set to ``inside`` on ``outside``."""
    sign = np.array([-1.0, -1.0, 1.0]) if flip_xy else np.ones(3)
    aff = np.diag(np.r_[sign * np.asarray(spacing), 1.0])
    aff[:3, 3] = origin
    idx = np.indices(shape).reshape(3, -1).T
    world = idx @ aff[:3, :3].T + aff[:3, 3]
    hit = np.zeros(len(world), bool)
    for centre, radius in spheres_mm:
        hit |= np.linalg.norm(world - np.asarray(centre), axis=1) <= radius
    arr = np.where(hit.reshape(shape), inside, outside).astype(dtype)
    nib.save(nib.Nifti1Image(arr, aff), path)
    return path


def patient(tmp_path, lesions, mask_grid="pet", pet_grid=PET_GRID, mask_lesions=None):
    """CT + PET (hot spheres at ``lesions``) + a mask of ``mask_lesions`` (default: the same) on a grid."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    ct = body_ct(tmp_path / "ct.nii.gz")
    pet = spheres(tmp_path / "pet.nii.gz", lesions, 20.0, 1.0, **pet_grid)
    mask_lesions = lesions if mask_lesions is None else mask_lesions
    if mask_grid == "pet":
        grid = dict(pet_grid)
    else:  # the CT's own grid (flipped x/y, 3 x 3 x 4 mm)
        grid = dict(shape=(100, 100, 60), spacing=(3.0, 3.0, 4.0), origin=(148.5, 148.5, -118.0), flip_xy=True)
    mask = spheres(tmp_path / "mask.nii.gz", mask_lesions, 1, 0, dtype=np.uint8, **grid)
    return {"ct": ct, "pet": pet, "mask": mask}
