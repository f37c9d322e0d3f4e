"""Resampling onto another grid by position in patient space, and intensities mapped to [0, 1] (TorchIO).

* :func:`resample_images`: ``ToCanonical``, then ``Resample`` onto a target grid by position in patient
  space, with Gaussian anti-aliasing and linear interpolation for CT and PET, nearest neighbour for the
  lesion mask and organ labels. TorchIO's ``Resample`` pads with 0, so CT is resampled as HU + 1024 and
  shifted back: what lies outside the scan becomes air. :func:`resample_to` puts one image on another
  image's grid.
* :func:`resample_fraction`: the fraction of each voxel of a grid covered by a mask drawn on another grid
  (exact when both grids are aligned with the patient axes, sampled otherwise), so that a small lesion
  keeps its volume.
* :func:`scale_intensity`: TorchIO's ``Clamp`` and ``RescaleIntensity`` map the CT window (``hu_window``, HU)
  and the PET range (``suv_range``, SUV; linearly or as ``log(1 + SUV)``) to [0, 1], with the same fixed range
  for every patient.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .io import LABEL_MAPS

FILL_VALUE = {"ct": -1024.0, "pet": 0.0, "mask": 0, "organs": 0}


def nonzero_index_ranges(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of the True entries of a non-empty boolean array, along each of its axes."""
    ranges = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        ranges.append((int(hit[0]), int(hit[-1])))
    return ranges


# ---- resampling and intensities (TorchIO) ---------------------------------------------------------
def _tio_image(image: sitk.Image, modality: str):
    """A SimpleITK image as a TorchIO image: ``LabelMap`` for masks, ``ScalarImage`` otherwise.

    TorchIO's ``Resample`` fills voxels outside the scan with 0; CT is therefore handed over as
    ``HU + 1024`` (air = 0) and shifted back afterwards, so that those voxels become air.
    """
    import torch
    import torchio as tio

    array, affine = tio.io.sitk_to_nib(image)
    if modality == "ct":
        array = array.astype(np.float32) - FILL_VALUE["ct"]
    cls = tio.LabelMap if modality in LABEL_MAPS else tio.ScalarImage
    return cls(tensor=torch.as_tensor(np.ascontiguousarray(array)), affine=affine)


def resample_images(images: dict, size_voxels, affine_ras: np.ndarray) -> dict:
    """Resample images onto one grid with TorchIO; returns ``{modality: (x, y, z) array}``.

    The chain is ``ToCanonical`` (every image to RAS axes, so that the anti-aliasing below compares
    like axes) → ``Resample`` onto ``(size_voxels, affine_ras)`` by position in patient space:
    linear interpolation with Gaussian anti-aliasing along axes that get coarser (Cardoso et al.
    2015) for CT and PET, nearest neighbour for label maps. CT stays in HU, PET in SUV.
    """
    import torchio as tio

    subject = tio.Subject({m: _tio_image(img, m) for m, img in images.items()})
    chain = tio.Compose([tio.ToCanonical(), tio.Resample((tuple(int(s) for s in size_voxels), affine_ras),
                                                         antialias=True)])
    out = chain(subject)
    arrays = {}
    for m in images:
        a = out[m].data[0].numpy()
        arrays[m] = np.ascontiguousarray(a + FILL_VALUE["ct"] if m == "ct" else a)
    return arrays


def resample_to(image: sitk.Image, reference: sitk.Image, modality: str) -> np.ndarray:
    """Resample ``image`` onto the grid of ``reference`` by position in patient space; (x, y, z) array."""
    import torchio as tio

    affine = tio.io.get_ras_affine_from_sitk(reference)
    arr = resample_images({modality: image}, reference.GetSize(), affine)[modality]
    return arr.astype(np.uint8) if modality in LABEL_MAPS else arr.astype(np.float32)


def _signed_permutation(direction: np.ndarray) -> bool:
    return bool(np.allclose(np.abs(direction), np.round(np.abs(direction)), atol=1e-6))


