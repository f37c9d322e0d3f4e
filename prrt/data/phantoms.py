"""The synthetic images: one patient's PET/CT phantom, an unlabelled CT collection for pretraining, and
planted-lesion images that check saliency maps.

:func:`patient_images` writes one patient's images, NIfTI: a contrast-enhanced CT (portal-venous phase) in
Hounsfield units and an SR-PET in SUV on different grids (different voxel spacings, fields of view and axis orientations, each with a proper
affine; :data:`GEOMETRIES`), with body outline, subcutaneous fat, lungs, liver, spleen, kidneys, aorta,
spine, liver metastases, lymph-node metastases and (in some) a primary tumour; physiological SSTR uptake
in spleen, kidneys and liver; a lesion mask on the PET grid (or the CT grid), and a label map of the
reference organs (1 liver, 2 spleen, 3 kidneys) on the PET grid for uptake ratios. The patient's latent
factors (:mod:`prrt.data.synthetic`) decide what the images show: ``z_pet`` lowers the lesions' SUV,
``z_ct`` raises the number and size of liver and nodal metastases, ``z_mismatch`` the number and size of
SSTR-negative ("mismatch") liver metastases: clearly hypodense on CT, cold on the SR-PET (below the liver
background), and therefore outside the lesion mask (which, as a mask drawn on the SR-PET would, holds
the receptor-positive lesions only) and outside the liver label of the organ map (a reference region
avoids lesions). The PET is blurred to the geometry's resolution (``pet_fwhm_mm``) and multiplied by
``pet_scale`` (a site's SUV calibration).

:func:`generate_ct_collection` writes unlabelled CTs with their lesion masks (``<out_dir>/C###/``), drawn
like the cohort's patients but from a seed sequence of their own, so that none is a cohort patient: a
collection for self-supervised pretraining. :func:`planted_lesion_images` makes images whose only signal
is the uptake of one planted lesion, beside a brighter cube that carries none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..imaging import default_workers


@dataclass(frozen=True)
class Geometry:
    """Voxel grids of CT and PET (shape in voxels, spacing in mm, x/y/z)."""

    ct_shape: tuple = (128, 128, 80)
    ct_spacing_mm: tuple = (3.0, 3.0, 4.0)
    pet_shape: tuple = (80, 80, 64)
    pet_spacing_mm: tuple = (4.8, 4.8, 5.0)
    pet_fwhm_mm: float = 7.0


GEOMETRIES = {
    "standard": Geometry(),
    # for tests: about 8x fewer voxels, same physical field of view
    "small": Geometry(ct_shape=(64, 64, 40), ct_spacing_mm=(6.0, 6.0, 8.0),
                      pet_shape=(48, 48, 40), pet_spacing_mm=(8.0, 8.0, 8.0)),
}

# tissue classes: CT (HU, a contrast-enhanced CT in the portal-venous phase) and PET (SUV)
TISSUE = {
    "air": (-1000.0, 0.0),
    "fat": (-100.0, 0.3),
    "soft": (45.0, 0.7),
    "lung": (-850.0, 0.25),
    "liver": (110.0, 6.5),
    "spleen": (115.0, 22.0),
    "kidney": (160.0, 14.0),
    "aorta": (170.0, 1.6),
    "bone": (650.0, 1.2),
    "marrow": (220.0, 1.8),
}


# ---- images --------------------------------------------------------------------------------------
def _axes(shape, spacing, centre_mm, flip_xy):
    """1D world coordinates (RAS, mm) of the voxel centres, and the affine."""
    sign = np.array([-1.0, -1.0, 1.0]) if flip_xy else np.ones(3)
    spacing = np.asarray(spacing, float)
    shape = np.asarray(shape)
    origin = np.asarray(centre_mm, float) - sign * spacing * (shape - 1) / 2
    affine = np.diag(np.r_[sign * spacing, 1.0])
    affine[:3, 3] = origin
    coords = [(origin[i] + sign[i] * spacing[i] * np.arange(shape[i])).astype(np.float32) for i in range(3)]
    return coords, affine


#: Mismatch (SSTR-negative) liver metastases: CT density (HU, mean and SD) and SR-PET uptake as a fraction
#: of the patient's liver background (lowest, highest).
MISMATCH_HU = (10.0, 8.0)
MISMATCH_UPTAKE = (0.1, 0.3)
#: How many mismatch metastases (Poisson with mean ``exp(a + b * z_mismatch)``, at most ``MISMATCH_MAX``) and
#: how large (radius in mm, lognormal: median ``r0 * exp(slope * z_mismatch)``, log-SD ``sd``).
MISMATCH_COUNT = (1.2, 0.7)
MISMATCH_MAX = 20
MISMATCH_RADIUS = (12.0, 0.3, 0.1)


def _in_liver(rng: np.random.Generator, liver: dict) -> np.ndarray:
    """A point drawn uniformly inside the inner three quarters of the liver ellipsoid (mm)."""
    while True:
        u = rng.uniform(-0.75, 0.75, 3)
        if (u**2).sum() <= 0.75**2:
            return np.asarray(liver["c"]) + u * np.asarray(liver["r"])


def draw_phantom(rng: np.random.Generator, z_pet: float, z_ct: float, z_mismatch: float = 0.0) -> dict:
    """Anatomy and lesions of one patient, in world millimetres (RAS: +x right, +y anterior)."""
    size = rng.uniform(0.88, 1.12)
    j = lambda sd: rng.normal(0, sd)  # noqa: E731
    shapes = {
        "body": dict(c=(0, 0, 0), r=(165 * size, 115 * size, 1e6)),
        "inner": dict(c=(0, 0, 0), r=(165 * size - 15, 115 * size - 15, 1e6)),
        "lung_r": dict(c=(85 * size + j(4), 5 + j(4), 150 + j(8)), r=(55, 70, 110)),
        "lung_l": dict(c=(-85 * size + j(4), 5 + j(4), 150 + j(8)), r=(55, 70, 110)),
        "liver": dict(c=(70 * size + j(5), 10 + j(5), 55 + j(8)), r=(85 * rng.uniform(0.9, 1.1), 80, 75)),
        "spleen": dict(c=(-95 * size + j(4), -40 + j(4), 55 + j(6)), r=(33, 45, 55 * rng.uniform(0.85, 1.2))),
        "kidney_r": dict(c=(65 * size + j(3), -55 + j(3), -15 + j(6)), r=(28, 30, 55)),
        "kidney_l": dict(c=(-65 * size + j(3), -55 + j(3), -5 + j(6)), r=(28, 30, 55)),
        "aorta": dict(c=(0, -35, 0), r=(12, 12, 1e6)),
        "vertebra": dict(c=(0, -70 * size, 0), r=(24, 22, 1e6)),
        "marrow": dict(c=(0, -70 * size, 0), r=(19, 17, 1e6)),
    }
    liver = shapes["liver"]
    lesions = []
    # liver metastases: number and size grow with tumour burden (z_ct)
    n_liver = int(np.clip(rng.poisson(np.exp(1.1 + 0.55 * z_ct)), 0, 14))
    lesion_suv = float(np.exp(np.log(20.0) - 0.35 * z_pet))  # low SSTR expression = higher risk
    for _ in range(n_liver):
        c = _in_liver(rng, liver)
        r = float(np.clip(rng.lognormal(np.log(9.0) + 0.25 * z_ct, 0.35), 4, 35))
        lesions.append(dict(c=tuple(c), r=(r, r, r), kind="liver",
                            suv=lesion_suv * rng.lognormal(0, 0.2), hu=float(rng.normal(85, 8))))
    n_nodes = int(np.clip(rng.poisson(np.exp(0.2 + 0.45 * z_ct)), 0, 6))
    for _ in range(n_nodes):
        c = (rng.uniform(-45, 45), rng.uniform(-25, 25), rng.uniform(-70, 20))
        r = float(np.clip(rng.lognormal(np.log(7.0) + 0.15 * z_ct, 0.25), 4, 20))
        lesions.append(dict(c=c, r=(r, r, r), kind="node",
                            suv=lesion_suv * rng.lognormal(0, 0.25), hu=float(rng.normal(60, 6))))
    if rng.uniform() < 0.6:  # a primary tumour in the mid abdomen
        c = (rng.uniform(-30, 40), rng.uniform(0, 40), rng.uniform(-40, 10))
        r = float(rng.uniform(8, 16))
        lesions.append(dict(c=c, r=(r, r, r), kind="primary",
                            suv=lesion_suv * rng.lognormal(0, 0.2), hu=float(rng.normal(90, 8))))
    physiology = {
        "liver": TISSUE["liver"][1] * rng.lognormal(0, 0.12),
        "spleen": TISSUE["spleen"][1] * rng.lognormal(0, 0.2),
        "kidney": TISSUE["kidney"][1] * rng.lognormal(0, 0.15),
    }
    # SSTR-negative liver metastases (z_mismatch): hypodense on CT, cold on SR-PET, not in the lesion mask.
    # Painted before the receptor-positive lesions, which cover them where both overlap.
    mismatch = []
    (a, b), (r0, slope, sd) = MISMATCH_COUNT, MISMATCH_RADIUS
    for _ in range(int(np.clip(rng.poisson(np.exp(a + b * z_mismatch)), 0, MISMATCH_MAX))):
        c = _in_liver(rng, liver)
        r = float(np.clip(rng.lognormal(np.log(r0) + slope * z_mismatch, sd), 5, 40))
        mismatch.append(dict(c=tuple(c), r=(r, r, r), kind="mismatch",
                             suv=physiology["liver"] * rng.uniform(*MISMATCH_UPTAKE),
                             hu=float(rng.normal(*MISMATCH_HU))))
    return {"shapes": shapes, "lesions": lesions, "mismatch": mismatch, "physiology": physiology}


def _inside(coords, c, r):
    x, y, z = coords
    return (((x[:, None, None] - c[0]) / r[0]) ** 2 + ((y[None, :, None] - c[1]) / r[1]) ** 2
            + ((z[None, None, :] - c[2]) / r[2]) ** 2) <= 1.0


def _render(coords, ph, value_index, lesion_key):
    """Paint tissue values (0: HU, 1: SUV) on a grid; returns (values, lesion mask, any-lesion mask).

    The lesion mask holds the receptor-positive lesions; the any-lesion mask the mismatch lesions too.
    """
    shape = tuple(len(a) for a in coords)
    v = np.full(shape, TISSUE["air"][value_index], np.float32)
    s = ph["shapes"]
    inside = lambda name: _inside(coords, s[name]["c"], s[name]["r"])  # noqa: E731
    body = inside("body")
    v[body] = TISSUE["fat"][value_index]
    inner = inside("inner") & body
    v[inner] = TISSUE["soft"][value_index]
    for name, tissue in [("lung_r", "lung"), ("lung_l", "lung"), ("liver", "liver"), ("spleen", "spleen"),
                         ("kidney_r", "kidney"), ("kidney_l", "kidney"), ("aorta", "aorta"),
                         ("vertebra", "bone"), ("marrow", "marrow")]:
        m = inside(name) & inner
        val = TISSUE[tissue][value_index]
        if value_index == 1 and tissue in ph["physiology"]:
            val = ph["physiology"][tissue]
        v[m] = val
    mask = np.zeros(shape, np.uint8)
    any_lesion = np.zeros(shape, bool)
    for les in ph.get("mismatch", []) + ph["lesions"]:
        m = _inside(coords, les["c"], les["r"]) & inner
        v[m] = les[lesion_key]
        any_lesion |= m
        if les["kind"] != "mismatch":
            mask[m] = 1
    return v, mask, any_lesion


ORGAN_LABELS = {"liver": 1, "spleen": 2, "kidney_r": 3, "kidney_l": 3}


def _organ_labels(coords, ph, lesion_mask):
    """Reference organs on a grid (1 liver, 2 spleen, 3 kidneys), lesions left out."""
    shape = tuple(len(a) for a in coords)
    labels = np.zeros(shape, np.uint8)
    s = ph["shapes"]
    inner = _inside(coords, s["inner"]["c"], s["inner"]["r"])
    for name, value in ORGAN_LABELS.items():
        labels[_inside(coords, s[name]["c"], s[name]["r"]) & inner] = value
    labels[lesion_mask > 0] = 0
    return labels


def lesion_parameters(ph: dict) -> dict:
    """The exact lesion parameters of one phantom: what a perfect reader of the images would measure."""
    def volume(lesions):
        return round(float(sum(4 / 3 * np.pi * les["r"][0] ** 3 for les in lesions) / 1000), 2)

    avid, mismatch = ph["lesions"], ph.get("mismatch", [])
    liver = [les for les in avid if les["kind"] == "liver"]
    return {
        "n_lesions": len(avid),
        "tumour_volume_ml": volume(avid),
        "lesion_suv": round(float(np.mean([les["suv"] for les in avid])) if avid else 0.0, 2),
        "n_liver_lesions": len(liver),
        "liver_lesion_volume_ml": volume(liver),
        "n_mismatch_lesions": len(mismatch),
        "mismatch_volume_ml": volume(mismatch),
    }


def patient_images(out_dir: Path, pid: str, geom: Geometry, mask_grid: str, seed_seq, z_pet, z_ct,
                   z_mismatch: float = 0.0, pet_scale: float = 1.0) -> dict:
    """Draw and write one patient's images; returns their paths and :func:`lesion_parameters`."""
    rng = np.random.default_rng(seed_seq)
    ph = draw_phantom(rng, z_pet, z_ct, z_mismatch)
    table_offset = (rng.normal(0, 6), rng.normal(0, 6), rng.normal(0, 10))
    ct_coords, ct_affine = _axes(geom.ct_shape, geom.ct_spacing_mm, table_offset, flip_xy=True)
    pet_centre = np.asarray(table_offset) + rng.normal(0, 4, 3)
    pet_coords, pet_affine = _axes(geom.pet_shape, geom.pet_spacing_mm, pet_centre, flip_xy=False)

    ct, ct_mask, _ = _render(ct_coords, ph, 0, "hu")
    ct = ndimage.gaussian_filter(ct, 0.6) + rng.normal(0, 12, ct.shape).astype(np.float32)
    ct = np.clip(np.round(ct), -1024, 3071).astype(np.int16)

    pet, pet_mask, pet_any_lesion = _render(pet_coords, ph, 1, "suv")
    sigma_vox = geom.pet_fwhm_mm / 2.3548 / np.asarray(geom.pet_spacing_mm)
    pet = ndimage.gaussian_filter(pet, sigma_vox)
    pet = pet + rng.normal(0, 1, pet.shape).astype(np.float32) * 0.12 * np.sqrt(np.maximum(pet, 0.05))
    pet = (np.clip(pet, 0, None) * pet_scale).astype(np.float32)

    folder = out_dir / "images" / pid
    folder.mkdir(parents=True, exist_ok=True)
    files = {"ct": folder / "ct.nii.gz", "pet": folder / "pet.nii.gz", "mask": folder / "lesion_mask.nii.gz",
             "organs": folder / "organs.nii.gz"}
    for arr, aff, f, units in [(ct, ct_affine, files["ct"], "HU"), (pet, pet_affine, files["pet"], "SUVbw")]:
        img = nib.Nifti1Image(arr, aff)
        img.header.set_xyzt_units("mm")
        img.header["descrip"] = f"synthetic {units}".encode()
        nib.save(img, f)
    mask, mask_aff = (pet_mask, pet_affine) if mask_grid == "pet" else (ct_mask, ct_affine)
    nib.save(nib.Nifti1Image(mask, mask_aff), files["mask"])
    nib.save(nib.Nifti1Image(_organ_labels(pet_coords, ph, pet_any_lesion), pet_affine), files["organs"])
    return {
        "ct_path": str(files["ct"].relative_to(out_dir)),
        "pet_path": str(files["pet"].relative_to(out_dir)),
        "lesion_mask_path": str(files["mask"].relative_to(out_dir)),
        "organ_mask_path": str(files["organs"].relative_to(out_dir)),
        **lesion_parameters(ph),
    }


