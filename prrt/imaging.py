"""Image loading and preprocessing for SR-PET and CT.

Reading
    NIfTI (``.nii``, ``.nii.gz``) is read with nibabel, NRRD (``.nrrd``, ``.nhdr``) and MetaImage
    (``.mha``, ``.mhd``) with SimpleITK; each image keeps its position in patient space (origin,
    spacing, direction), so PET, CT and masks on different grids line up by their affines.

Preprocessing (:func:`preprocess`), for one patient
    1. a common target grid is defined: the profile's ``field_of_view_mm`` sampled at
       ``input_size_voxels`` (so the spacing is ``field_of_view_mm / input_size_voxels``), axes
       aligned with the patient (ITK's LPS orientation), centred on the centroid of the body
       (CT voxels above -500 HU, or PET voxels above 5 % of the 99th percentile without a CT);
    2. CT and PET are smoothed with a Gaussian that matches the target resolution (anti-aliasing,
       only along axes that get coarser) and resampled onto that grid with linear interpolation;
       the lesion mask, on whichever grid it was drawn, is resampled with nearest neighbour;
    3. CT is windowed (``hu_window``) and PET clipped to ``suv_range``, both mapped to [0, 1].

Caching
    :class:`ImageCache` stores the preprocessed arrays on disk under a key made of the SHA-256 of
    every input file and of the settings, so a second run (or another notebook) does not redo the
    work, and a changed file or setting is never served stale.

Checks
    Unreadable or corrupt files, 2D or 4D images, empty (constant) images, PET values that look like
    activity concentration (Bq/mL) rather than SUV, and CT values that are not Hounsfield units
    raise :class:`ImageError` naming the patient, the image and the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Bumped whenever preprocessing changes, so that cached arrays of older code are not reused.
PREPROCESS_VERSION = 2
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


# ---- resampling ---------------------------------------------------------------------------------
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


def _antialias(image: sitk.Image, target_spacing) -> sitk.Image:
    """Gaussian smoothing so that a coarser target grid does not alias (FWHM matching)."""
    src = np.asarray(image.GetSpacing())
    # image axes may be permuted relative to the target; compare per-axis physical extents
    tgt = np.asarray(target_spacing)
    direction = np.abs(np.asarray(image.GetDirection()).reshape(3, 3))
    tgt_on_axes = direction.T @ tgt  # target spacing along each image axis (axis-aligned case)
    sigma = np.sqrt(np.clip(tgt_on_axes**2 - src**2, 0, None)) / 2.3548
    if np.all(sigma < 0.25 * src):
        return image
    # a discrete Gaussian accepts zero width along axes that do not get coarser
    return sitk.DiscreteGaussian(sitk.Cast(image, sitk.sitkFloat32), (sigma**2).tolist(), 32, 0.01, True)


def resample_to(image: sitk.Image, reference: sitk.Image, modality: str) -> np.ndarray:
    """Resample ``image`` onto ``reference`` by position in patient space; returns (x, y, z) array."""
    if modality in LABEL_MAPS:
        interp, src = sitk.sitkNearestNeighbor, image
        out_type = sitk.sitkUInt8
    else:
        interp, src = sitk.sitkLinear, _antialias(image, reference.GetSpacing())
        out_type = sitk.sitkFloat32
    res = sitk.Resample(src, reference, sitk.Transform(), interp, float(FILL_VALUE[modality]), out_type)
    return np.ascontiguousarray(sitk.GetArrayFromImage(res).transpose(2, 1, 0))


def scale_intensity(array: np.ndarray, modality: str, hu_window, suv_range) -> np.ndarray:
    """CT: window ``hu_window`` (HU) → [0, 1]; PET: clip ``suv_range`` (SUV) → [0, 1]."""
    lo, hi = hu_window if modality == "ct" else suv_range
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that determines the preprocessed arrays (part of the cache key)."""

    input_size_voxels: tuple
    field_of_view_mm: tuple
    hu_window: tuple
    suv_range: tuple

    @classmethod
    def from_profile(cls, profile, size=None) -> "PreprocessSettings":
        """The profile's settings; ``size`` replaces its input size (e.g. its display size)."""
        return cls(tuple(size or profile.input_size_voxels), tuple(profile.field_of_view_mm),
                   tuple(profile.hu_window), tuple(profile.suv_range))

    def key(self) -> dict:
        return {"version": PREPROCESS_VERSION, **{k: list(v) for k, v in self.__dict__.items()}}


