"""Reading 3D images (NIfTI, NRRD, MetaImage) and checking their values.

NIfTI (``.nii``, ``.nii.gz``) is read with nibabel, NRRD (``.nrrd``, ``.nhdr``) and MetaImage
(``.mha``, ``.mhd``) with SimpleITK; each image keeps its position in patient space (origin,
spacing, direction), so PET, CT and masks on different grids line up by their affines.
:func:`read_header` reads only the geometry (size, spacing in mm, origin, direction); :func:`read_image`
reads the voxels too and checks them (:func:`check_values`).

Checks: missing, unreadable, corrupt or truncated files, 2D or 4D images, sheared affines, empty (constant)
images, NaN or infinite values, PET values that look like activity concentration (Bq/mL) rather than SUV,
CT values that are not Hounsfield units, and label maps (lesion mask, organs) that are not a few
non-negative integer labels raise :class:`ImageError` naming the patient, the image and the file.

Resampling is in :mod:`prrt.imaging.resample`, the preprocessing chain to the network's inputs in
:mod:`prrt.imaging.preprocess`.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: The supported file types, each with the ITK reader that reads it (named, so that ITK does not ask every other format
#: whether it can, :func:`_reader`)
_ITK_IO = {".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO", ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO",
           ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}
SUPPORTED_SUFFIXES = tuple(_ITK_IO)

#: SUV above this at the 95th percentile of positive voxels means the PET is not in SUV.
PET_SUV_P95_LIMIT = 200.0
CT_AIR_THRESHOLD_HU = -500.0
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


#: SimpleITK's file readers are not safe to run at once in several threads (SimpleITK issues #74 and #805): asked to read
#: a file, ITK asks every file format whether it can, HDF5 among them, whose library is not thread-safe. A process of
#: ``make test`` aborted in ``ReadImageInformation`` while the image check read files on two threads (2026-12-06; the
#: probable cause, not reproduced). Files are read by one thread at a time through SimpleITK (a header takes about 2 ms;
#: reading the voxels of a NIfTI file, nibabel's work, is not held up).
_ITK_FILES = threading.Lock()


def _reader(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    io = next((v for k, v in _ITK_IO.items() if path.name.lower().endswith(k)), None)
    if io is not None:
        reader.SetImageIO(io)
    return reader


def read_header(path, modality: str | None = None, patient: str | None = None) -> dict:
    """Read only the header of an image: size, spacing (mm), origin, direction.

    Raises :class:`ImageError` if the file is missing, unreadable, or not a 3D volume.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError("file not found", path, modality, patient)
    _check_suffix(path, modality, patient)
    reader = _reader(path)
    try:
        with _ITK_FILES:
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
    if not lines:
        return repr(exc)
    # without ITK's object address ("ITK ERROR: NiftiImageIO(0x5605d5acc570): "), which differs from read to read
    return re.sub(r"^(ITK ERROR: \w+\(0x[0-9a-fA-F]+\): |sitk::ERROR: )", "", lines[-1])


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


def read_image(path, modality: str | None = None, patient: str | None = None, header_read: bool = False) -> sitk.Image:
    """Read a 3D image (NIfTI, NRRD or MHA) and check its values.

    ``modality`` (``"ct"``, ``"pet"`` or ``"mask"``) selects the value checks: CT must be in
    Hounsfield units, PET in SUV (not Bq/mL); no image may be constant. ``header_read``: the caller has just read this
    file's header with :func:`read_header` (its checks are not made twice).
    """
    path = Path(path)
    if not header_read:
        read_header(path, modality, patient)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        image = _read_nifti(path, modality, patient)
    else:
        try:
            with _ITK_FILES:
                image = _reader(path).Execute()
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
