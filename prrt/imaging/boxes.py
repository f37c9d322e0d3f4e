"""The input grid of one patient: the box of patient space that a network's input covers.

Every grid of a region of interest has one voxel spacing for every patient, so that a voxel means the
same millimetres to the network whatever the patient's anatomy (:func:`input_box`):

``roi = "liver"``
    ``input_size_voxels`` cubic voxels of ``roi_spacing_mm`` centred on the liver (label 1 of the organ
    map): an organ-level view that holds the liver's lesions whether or not they take up the tracer
    (receptor-negative metastases lie outside a lesion mask drawn on the SR-PET). A patient without a
    liver label falls back to the centre of the lesions, then to the body (:data:`ROI_SOURCES`).
``roi = "lesions"``
    the same grid centred on the box around every lesion voxel of the mask (on whichever grid it was
    drawn); a patient whose mask is missing or empty falls back to the PET threshold segmentation of
    :mod:`prrt.imaging.lesions`, and then to the body. Lesions farther from the centre than the grid
    reaches are cut, never squeezed onto coarser voxels; the box's note says how far they reached.
``roi = "body"``
    the profile's ``field_of_view_mm`` centred on the centroid of the body (:func:`body_centre_mm`:
    CT voxels above -500 HU, or PET voxels above 5 % of the 99th percentile without a CT).

Axes follow ITK's LPS orientation, positions are in mm; :class:`InputBox` holds the result and records
where its centre came from.

The box rule is hand-written because TorchIO's ``CropOrPad`` with a mask crops on one image's voxel grid;
the box here spans images on different grids and is sampled in one interpolation
(:mod:`prrt.imaging.resample`). A lesion mask none of whose lesion voxels lies inside the PET's or the
CT's field of view raises :class:`prrt.imaging.ImageError` naming the patient and the mask file. The
bounds (:func:`field_of_view_bounds_mm`, :func:`lesion_bounds_mm`, :func:`voxels_inside`) serve the
manifest's geometry checks too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .io import CT_AIR_THRESHOLD_HU, ImageError, read_header, read_image
from .lesions import LIVER as LIVER_LABEL
from .lesions import threshold_segmentation
from .resample import nonzero_index_ranges, resample_to
from .settings import PreprocessSettings

# ---- the input grid: body-centred or lesion-centred ----------------------------------------------
ROI_MODES = ("liver", "lesions", "body")

#: Where a box's centre came from, recorded per patient (see :func:`input_box`).
ROI_SOURCES = ("liver label", "lesion mask", "PET threshold", "body (no lesion found)", "body")


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


def lesion_bounds_mm(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """Axis-aligned (LPS) bounds in mm of the voxels > 0 of a label image, voxel edges included.

    Computed on the grid the mask was drawn on (PET, CT or any other), from the corners of the
    lesion voxels, so that no resampling can shrink a small lesion away. ``None`` if the mask is empty.
    """
    arr = sitk.GetArrayViewFromImage(mask) > 0  # (z, y, x)
    if not arr.any():
        return None
    ranges = [(first - 0.5, last + 0.5) for first, last in nonzero_index_ranges(arr)[::-1]]  # x, y, z
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


def fit_box(lo_mm, hi_mm, size_voxels, spacing_mm: float) -> tuple[np.ndarray, str]:
    """Centre of a grid of ``size_voxels`` cubic voxels of ``spacing_mm`` over the box ``[lo, hi]``, and a
    note saying how far the box reaches beyond the grid (empty when it fits).

    The grid keeps its spacing whatever the box: a larger box is cut at the grid's edges (the note
    says by how much), never squeezed onto coarser voxels.
    """
    lo, hi = np.asarray(lo_mm, float), np.asarray(hi_mm, float)
    beyond = (hi - lo) - np.asarray(size_voxels, float) * float(spacing_mm)
    note = ""
    if (beyond > 0).any():
        note = "lesions reach beyond the input by " + ", ".join(
            f"{a} {b / 2:.0f} mm each side" for a, b in zip("xyz", beyond) if b > 0)
    return (lo + hi) / 2, note


def liver_centre_mm(organs: sitk.Image) -> np.ndarray | None:
    """Centroid (LPS, mm) of the liver (label 1) of an organ map; ``None`` without liver voxels."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(organs) == LIVER_LABEL)  # (z, y, x)
    if idx.size == 0:
        return None
    c = idx.mean(axis=0)[::-1]
    return np.asarray(organs.TransformContinuousIndexToPhysicalPoint(c.tolist()))


