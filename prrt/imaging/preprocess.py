"""The preprocessing chain from a patient's image files to the network's inputs, and the image cache.

Preprocessing (:func:`preprocess`), for one patient
    1. the input grid (:func:`prrt.imaging.boxes.input_box`): a grid of one spacing centred on the liver
       (``roi = "liver"``) or on the lesions (``roi = "lesions"``), or the profile's field of view around
       the body (``roi = "body"``);
    2. TorchIO (:func:`prrt.imaging.resample.resample_images`): CT, PET, lesion mask and organ labels
       resampled onto that grid by position in patient space;
    3. TorchIO (:func:`prrt.imaging.resample.scale_intensity`): the CT window (``hu_window``) and the PET
       range (``suv_range``, on the profile's ``suv_scale``) mapped to [0, 1].

    The result: the arrays (x, y, z) of the input size, the PET also in SUV, and the grid as a record
    (:func:`box_of`).

Caching
    :class:`ImageCache` stores the preprocessed arrays on disk under a key made of the SHA-256 of
    every input file, the settings and (for lesion boxes) the box, so a second run (or another
    notebook) does not redo the work, and a changed file or setting is never served stale. The box
    is stored with the arrays (:func:`box_of`).

:func:`preprocess_cohort` preprocesses the patients of a cohort through the cache; :func:`display_arrays`
puts a patient's images on a finer grid over the same box, for figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ..provenance import file_sha256
from ..timing import phase
from .boxes import InputBox, grid_affine_ras, input_box
from .io import ImageError, read_image
from .resample import resample_images, scale_intensity
from .settings import PreprocessSettings


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
            out[modality] = scale_intensity(arr, modality, settings.hu_window, settings.suv_range,
                                              settings.suv_scale)
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


class ImageCache:
    """Preprocessed arrays on disk, keyed by the inputs' SHA-256, the settings and the input grid.

    For ``roi = "liver"`` or ``"lesions"`` the patient's input box (:func:`input_box`, from the organ map,
    the mask and the scans' headers) is computed before the lookup and is part of the key, so a change of
    the box rule is never served stale. A ``body`` grid is a function of the CT content, which the key holds already.
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
        with phase("loading inputs"):
            return self._get(paths, settings, patient)

    def _get(self, paths: dict, settings: PreprocessSettings, patient: str | None) -> dict:
        for modality, p in paths.items():
            if p is not None and not Path(p).is_file():
                raise ImageError("file not found", p, modality, patient)
        box = input_box(paths, settings, patient) if settings.roi != "body" else None
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
        with phase("preprocessing"):
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
