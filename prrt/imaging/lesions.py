"""Quantitative SR-PET features, computed on the PET's own grid in SUV.

For each patient:

===========================  =====================================================================
``suv_max``                  highest lesion voxel SUV
``suv_mean``                 mean SUV over all lesion voxels
``suv_peak``                 highest mean SUV in a 1 mL sphere (radius 6.2 mm) centred on any
                             lesion voxel, not only on the hottest one (the sphere may reach outside
                             the lesion, as in PERCIST); voxels weighted by their overlap with the
                             sphere, so that it holds 1 mL on any grid
``mtv_ml``                   metabolic tumour volume: lesion voxels × voxel volume, in mL
``tlse``                     total lesion SSTR expression: ``suv_mean × mtv_ml`` (the analogue of
                             total lesion glycolysis)
``lesion_count``             connected lesion regions (26-connectivity)
``tumour_to_liver``          ``suv_max`` / mean SUV of the liver (reference label 1)
``tumour_to_spleen``         ``suv_max`` / mean SUV of the spleen (reference label 2)
===========================  =====================================================================

Lesions come from the manifest's lesion mask, placed on the PET grid by its affine. A mask drawn on
another grid (the CT's) becomes the fraction of each PET voxel that it covers
(:func:`prrt.imaging.resample.resample_fraction`), and the volume-type features weight voxels by it, so
that the MTV of a small lesion does not jump with its sub-voxel position. Without a mask, a **threshold
segmentation** is used (:func:`threshold_segmentation`): voxels with SUV at or above ``1.5 × liver median
+ 2 × liver robust SD`` (the PERCIST rule for measurable disease, applied to the somatostatin-receptor PET,
with the median and 1.4826 × MAD standing for the mean and SD of a normal-liver VOI, so that metastases
inside the liver label do not raise the threshold) when a liver reference is given, otherwise at or above
a fixed ``THRESHOLD_SUV``; spleen and kidney voxels (labels 2 and 3) are left out when an organ map is
given. Without an organ map, physiological uptake of spleen and kidneys is counted as lesion: the
book says so when this happens.

A patient without any lesion voxel gets ``mtv_ml = tlse = lesion_count = 0`` and missing (NaN)
SUV statistics, which the models impute inside each training fold.

:func:`patient_features` computes them from one patient's files, :func:`cohort_features` for every patient
with a PET. The same threshold segmentation places the input box of a patient without lesions in the mask
(:mod:`prrt.imaging.boxes`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from ..timing import phase
from .io import read_image
from .resample import resample_fraction, resample_to
from .threads import each_patient

FEATURES = ["suv_max", "suv_mean", "suv_peak", "mtv_ml", "tlse", "lesion_count", "tumour_to_liver",
            "tumour_to_spleen"]
PEAK_SPHERE_ML = 1.0
THRESHOLD_SUV = 10.0
LIVER, SPLEEN, KIDNEYS = 1, 2, 3


def _on_pet_grid(image: sitk.Image, pet: sitk.Image, modality: str) -> np.ndarray:
    """A label image placed on the PET grid by position (nearest neighbour), as (z, y, x)."""
    return resample_to(image, pet, modality).transpose(2, 1, 0).astype(np.int32)


def sphere_overlap(spacing_mm, volume_ml: float = PEAK_SPHERE_ML, subsamples: int = 7) -> np.ndarray:
    """Fraction of each voxel (grid ``spacing_mm``, z/y/x order) inside a centred sphere of ``volume_ml``.

    Estimated on ``subsamples``³ points per voxel. ``overlap.sum() × voxel volume`` is the sphere's
    volume on that grid (within about 1 %), whereas counting whole voxels whose centre lies inside
    gives 0.8-1.2 mL for a 1 mL sphere, depending on the spacing.
    """
    r = (3 * volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    spacing = np.asarray(spacing_mm, float)
    half = [int(np.ceil(r / s + 0.5)) for s in spacing]
    offsets = (np.arange(subsamples) + 0.5) / subsamples - 0.5  # sub-voxel positions, in voxels
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    inside = np.zeros(grids[0].shape)
    for dz in offsets:
        for dy in offsets:
            for dx in offsets:
                inside += (((grids[0] + dz) * spacing[0]) ** 2 + ((grids[1] + dy) * spacing[1]) ** 2
                           + ((grids[2] + dx) * spacing[2]) ** 2) <= r**2
    return inside / subsamples**3


def sphere_kernel(spacing_mm, volume_ml: float = PEAK_SPHERE_ML) -> np.ndarray:
    """Averaging kernel of a sphere of ``volume_ml``: voxels weighted by their overlap, weights summing to 1."""
    w = sphere_overlap(spacing_mm, volume_ml)
    return w / w.sum()


def lesion_features(suv: np.ndarray, lesions: np.ndarray, spacing_zyx, organs: np.ndarray | None = None) -> dict:
    """Features of one patient from arrays on the PET grid (``spacing_zyx`` in mm, z/y/x order).

    ``lesions`` is a binary mask or, for a mask drawn on another grid, the fraction of each PET
    voxel that is lesion (:func:`prrt.imaging.resample.resample_fraction`). The volume (MTV), SUVmean and
    TLSE weight every voxel by that fraction; SUVmax, SUVpeak, the lesion count and the reference
    regions use the voxels that are at least half lesion (or, for a lesion smaller than half a
    voxel everywhere, its most covered voxels).
    """
    voxel_ml = float(np.prod(spacing_zyx)) / 1000
    fraction = np.clip(np.asarray(lesions, np.float64), 0, 1)
    lesion = fraction >= 0.5
    if not lesion.any() and fraction.any():
        lesion = fraction == fraction.max()
    out = dict.fromkeys(FEATURES, np.nan)
    total = float(fraction.sum())
    out["mtv_ml"] = total * voxel_ml
    _, out["lesion_count"] = ndimage.label(lesion, structure=np.ones((3, 3, 3)))
    out["lesion_count"] = int(out["lesion_count"])
    if total > 0:
        out["suv_max"] = float(suv[lesion].max())
        out["suv_mean"] = float((suv * fraction).sum() / total)
        peak_map = ndimage.correlate(suv.astype(np.float64), sphere_kernel(spacing_zyx), mode="constant")
        out["suv_peak"] = float(peak_map[lesion].max())
        out["tlse"] = out["suv_mean"] * out["mtv_ml"]
    else:
        out["tlse"] = 0.0
    if organs is not None:
        for key, label in (("tumour_to_liver", LIVER), ("tumour_to_spleen", SPLEEN)):
            ref = (organs == label) & ~(fraction > 0)
            if ref.any() and total > 0:
                out[key] = out["suv_max"] / float(suv[ref].mean())
    return out


def robust_liver_reference(liver_suv: np.ndarray) -> tuple[float, float]:
    """Median and robust SD (1.4826 × median absolute deviation) of the SUV in a liver label.

    A whole-liver label (TotalSegmentator, say) includes the liver metastases; their high uptake
    would raise a mean and an SD, and with them the threshold, until lesions are missed. The median
    and the MAD describe the normal liver as long as it makes up most of the label, as PERCIST's
    normal-liver VOI intends.
    """
    v = np.asarray(liver_suv, float)
    median = float(np.median(v))
    return median, 1.4826 * float(np.median(np.abs(v - median)))


def threshold_segmentation(suv: np.ndarray, organs: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Lesion voxels by threshold when there is no mask; returns the mask and the rule used."""
    if organs is not None and (organs == LIVER).any():
        centre, spread = robust_liver_reference(suv[organs == LIVER])
        thr = 1.5 * centre + 2 * spread
        rule = f"SUV >= 1.5 x liver median + 2 x liver robust SD ({thr:.1f})"
    else:
        thr = THRESHOLD_SUV
        rule = f"SUV >= {THRESHOLD_SUV:g} (no liver reference)"
    mask = suv >= thr
    if organs is not None:
        mask &= ~np.isin(organs, [SPLEEN, KIDNEYS])
        rule += ", spleen and kidneys left out"
    else:
        rule += ", physiological uptake included"
    return mask, rule