def _pet_threshold_mask(pet: sitk.Image, organs: sitk.Image | None) -> tuple[sitk.Image, str]:
    """The PET threshold segmentation of :mod:`prrt.imaging.lesions`, as a label image on the PET grid."""
    suv = sitk.GetArrayViewFromImage(pet)
    organ_arr = None
    if organs is not None:
        organ_arr = resample_to(organs, pet, "organs").transpose(2, 1, 0)
    seg, rule = threshold_segmentation(suv, organ_arr)
    image = sitk.GetImageFromArray(seg.astype(np.uint8))
    image.CopyInformation(pet)
    return image, rule


def _body_box(settings: PreprocessSettings, images: dict, headers: dict, roi: str, source: str,
              note: str = "") -> InputBox:
    ct, pet = images.get("ct"), None
    if ct is None and "ct" in headers:
        ct = read_image(headers["ct"]["path"], "ct")
    if ct is None:
        pet = images.get("pet")
        if pet is None:
            pet = read_image(headers["pet"]["path"], "pet")
    centre = body_centre_mm(ct, pet)
    if roi != "body":  # the fallback keeps the region's one spacing
        return _grid_box(settings, roi, source, centre, note)
    size = np.asarray(settings.input_size_voxels, float)
    spacing = np.asarray(settings.field_of_view_mm, float) / size
    return InputBox(roi, source, tuple(map(float, centre)), tuple(map(float, spacing)),
                    tuple(int(s) for s in size), note=note)


def _grid_box(settings: PreprocessSettings, roi: str, source: str, centre, note: str = "",
              bounds=None) -> InputBox:
    """A grid of the input size and the region's one spacing (``roi_spacing_mm``) around ``centre``."""
    lo, hi = (None, None) if bounds is None else (tuple(map(float, bounds[0])), tuple(map(float, bounds[1])))
    return InputBox(roi, source, tuple(map(float, centre)), (float(settings.roi_spacing_mm),) * 3,
                    tuple(int(s) for s in settings.input_size_voxels), lo, hi, note)


def _lesion_segmentation(paths: dict, images: dict, headers: dict, patient: str | None):
    """The lesions a box is built from: ``(segmentation, bounds, source, note)``.

    The manifest's mask when it has lesion voxels (checked to overlap the scans), else the PET threshold
    segmentation, else none (``bounds`` None)."""
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
        segmentation, rule = _pet_threshold_mask(pet, _organs(paths, images, patient))
        bounds = lesion_bounds_mm(segmentation)
        source, note = "PET threshold", f"{note}; {rule}"
        if bounds is None:
            segmentation, note = None, f"{note}: no voxel above the threshold"
    return segmentation, bounds, source, note


def _organs(paths: dict, images: dict, patient: str | None) -> sitk.Image | None:
    organs = images.get("organs")
    if organs is None and "organs" in paths:
        organs = images["organs"] = read_image(paths["organs"], "organs", patient)
    return organs


def input_box(paths: dict, settings: PreprocessSettings, patient: str | None = None,
              images: dict | None = None) -> tuple[InputBox, sitk.Image | None]:
    """The input grid of one patient, and the lesion segmentation of its mask channel (if any).

    ``roi = "body"``: the profile's ``field_of_view_mm`` centred on the body centroid; the segmentation is
    the manifest's mask.

    ``roi = "liver"`` and ``roi = "lesions"``: ``input_size_voxels`` cubic voxels of ``roi_spacing_mm``
    centred on the liver (label 1 of the organ map; ``liver`` only) or on the box around every lesion voxel
    (:func:`fit_box`). The lesions are the manifest's mask; a patient whose mask is missing or empty falls
    back to the PET threshold segmentation of :mod:`prrt.imaging.lesions` (PERCIST-like with a liver
    reference, else SUV ≥ 10). Without a liver label a ``liver`` box is centred on the lesions, and without
    lesions either box on the body; ``source`` records which (:data:`ROI_SOURCES`).

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

    segmentation, bounds, source, note = _lesion_segmentation(paths, images, headers, patient)
    if settings.roi == "liver":
        organs = _organs(paths, images, patient)
        centre = liver_centre_mm(organs) if organs is not None else None
        if centre is not None:
            return _grid_box(settings, "liver", "liver label", centre, note.lstrip("; "), bounds), segmentation
        note = ("no organ map" if organs is None else "no liver in the organ map") + (f"; {note}" if note else "")
    if bounds is None:
        return _body_box(settings, images, headers, settings.roi, "body (no lesion found)", note), segmentation
    centre, cut = fit_box(bounds[0], bounds[1], settings.input_size_voxels, settings.roi_spacing_mm)
    note = "; ".join(n for n in (note.lstrip("; "), cut) if n)
    return _grid_box(settings, settings.roi, source, centre, note, bounds), segmentation
