"""Image loading and preprocessing for SR-PET and CT.

Reading
    NIfTI (``.nii``, ``.nii.gz``) is read with nibabel, NRRD (``.nrrd``, ``.nhdr``) and MetaImage
    (``.mha``, ``.mhd``) with SimpleITK; each image keeps its position in patient space (origin,
    spacing, direction), so PET, CT and masks on different grids line up by their affines.

Preprocessing (:func:`preprocess`), for one patient
    1. the input grid (:func:`input_box`): for ``roi = "lesions"`` a box around every lesion voxel
       of the mask (on whichever grid it was drawn) plus a margin, fitted to the input shape with
       cubic voxels no finer than ``roi_min_spacing_mm`` (PET-threshold, then body fallbacks for a
       patient without lesions, recorded in the box); for ``roi = "body"`` the profile's
       ``field_of_view_mm`` centred on the centroid of the body (CT voxels above -500 HU, or PET
       voxels above 5 % of the 99th percentile without a CT). Axes follow ITK's LPS orientation;
    2. TorchIO (:func:`resample_images`): ``ToCanonical``, then ``Resample`` onto that grid by
       position in patient space, with Gaussian anti-aliasing and linear interpolation for CT and
       PET, nearest neighbour for the lesion mask and organ labels;
    3. TorchIO (:func:`scale_intensity`): ``Clamp`` and ``RescaleIntensity`` map the CT window
       (``hu_window``) and the PET range (``suv_range``) to [0, 1].

    Hand-written code remains where TorchIO lacks the step: reading (nibabel/SimpleITK with the
    checks below), the box rule (``CropOrPad`` with a mask crops on one image's voxel grid; the box
    here spans images on different grids and is sampled in one interpolation) and the padding of CT
    with air (TorchIO's ``Resample`` pads with 0, so CT is resampled as HU + 1024).

Caching
    :class:`ImageCache` stores the preprocessed arrays on disk under a key made of the SHA-256 of
    every input file, the settings and (for lesion boxes) the box, so a second run (or another
    notebook) does not redo the work, and a changed file or setting is never served stale. The box
    is stored with the arrays (:func:`box_of`).

Checks
    Unreadable or corrupt files, 2D or 4D images, empty (constant) images, PET values that look like
    activity concentration (Bq/mL) rather than SUV, CT values that are not Hounsfield units, and a
    lesion mask that lies entirely outside the PET or the CT raise :class:`ImageError` naming the
    patient, the image and the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Bumped whenever preprocessing changes, so that cached arrays of older code are not reused.
PREPROCESS_VERSION = 3
#: SUV above this at the 95th percentile of positive voxels means the PET is not in SUV.
PET_SUV_P95_LIMIT = 200.0
CT_AIR_THRESHOLD_HU = -500.0
FILL_VALUE = {"ct": -1024.0, "pet": 0.0, "mask": 0, "organs": 0}
LABEL_MAPS = ("mask", "organs")


class ImageError(ValueError):
    """A problem with one image file; the message names the patient, the image and the file."""

    def __init__(self, reason: str, path, modality: str | None = None, patient: str | None = None):
        self.reason = reason
        self.path = str(path)
        self.modality = modality
        self.patient = patient
        who = f"patient {patient!r}, " if patient else ""
        what = f'image "{modality}" ' if modality else "image "
        super().__init__(f"{who}{what}({self.path}): {reason}")


def _check_suffix(path: Path, modality, patient):
    name = path.name.lower()
    if not name.endswith(SUPPORTED_SUFFIXES):
        raise ImageError(
            f"unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)} "
            "(convert DICOM series with dcm2niix or SimpleITK first)",
            path, modality, patient,
        )


def _check_geometry(size, path, modality, patient):
    if len(size) == 2:
        raise ImageError(f"is 2D (size {tuple(size)}); a 3D volume is needed", path, modality, patient)
    if len(size) != 3:
        raise ImageError(f"has {len(size)} dimensions (size {tuple(size)}); a 3D volume is needed",
                         path, modality, patient)
    if min(size) < 2:
        raise ImageError(f"is a single slice (size {tuple(size)}); a 3D volume is needed",
                         path, modality, patient)


def read_header(path, modality: str | None = None, patient: str | None = None) -> dict:
    """Read only the header of an image: size, spacing (mm), origin, direction.

    Raises :class:`ImageError` if the file is missing, unreadable, or not a 3D volume.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError("file not found", path, modality, patient)
    _check_suffix(path, modality, patient)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageError(f"cannot be read (corrupt or not an image): {_first_line(exc)}", path, modality,
                         patient) from None
    size = reader.GetSize()
    _check_geometry(size, path, modality, patient)
    return {
        "size": tuple(size),
        "spacing_mm": tuple(reader.GetSpacing()),
        "origin_mm": tuple(reader.GetOrigin()),
        "direction": tuple(reader.GetDirection()),
    }