def _ct_case(out_dir: Path, case: str, geom: Geometry, seed_seq) -> None:
    rng = np.random.default_rng(seed_seq)
    ph = draw_phantom(rng, float(rng.normal()), float(rng.normal()), float(rng.normal()))
    offset = (rng.normal(0, 6), rng.normal(0, 6), rng.normal(0, 10))
    coords, affine = _axes(geom.ct_shape, geom.ct_spacing_mm, offset, flip_xy=True)
    ct, mask, any_lesion = _render(coords, ph, 0, "hu")
    ct = ndimage.gaussian_filter(ct, 0.6) + rng.normal(0, 12, ct.shape).astype(np.float32)
    folder = out_dir / case
    folder.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.clip(np.round(ct), -1024, 3071).astype(np.int16), affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"synthetic HU"
    nib.save(img, folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), folder / "lesion_mask.nii.gz")
    nib.save(nib.Nifti1Image(_organ_labels(coords, ph, any_lesion), affine), folder / "organs.nii.gz")


def map_jobs(fn, jobs: list[tuple], workers: int | None, bar: dict) -> list:
    """``fn(*job)`` for every job, in order: on ``workers`` processes (default:
    :func:`prrt.imaging.default_workers`) or, with one, in this process; ``bar``: the progress bar's settings
    (``tqdm``'s)."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    workers = workers if workers is not None else default_workers()
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            return list(tqdm(pool.map(fn, *zip(*jobs), chunksize=4), total=len(jobs), **bar))
    return [fn(*job) for job in tqdm(jobs, **bar)]


def generate_ct_collection(out_dir, n_cases: int, seed: int, geometry: str = "standard",
                           progress: bool = True, workers: int | None = None) -> Path:
    """An unlabelled CT collection for pretraining: ``<out_dir>/C###/{ct,lesion_mask,organs}.nii.gz``.

    The cases are drawn like the cohort's patients (anatomy, receptor-positive and mismatch lesions; the
    mask holds the receptor-positive ones) but from their own seed
    sequence, so none of them is a cohort patient; no outcome, no PET, no table. Each case has a seed of its own,
    so ``workers`` processes (default: as for the cohort, up to 4) write the same files as one.
    """
    out_dir = Path(out_dir)
    geom = GEOMETRIES[geometry]
    seqs = np.random.SeedSequence([seed, 7001]).spawn(n_cases)
    map_jobs(_ct_case, [(out_dir, f"C{i + 1:03d}", geom, sq) for i, sq in enumerate(seqs)], workers,
             {"desc": "synthetic pretraining CTs", "unit": "CT", "disable": not progress})
    (out_dir / "README.txt").write_text(
        f"Synthetic CT collection for self-supervised pretraining of the CT encoder ({n_cases} cases, seed "
        f"{seed}). No outcome labels; none of these cases is a patient of the cohort.\n")
    return out_dir


def planted_lesion_images(n: int, size: int = 24, seed: int = 0, uptake=(0.5, 0.75), distractor=(0.8, 1.0)):
    """Images whose only signal is the uptake of one planted lesion: a check of saliency maps.

    Each image (1, size, size, size) has a noisy background (0.1), a planted spherical lesion
    (radius 3 voxels) whose uptake is ``uptake[1]`` for label 1 and ``uptake[0]`` for label 0, and a
    larger, brighter cube (7 voxels wide, uptake drawn from ``distractor`` whatever the label) that
    carries no signal: a network that looks where the bright things are points at the cube, one that
    learnt the task at the lesion. Returns ``(x (n, 1, X, Y, Z) float32 tensor, labels (n,), lesion
    masks (n, X, Y, Z) bool)``; the labels alternate, shuffled.
    """
    import torch

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1)
    x = np.zeros((n, 1, size, size, size), np.float32)
    masks = np.zeros((n, size, size, size), bool)
    y = np.tile([0, 1], n // 2 + 1)[:n]
    rng.shuffle(y)
    for i in range(n):
        img = rng.normal(0.1, 0.03, (size,) * 3)
        while True:  # lesion and cube apart
            lesion, cube = rng.integers(5, size - 5, 3), rng.integers(5, size - 5, 3)
            if np.abs(lesion - cube).max() > 9:
                break
        sphere = np.linalg.norm(grid - lesion, axis=-1) <= 3
        img[sphere] = uptake[int(y[i])] + rng.normal(0, 0.03, sphere.sum())
        box = (np.abs(grid - cube) <= 3).all(-1)
        img[box] = rng.uniform(*distractor) + rng.normal(0, 0.03, box.sum())
        x[i, 0], masks[i] = img, sphere
    return torch.from_numpy(x), y, masks