def preprocess(paths: dict, settings: PreprocessSettings, patient: str | None = None) -> dict:
    """Preprocess one patient's images.

    Parameters
    ----------
    paths:
        ``{"ct": path, "pet": path, "mask": path}``; any may be missing or None.
    settings:
        Target grid and intensity scaling.

    Returns
    -------
    dict
        ``ct`` and ``pet`` as float32 arrays in [0, 1], ``mask`` as uint8, each (x, y, z) of shape
        ``settings.input_size_voxels``; ``suv`` (PET in SUV on the grid, float32) when a PET exists;
        ``organs`` (uint8 labels) when an organ label map is given.
    """
    images = {m: read_image(p, m, patient) for m, p in paths.items() if p is not None}
    if "ct" not in images and "pet" not in images:
        raise ValueError(f"patient {patient!r}: neither a CT nor a PET to preprocess")
    centre = body_centre_mm(images.get("ct"), images.get("pet"))
    ref = target_grid(centre, settings.input_size_voxels, settings.field_of_view_mm)
    out = {}
    for modality, image in images.items():
        arr = resample_to(image, ref, modality)
        if modality == "mask":
            out["mask"] = (arr > 0).astype(np.uint8)
        elif modality == "organs":
            out["organs"] = arr.astype(np.uint8)
        else:
            if modality == "pet":
                out["suv"] = arr.astype(np.float32)
            out[modality] = scale_intensity(arr, modality, settings.hu_window, settings.suv_range)
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
    """Preprocessed arrays on disk, keyed by the inputs' SHA-256 and the settings.

    ``hits`` and ``misses`` count lookups since the cache object was made.
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def key(self, paths: dict, settings: PreprocessSettings) -> str:
        spec = {
            "files": {m: file_sha256(p) for m, p in sorted(paths.items()) if p is not None},
            "settings": settings.key(),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def get(self, paths: dict, settings: PreprocessSettings, patient: str | None = None) -> dict:
        """The preprocessed arrays of one patient, computed and stored on a miss."""
        for modality, p in paths.items():
            if p is not None and not Path(p).is_file():
                raise ImageError("file not found", p, modality, patient)
        key = self.key(paths, settings)
        file = self.directory / key[:2] / f"{key}.npz"
        if file.is_file():
            try:
                with np.load(file) as z:
                    arrays = {k: z[k] for k in z.files}
                self.hits += 1
                return arrays
            except (OSError, ValueError):
                pass  # a damaged cache entry is recomputed
        arrays = preprocess(paths, settings, patient)
        self.misses += 1
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".npz.partial")
        os.close(fd)
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, file)  # atomic: a reader never sees half a file
        return arrays


def preprocess_cohort(cohort, profile, cache, patients=None, progress: bool = True, size=None) -> dict:
    """Preprocessed arrays for ``patients`` (default: all) of a cohort, through ``cache``.

    ``cache`` is an :class:`ImageCache` or its directory; ``size`` (voxels) replaces the profile's
    input size. Returns ``{pseudonym: arrays}`` (see :func:`preprocess`).
    """
    from tqdm.auto import tqdm

    settings = PreprocessSettings.from_profile(profile, size)
    if not isinstance(cache, ImageCache):
        cache = ImageCache(cache)
    patients = list(cohort.data.index if patients is None else patients)
    out = {}
    for pid in tqdm(patients, desc="preprocessing images", unit="patient", disable=not progress):
        paths = {m: cohort.image_path(pid, m) for m in cohort.modalities}
        out[pid] = cache.get(paths, settings, patient=pid)
    return out