def _first_line(exc) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with a location line; the description is the most useful part.
    for ln in lines:
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else repr(exc)


def _read_nifti(path: Path, modality, patient) -> sitk.Image:
    """Read a NIfTI with nibabel (its RAS affine turned into ITK's LPS geometry).

    nibabel is used for NIfTI because SimpleITK silently zero-fills a truncated file and turns NaN
    into 0; nibabel raises on the first and keeps the second, so both can be reported.
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for damaged or truncated files
        raise ImageError(f"cannot be read (corrupt or truncated): {exc}", path, modality, patient) from None
    if data.ndim != 3:
        _check_geometry(data.shape, path, modality, patient)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    flip = np.diag([-1.0, -1.0, 1.0])
    lps = flip @ img.affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    direction = lps / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ImageError("has a sheared affine; resample it to an orthogonal grid first", path, modality, patient)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((flip @ img.affine[:3, 3]).tolist())
    image.SetDirection(direction.flatten().tolist())
    return image


def read_image(path, modality: str | None = None, patient: str | None = None) -> sitk.Image:
    """Read a 3D image (NIfTI, NRRD or MHA) and check its values.

    ``modality`` (``"ct"``, ``"pet"`` or ``"mask"``) selects the value checks: CT must be in
    Hounsfield units, PET in SUV (not Bq/mL); no image may be constant.
    """
    path = Path(path)
    read_header(path, modality, patient)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        image = _read_nifti(path, modality, patient)
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise ImageError(f"cannot be read (corrupt or truncated): {_first_line(exc)}", path, modality,
                             patient) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "a scalar volume is needed", path, modality, patient)
    array = sitk.GetArrayViewFromImage(image)
    check_values(array, path, modality, patient)
    return image


def check_values(array: np.ndarray, path, modality: str | None, patient: str | None = None) -> None:
    """Value checks of :func:`read_image` (exposed for arrays from other readers)."""
    if not np.all(np.isfinite(array)):
        raise ImageError("contains NaN or infinite values", path, modality, patient)
    if modality not in LABEL_MAPS and float(array.std()) == 0.0:
        raise ImageError(f"Standard deviation is 0 (every voxel is {float(array.flat[0]):g}): the image is empty",
                         path, modality, patient)
    if modality == "pet":
        positive = array[array > 0]
        if positive.size == 0:
            raise ImageError("has no positive values; SR-PET in SUV is expected", path, modality, patient)
        p95 = float(np.percentile(positive, 95))
        if p95 > PET_SUV_P95_LIMIT:
            raise ImageError(
                f"values look like activity concentration (Bq/mL), not SUV: the 95th percentile of "
                f"positive voxels is {p95:.4g}, but SUV rarely exceeds {PET_SUV_P95_LIMIT:g}. Convert to "
                "body-weight SUV: SUV = C[Bq/mL] x weight[g] / (injected activity[Bq], decay-corrected)",
                path, modality, patient)
    elif modality == "ct":
        lo, hi = float(array.min()), float(array.max())
        if lo >= 0 and hi > 1000:
            raise ImageError(
                f"values {lo:g}..{hi:g} look like raw stored values, not Hounsfield units (air should be "
                "near -1000 HU); apply the DICOM rescale slope and intercept", path, modality, patient)
    elif modality in LABEL_MAPS:
        values = np.unique(array)
        if values.size > 64 or not np.allclose(values, np.round(values)):
            raise ImageError("does not look like a label mask (expected a few integer labels)",
                             path, modality, patient)
        if values[0] < 0:
            raise ImageError(f"has a negative label ({values[0]:g}): labels are 0 (background) and 1, 2, … "
                             "(lesions or organs)", path, modality, patient)


# ---- the input grid: body-centred or lesion-centred ----------------------------------------------
ROI_MODES = ("body", "lesions")
#: Where a ``lesions`` box came from, recorded per patient (see :func:`input_box`).
ROI_SOURCES = ("lesion mask", "PET threshold", "body (no lesion found)", "body")


def body_centre_mm(ct: sitk.Image | None = None, pet: sitk.Image | None = None) -> np.ndarray:
    """Centroid of the body in patient coordinates (mm): CT above -500 HU, else PET uptake."""
    if ct is not None:
        image, arr = ct, sitk.GetArrayViewFromImage(ct)
        body = arr > CT_AIR_THRESHOLD_HU
    elif pet is not None:
        image, arr = pet, sitk.GetArrayViewFromImage(pet)
        body = arr > 0.05 * np.percentile(arr, 99)
    else:
        raise ValueError("need a CT or a PET to find the body")
    idx = np.argwhere(body)  # (z, y, x)
    if idx.size == 0:
        idx = np.argwhere(np.ones_like(body))
    c = idx.mean(axis=0)[::-1]  # (x, y, z) continuous index
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(c.tolist()))


def _grid_matrix(geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, direction @ diag(spacing), size) of a SimpleITK image or a :func:`read_header` dict."""
    if isinstance(geometry, sitk.Image):
        origin, spacing, direction, size = (geometry.GetOrigin(), geometry.GetSpacing(), geometry.GetDirection(),
                                            geometry.GetSize())
    else:
        origin, spacing, direction, size = (geometry["origin_mm"], geometry["spacing_mm"], geometry["direction"],
                                            geometry["size"])
    m = np.asarray(direction, float).reshape(3, 3) @ np.diag(spacing)
    return np.asarray(origin, float), m, np.asarray(size)