def resample_fraction(label: sitk.Image, reference: sitk.Image, subsamples: int = 5) -> np.ndarray:
    """Fraction of each voxel of ``reference`` covered by the voxels > 0 of ``label``; (x, y, z) array.

    When both grids are aligned with the patient axes (any order and sign, as PET and CT are), the
    overlap of two voxels is the product of three interval overlaps, so the fractions are exact:
    one overlap matrix per axis, contracted with the mask. Otherwise each reference voxel is sampled
    at ``subsamples``³ points (nearest neighbour, TorchIO) and the hits averaged. A mask drawn on
    another grid (the CT's) then keeps the volume of a small lesion, where nearest neighbour alone
    makes a 1 cm lesion anything from 0.35 to 0.9 mL; a mask already on the reference grid comes
    back as exactly 0 and 1.
    """
    d_ref = np.asarray(reference.GetDirection(), float).reshape(3, 3)
    d_lab = np.asarray(label.GetDirection(), float).reshape(3, 3)
    mask = sitk.GetArrayFromImage(label).transpose(2, 1, 0) > 0  # (x, y, z) of the label grid
    n_ref = np.asarray(reference.GetSize())
    out = np.zeros(n_ref, np.float64)
    if not mask.any():
        return out
    if _signed_permutation(d_ref) and _signed_permutation(d_lab):
        s_ref, s_lab = np.asarray(reference.GetSpacing(), float), np.asarray(label.GetSpacing(), float)
        o_ref, o_lab = np.asarray(reference.GetOrigin(), float), np.asarray(label.GetOrigin(), float)
        # crop the mask to its lesions (the contraction then costs little)
        ranges = nonzero_index_ranges(mask)
        lo, hi = [first for first, _ in ranges], [last + 1 for _, last in ranges]
        m = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float64)
        weights, order = [], []
        for p in range(3):
            u = d_ref[:, p]
            a = int(np.argmax(np.abs(d_lab.T @ u)))
            sign = float(np.sign(d_lab[:, a] @ u))
            t_ref = u @ o_ref + np.arange(n_ref[p]) * s_ref[p]
            t_lab = u @ o_lab + sign * np.arange(lo[a], hi[a]) * s_lab[a]
            w = (np.minimum(t_ref[:, None] + s_ref[p] / 2, t_lab[None, :] + s_lab[a] / 2)
                 - np.maximum(t_ref[:, None] - s_ref[p] / 2, t_lab[None, :] - s_lab[a] / 2))
            weights.append(np.clip(w, 0, None) / s_ref[p])
            order.append(a)
        m = m.transpose(order)
        return np.einsum("ia,jb,kc,abc->ijk", weights[0], weights[1], weights[2], m, optimize=True)
    import torchio as tio

    k = int(subsamples)
    spacing = np.asarray(reference.GetSpacing(), float)
    fine = sitk.Image([int(n) * k for n in reference.GetSize()], sitk.sitkUInt8)
    fine.SetSpacing((spacing / k).tolist())
    fine.SetDirection(reference.GetDirection())
    fine.SetOrigin((np.asarray(reference.GetOrigin()) + d_ref @ (spacing * (0.5 / k - 0.5))).tolist())
    binary = sitk.Cast(label > 0, sitk.sitkUInt8)
    hits = resample_images({"mask": binary}, fine.GetSize(), tio.io.get_ras_affine_from_sitk(fine))["mask"] > 0
    n = reference.GetSize()
    return hits.reshape(n[0], k, n[1], k, n[2], k).mean(axis=(1, 3, 5))


def scale_intensity(array: np.ndarray, modality: str, hu_window, suv_range, suv_scale: str = "linear") -> np.ndarray:
    """CT: window ``hu_window`` (HU) → [0, 1]; PET: clip ``suv_range`` (SUV) → [0, 1].

    TorchIO's ``Clamp`` and ``RescaleIntensity`` with fixed input ranges (never per-image
    percentiles, so that an SUV or a HU value means the same in every patient). ``suv_scale="log"``
    maps ``log(1 + SUV)`` instead of the SUV (TorchIO's ``Lambda``): equal SUV *ratios* become equal
    steps, so a cold defect in the liver (a few SUV below it) is not flattened next to lesions of SUV 20.
    """
    import torch
    import torchio as tio

    if suv_scale not in ("linear", "log"):
        raise ValueError(f"suv_scale must be 'linear' or 'log', not {suv_scale!r}")
    lo, hi = hu_window if modality == "ct" else suv_range
    array = np.asarray(array, np.float32)
    image = tio.ScalarImage(tensor=torch.as_tensor(array.reshape(1, -1, 1, 1).copy()), affine=np.eye(4))
    steps = [tio.Clamp(float(lo), float(hi))]
    if modality == "pet" and suv_scale == "log":
        steps.append(tio.Lambda(torch.log1p))
        lo, hi = float(np.log1p(lo)), float(np.log1p(hi))
    chain = tio.Compose([*steps, tio.RescaleIntensity((0.0, 1.0), in_min_max=(lo, hi))])
    return chain(image).data.numpy().reshape(array.shape).astype(np.float32)