def patient_features(pet_path, mask_path=None, organs_path=None, patient: str | None = None) -> dict:
    """Features of one patient from files; ``segmentation`` says where the lesions came from."""
    pet = read_image(pet_path, "pet", patient)
    suv = sitk.GetArrayFromImage(pet).astype(np.float32)
    spacing_zyx = pet.GetSpacing()[::-1]
    organs = _on_pet_grid(read_image(organs_path, "organs", patient), pet, "organs") if organs_path else None
    if mask_path:
        lesions = resample_fraction(read_image(mask_path, "mask", patient), pet).transpose(2, 1, 0)
        how = "lesion mask"
    else:
        lesions, how = threshold_segmentation(suv, organs)
    out = lesion_features(suv, lesions, spacing_zyx, organs)
    out["segmentation"] = how
    return out


def cohort_features(cohort, progress: bool = True, threads: int | None = None) -> pd.DataFrame:
    """PET features of every patient with a PET (index = pseudonym), the patients on ``threads`` threads
    (:func:`prrt.imaging.threads.each_patient`)."""
    if "pet" not in cohort.modalities:
        raise ValueError("the manifest names no PET images")
    patients = [pid for pid in cohort.data.index if cohort.image_path(pid, "pet") is not None]

    def features(pid):
        return patient_features(cohort.image_path(pid, "pet"), cohort.image_path(pid, "mask"),
                                cohort.image_path(pid, "organs"), pid)

    with phase("preprocessing", model="lesion features"):
        rows = each_patient(features, patients, "PET features", progress, threads)
    df = pd.DataFrame.from_dict(dict(zip(patients, rows)), orient="index")
    df.index.name = "patient"
    return df