def field_of_view_bounds_mm(geometry) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned (LPS) bounds in mm of an image's field of view, voxel edges included."""
    origin, m, size = _grid_matrix(geometry)
    corners = np.array([[a, b, c] for a in (-0.5, size[0] - 0.5) for b in (-0.5, size[1] - 0.5)
                        for c in (-0.5, size[2] - 0.5)])
    world = origin + corners @ m.T
    return world.min(axis=0), world.max(axis=0)


def _nonzero_index_ranges(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of the True entries of a non-empty boolean array, along each of its axes."""
    ranges = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        ranges.append((int(hit[0]), int(hit[-1])))
    return ranges


def lesion_bounds_mm(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """Axis-aligned (LPS) bounds in mm of the voxels > 0 of a label image, voxel edges included.

    Computed on the grid the mask was drawn on (PET, CT or any other), from the corners of the
    lesion voxels, so that no resampling can shrink a small lesion away. ``None`` if the mask is empty.
    """
    arr = sitk.GetArrayViewFromImage(mask) > 0  # (z, y, x)
    if not arr.any():
        return None
    ranges = [(first - 0.5, last + 0.5) for first, last in _nonzero_index_ranges(arr)[::-1]]  # x, y, z
    origin, m, _ = _grid_matrix(mask)
    corners = np.array([[a, b, c] for a in ranges[0] for b in ranges[1] for c in ranges[2]])
    world = origin + corners @ m.T
    return world.min(axis=0), world.max(axis=0)


def voxels_inside(mask: sitk.Image, geometry) -> tuple[int, int]:
    """(lesion voxels of ``mask`` whose centres lie in the field of view of ``geometry``, all lesion voxels)."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1].astype(float)  # (x, y, z)
    origin, m, _ = _grid_matrix(mask)
    world = origin + idx @ m.T
    o2, m2, size2 = _grid_matrix(geometry)
    cont = (world - o2) @ np.linalg.inv(m2).T
    inside = np.all((cont >= -0.5) & (cont <= size2 - 0.5), axis=1)
    return int(inside.sum()), len(idx)


@dataclass(frozen=True)
class InputBox:
    """The grid one patient's network input covers: axes along ITK's LPS, positions in mm.

    ``roi``: the profile's region of interest (``body`` or ``lesions``); ``source``: where the box
    came from (one of :data:`ROI_SOURCES`); ``lesion_lo_mm``/``lesion_hi_mm``: bounds of the lesion
    voxels (before the margin) when there were any; ``note``: why a fallback was used, or the
    threshold rule of a PET segmentation.
    """

    roi: str
    source: str
    centre_mm: tuple
    spacing_mm: tuple
    size_voxels: tuple
    lesion_lo_mm: tuple | None = None
    lesion_hi_mm: tuple | None = None
    note: str = ""

    @property
    def origin_mm(self) -> np.ndarray:
        """Position (LPS, mm) of the centre of voxel (0, 0, 0)."""
        return np.asarray(self.centre_mm) - (np.asarray(self.size_voxels) - 1) / 2 * np.asarray(self.spacing_mm)

    @property
    def extent_mm(self) -> np.ndarray:
        return np.asarray(self.size_voxels) * np.asarray(self.spacing_mm)

    def affine_ras(self) -> np.ndarray:
        """The grid's affine in the RAS convention of nibabel and TorchIO."""
        return grid_affine_ras(self.origin_mm, self.spacing_mm)

    def to_record(self) -> dict:
        """A flat record (for ``inputs/<roi>_boxes.csv`` and the cache key): centre, extent, spacing."""
        rec = {"roi": self.roi, "source": self.source, "note": self.note}
        for name, values in [("centre", self.centre_mm), ("extent", self.extent_mm), ("spacing", self.spacing_mm)]:
            rec.update({f"{name}_{a}_mm": round(float(v), 3) for a, v in zip("xyz", values)})
        for name, values in [("lesion_lo", self.lesion_lo_mm), ("lesion_hi", self.lesion_hi_mm)]:
            rec.update({f"{name}_{a}_mm": (round(float(v), 3) if values is not None else np.nan)
                        for a, v in zip("xyz", values if values is not None else (0, 0, 0))})
        return rec


def grid_affine_ras(origin_lps_mm, spacing_mm) -> np.ndarray:
    """RAS affine (nibabel/TorchIO convention) of a grid whose axes follow ITK's LPS axes."""
    flip = np.diag([-1.0, -1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = flip @ np.diag(np.asarray(spacing_mm, float))
    aff[:3, 3] = flip @ np.asarray(origin_lps_mm, float)
    return aff


def target_grid(centre_mm, size_voxels, field_of_view_mm) -> sitk.Image:
    """An empty reference image: ``size_voxels`` covering ``field_of_view_mm`` around ``centre_mm``."""
    size = [int(s) for s in size_voxels]
    spacing = [float(f) / s for f, s in zip(field_of_view_mm, size)]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing(spacing)
    ref.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    origin = np.asarray(centre_mm, float) - (np.asarray(size) - 1) / 2 * np.asarray(spacing)
    ref.SetOrigin(origin.tolist())
    return ref


def fit_box(lo_mm, hi_mm, margin_mm: float, size_voxels, min_spacing_mm: float) -> tuple[np.ndarray, float]:
    """Centre and isotropic spacing of a grid of ``size_voxels`` that holds ``[lo, hi]`` plus the margin.

    The spacing is the smallest that fits the box along every axis, but not finer than
    ``min_spacing_mm``; the other axes are padded (never stretched), and a box larger than the input
    at ``min_spacing_mm`` is downsampled to fit (never cut).
    """
    lo, hi = np.asarray(lo_mm, float), np.asarray(hi_mm, float)
    extent = hi - lo + 2 * float(margin_mm)
    spacing = max(float(np.max(extent / np.asarray(size_voxels, float))), float(min_spacing_mm))
    return (lo + hi) / 2, spacing


def _pet_threshold_mask(pet: sitk.Image, organs: sitk.Image | None) -> tuple[sitk.Image, str]:
    """The PET threshold segmentation of :mod:`prrt.pet_features`, as a label image on the PET grid."""
    from .pet_features import threshold_segmentation

    suv = sitk.GetArrayViewFromImage(pet)
    organ_arr = None
    if organs is not None:
        organ_arr = resample_to(organs, pet, "organs").transpose(2, 1, 0)
    seg, rule = threshold_segmentation(suv, organ_arr)
    image = sitk.GetImageFromArray(seg.astype(np.uint8))
    image.CopyInformation(pet)
    return image, rule


def _body_box(settings: "PreprocessSettings", images: dict, headers: dict, roi: str, source: str,
              note: str = "") -> "InputBox":
    ct, pet = images.get("ct"), None
    if ct is None and "ct" in headers:
        ct = read_image(headers["ct"]["path"], "ct")
    if ct is None:
        pet = images.get("pet")
        if pet is None:
            pet = read_image(headers["pet"]["path"], "pet")
    centre = body_centre_mm(ct, pet)
    size = np.asarray(settings.input_size_voxels, float)
    spacing = np.asarray(settings.field_of_view_mm, float) / size
    if roi == "lesions":  # the fallback keeps the voxels isotropic, as every lesion box does
        spacing = np.full(3, spacing.max())
    return InputBox(roi, source, tuple(map(float, centre)), tuple(map(float, spacing)),
                    tuple(int(s) for s in size), note=note)


def input_box(paths: dict, settings: "PreprocessSettings", patient: str | None = None,
              images: dict | None = None) -> tuple["InputBox", sitk.Image | None]:
    """The input grid of one patient, and the lesion segmentation it was built from (if any).

    ``roi = "body"``: the profile's ``field_of_view_mm`` centred on the body centroid.

    ``roi = "lesions"``: the bounds of every lesion voxel of the mask (on whichever grid it was
    drawn), plus ``roi_margin_mm`` on each side, fitted to the input shape with isotropic voxels no
    finer than ``roi_min_spacing_mm`` (:func:`fit_box`). A patient whose mask is missing or empty
    falls back to the PET threshold segmentation of :mod:`prrt.pet_features` (PERCIST-like with a
    liver reference, else SUV ≥ 10), and without a PET, or with no voxel above the threshold, to a
    box around the body (the profile's field of view, isotropic); ``source`` records which.

    A mask none of whose lesion voxels lies inside the PET's (or the CT's) field of view raises
    :class:`ImageError` naming the patient and the mask file.

    ``images`` holds already-read SimpleITK images; the rest is read from ``paths`` as needed (for a
    lesion mask, only the mask and the headers of the scans).
    """
    images = dict(images or {})
    paths = {m: p for m, p in paths.items() if p is not None}
    headers = {m: {**read_header(p, m, patient), "path": p} for m, p in paths.items() if m in ("ct", "pet")}
    if not headers:
        raise ValueError(f"patient {patient!r}: neither a CT nor a PET to preprocess")
    if settings.roi not in ROI_MODES:
        raise ValueError(f"unknown roi {settings.roi!r}; choose one of {', '.join(ROI_MODES)}")
    if settings.roi == "body":
        return _body_box(settings, images, headers, "body", "body"), images.get("mask")

    segmentation, bounds, source, note = None, None, "lesion mask", ""
    if "mask" in paths:
        segmentation = images.get("mask")
        if segmentation is None:
            segmentation = read_image(paths["mask"], "mask", patient)
        bounds = lesion_bounds_mm(segmentation)
        if bounds is None:
            note = "the lesion mask is empty"
        else:
            for modality, header in headers.items():
                inside, total = voxels_inside(segmentation, header)
                if inside == 0:
                    lo, hi = field_of_view_bounds_mm(header)
                    raise ImageError(
                        f"the lesion mask does not overlap the {modality.upper()}: none of its {total} lesion "
                        f"voxels lies inside the {modality.upper()}'s field of view (LPS x {lo[0]:.0f}..{hi[0]:.0f}, "
                        f"y {lo[1]:.0f}..{hi[1]:.0f}, z {lo[2]:.0f}..{hi[2]:.0f} mm; lesions at x "
                        f"{bounds[0][0]:.0f}..{bounds[1][0]:.0f}, y {bounds[0][1]:.0f}..{bounds[1][1]:.0f}, z "
                        f"{bounds[0][2]:.0f}..{bounds[1][2]:.0f} mm). Check that the mask belongs to this patient "
                        "and scan, and that its affine (origin, spacing, orientation) was kept on export",
                        paths["mask"], "mask", patient)
    else:
        note = "no lesion mask"
    if bounds is None and "pet" in headers:
        pet = images.get("pet")
        if pet is None:
            pet = read_image(paths["pet"], "pet", patient)
        organs = images.get("organs")
        if organs is None and "organs" in paths:
            organs = read_image(paths["organs"], "organs", patient)
        segmentation, rule = _pet_threshold_mask(pet, organs)
        bounds = lesion_bounds_mm(segmentation)
        source, note = "PET threshold", f"{note}; {rule}"
        if bounds is None:
            segmentation, note = None, f"{note}: no voxel above the threshold"
    if bounds is None:
        box = _body_box(settings, images, headers, "lesions", "body (no lesion found)", note)
        return box, segmentation
    centre, spacing = fit_box(bounds[0], bounds[1], settings.roi_margin_mm, settings.input_size_voxels,
                              settings.roi_min_spacing_mm)
    box = InputBox("lesions", source, tuple(map(float, centre)), (spacing,) * 3,
                   tuple(int(s) for s in settings.input_size_voxels), tuple(map(float, bounds[0])),
                   tuple(map(float, bounds[1])), note)
    return box, segmentation


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
        ranges = _nonzero_index_ranges(mask)
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


def scale_intensity(array: np.ndarray, modality: str, hu_window, suv_range) -> np.ndarray:
    """CT: window ``hu_window`` (HU) → [0, 1]; PET: clip ``suv_range`` (SUV) → [0, 1].

    TorchIO's ``Clamp`` and ``RescaleIntensity`` with fixed input ranges (never per-image
    percentiles, so that an SUV or a HU value means the same in every patient).
    """
    import torch
    import torchio as tio

    lo, hi = hu_window if modality == "ct" else suv_range
    array = np.asarray(array, np.float32)
    image = tio.ScalarImage(tensor=torch.as_tensor(array.reshape(1, -1, 1, 1).copy()), affine=np.eye(4))
    chain = tio.Compose([tio.Clamp(float(lo), float(hi)), tio.RescaleIntensity((0.0, 1.0), in_min_max=(lo, hi))])
    return chain(image).data.numpy().reshape(array.shape).astype(np.float32)


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that determines the preprocessed arrays (part of the cache key).

    ``input_size_voxels`` (x, y, z); ``field_of_view_mm`` of the ``body`` grid; ``hu_window`` (HU) and
    ``suv_range`` (SUV) mapped to [0, 1]; ``roi`` (``body`` or ``lesions``); for ``lesions``,
    ``roi_margin_mm`` added around the lesions on each side and ``roi_min_spacing_mm``, the finest
    voxel spacing allowed (a small tumour burden is not magnified beyond it).
    """

    input_size_voxels: tuple
    field_of_view_mm: tuple
    hu_window: tuple
    suv_range: tuple
    roi: str = "body"
    roi_margin_mm: float = 20.0
    roi_min_spacing_mm: float = 4.0

    @classmethod
    def from_profile(cls, profile, size=None, roi: str | None = None) -> "PreprocessSettings":
        """The profile's settings; ``size`` replaces its input size, ``roi`` its region of interest."""
        return cls(tuple(size or profile.input_size_voxels), tuple(profile.field_of_view_mm),
                   tuple(profile.hu_window), tuple(profile.suv_range), roi or profile.roi,
                   float(profile.roi_margin_mm), float(profile.roi_min_spacing_mm))

    def key(self) -> dict:
        d = {"version": PREPROCESS_VERSION}
        for k, v in self.__dict__.items():
            d[k] = list(v) if isinstance(v, tuple) else v
        if self.roi == "body":  # the lesion settings do not change a body grid
            d.pop("roi_margin_mm"), d.pop("roi_min_spacing_mm")
        return d


def preprocess(paths: dict, settings: PreprocessSettings, patient: str | None = None,
               box: tuple[InputBox, sitk.Image | None] | None = None) -> dict:
    """Preprocess one patient's images.

    Parameters
    ----------
    paths:
        ``{"ct": path, "pet": path, "mask": path, "organs": path}``; any may be missing or None.
    settings:
        Region of interest, input size and intensity scaling.
    box:
        What :func:`input_box` returned (the grid and the segmentation it was built from), when it
        was computed already; otherwise it is computed here.

    Returns
    -------
    dict
        ``ct`` and ``pet`` as float32 arrays in [0, 1], ``mask`` as uint8 (the lesion mask, or the
        PET threshold segmentation a ``lesions`` box fell back to), each (x, y, z) of shape
        ``settings.input_size_voxels``; ``suv`` (PET in SUV on the grid, float32) when a PET exists;
        ``organs`` (uint8 labels) when an organ label map is given; ``box``: the grid as JSON
        (see :func:`box_of`).
    """
    images = {m: read_image(p, m, patient) for m, p in paths.items() if p is not None}
    if "ct" not in images and "pet" not in images:
        raise ValueError(f"patient {patient!r}: neither a CT nor a PET to preprocess")
    box, segmentation = box or input_box(paths, settings, patient, images)
    if segmentation is not None:
        images["mask"] = segmentation
    arrays = resample_images(images, box.size_voxels, box.affine_ras())
    out = {}
    for modality, arr in arrays.items():
        if modality == "mask":
            out["mask"] = (arr > 0).astype(np.uint8)
        elif modality == "organs":
            out["organs"] = arr.astype(np.uint8)
        else:
            if modality == "pet":
                out["suv"] = arr.astype(np.float32)
            out[modality] = scale_intensity(arr, modality, settings.hu_window, settings.suv_range)
    out["box"] = np.array(json.dumps(box.to_record()))
    return out


def box_of(arrays: dict) -> dict:
    """The input-grid record stored with a patient's preprocessed arrays."""
    return json.loads(str(arrays["box"]))


def display_arrays(paths: dict, box: dict, size_voxels, patient: str | None = None) -> dict:
    """One patient's images on a finer grid over the same box as the network's input, for figures.

    ``box``: the input grid's record (:func:`box_of`); ``size_voxels``: the display grid's shape. The
    display grid covers exactly the input grid's extent (same centre, voxels ``extent / size``), so a
    map on the input grid upsampled to ``size_voxels`` (:func:`prrt.explain.upsample`) lies where it
    belongs. Returns ``ct`` (HU), ``suv`` and ``mask`` (uint8) for the images in ``paths``.
    """
    centre = np.array([box[f"centre_{a}_mm"] for a in "xyz"], float)
    extent = np.array([box[f"extent_{a}_mm"] for a in "xyz"], float)
    size = np.array([int(s) for s in size_voxels])
    spacing = extent / size
    origin = centre - (size - 1) / 2 * spacing
    images = {m: read_image(p, m, patient) for m, p in paths.items() if p is not None and m in ("ct", "pet", "mask")}
    arrays = resample_images(images, size, grid_affine_ras(origin, spacing))
    out = {}
    for m, a in arrays.items():
        out["suv" if m == "pet" else m] = (a > 0).astype(np.uint8) if m == "mask" else a.astype(np.float32)
    return out


# ---- cache --------------------------------------------------------------------------------------
_HASHES: dict[tuple, str] = {}


def file_sha256(path) -> str:
    """SHA-256 of a file's content (memoised by path, size and modification time)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


class ImageCache:
    """Preprocessed arrays on disk, keyed by the inputs' SHA-256, the settings and the input grid.

    For ``roi = "lesions"`` the patient's input box (:func:`input_box`, from the mask and the scans'
    headers) is computed before the lookup and is part of the key, so a change of the box rule is
    never served stale. A ``body`` grid is a function of the CT content, which the key holds already.
    ``hits`` and ``misses`` count lookups since the cache object was made.
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def key(self, paths: dict, settings: PreprocessSettings, box: InputBox | None = None) -> str:
        spec = {
            "files": {m: file_sha256(p) for m, p in sorted(paths.items()) if p is not None},
            "settings": settings.key(),
        }
        if box is not None:
            spec["box"] = box.to_record()
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, paths: dict, settings: PreprocessSettings, patient: str | None = None) -> dict:
        """The preprocessed arrays of one patient, computed and stored on a miss."""
        for modality, p in paths.items():
            if p is not None and not Path(p).is_file():
                raise ImageError("file not found", p, modality, patient)
        box = input_box(paths, settings, patient) if settings.roi == "lesions" else None
        key = self.key(paths, settings, box[0] if box else None)
        file = self.directory / key[:2] / f"{key}.npz"
        if file.is_file():
            try:
                with np.load(file) as z:
                    arrays = {k: z[k] for k in z.files}
                self.hits += 1
                return arrays
            except (OSError, ValueError):
                pass  # a damaged cache entry is recomputed
        arrays = preprocess(paths, settings, patient, box)
        self.misses += 1
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".npz.partial")
        os.close(fd)
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, file)  # atomic: a reader never sees half a file
        return arrays


def preprocess_cohort(cohort, profile, cache, patients=None, progress: bool = True, size=None,
                      roi: str | None = None) -> dict:
    """Preprocessed arrays for ``patients`` (default: all) of a cohort, through ``cache``.

    ``cache`` is an :class:`ImageCache` or its directory; ``size`` (voxels) replaces the profile's
    input size and ``roi`` its region of interest. Returns ``{pseudonym: arrays}`` (see
    :func:`preprocess`).
    """
    from tqdm.auto import tqdm

    settings = PreprocessSettings.from_profile(profile, size, roi)
    if not isinstance(cache, ImageCache):
        cache = ImageCache(cache)
    patients = list(cohort.data.index if patients is None else patients)
    out = {}
    desc = f"preprocessing images ({settings.roi})"
    for pid in tqdm(patients, desc=desc, unit="patient", disable=not progress):
        paths = {m: cohort.image_path(pid, m) for m in cohort.modalities}
        out[pid] = cache.get(paths, settings, patient=pid)
    return out


def input_boxes(arrays: dict) -> pd.DataFrame:
    """The input grid of every patient (``{pseudonym: arrays}``) as a table indexed by pseudonym."""
    df = pd.DataFrame.from_dict({p: box_of(a) for p, a in arrays.items()}, orient="index")
    df.index.name = "patient"
    return df
