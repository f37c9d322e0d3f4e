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
    is stored with the arrays (:func:`box_of`), and beside them under the inputs' key and the source of
    the code that draws it (:data:`BOX_RULE`), so that a lookup does not read the masks again.

:func:`preprocess_cohort` preprocesses the patients of a cohort through the cache; :func:`display_arrays`
puts a patient's images on a finer grid over the same box, for figures.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ..provenance import file_sha256
from ..timing import phase
from . import boxes as _boxes_module
from . import io as _io_module
from . import lesions as _lesions_module
from . import resample as _resample_module
from . import settings as _settings_module
from .boxes import InputBox, grid_affine_ras, input_box
from .io import ImageError, read_image
from .resample import resample_images, scale_intensity
from .settings import PreprocessSettings
from .threads import each_patient


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


#: The SHA-256 of the source of the modules that draw a patient's input box (:func:`input_box`: the box rules, the
#: fallback lesion segmentation, the image reader, the resampling they use, the settings): a stored box is looked up
#: under it, so that a box drawn by other code is never served.
BOX_RULE = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (
    _boxes_module, _lesions_module, _io_module, _resample_module, _settings_module))).hexdigest()


class ImageCache:
    """Preprocessed arrays on disk, keyed by the inputs' SHA-256, the settings and the input grid.

    For ``roi = "liver"`` or ``"lesions"`` the patient's input box (:func:`input_box`, from the organ map,
    the mask and the scans' headers) is part of the key, so a change of the box rule is never served stale.
    The box is computed once and stored beside the arrays (``boxes/``) under the SHA-256 of the inputs, the
    settings and :data:`BOX_RULE`; a later lookup reads it from there instead of reading the masks again.
    A ``body`` grid is a function of the CT content, which the key holds already.
    ``hits`` and ``misses`` count lookups of the arrays since the cache object was made.
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0
        self._count = threading.Lock()  # preprocess_cohort computes patients on several threads

    def key(self, paths: dict, settings: PreprocessSettings, box: InputBox | dict | None = None) -> str:
        """The arrays' key; ``box``: the input grid, or its record (:meth:`InputBox.to_record`)."""
        spec = {
            "files": {m: file_sha256(p) for m, p in sorted(paths.items()) if p is not None},
            "settings": settings.key(),
        }
        if box is not None:
            spec["box"] = box.to_record() if isinstance(box, InputBox) else box
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, paths: dict, settings: PreprocessSettings, patient: str | None = None) -> dict:
        """The preprocessed arrays of one patient, computed and stored on a miss."""
        with phase("loading inputs"):
            return self._get(paths, settings, patient)

    def _get(self, paths: dict, settings: PreprocessSettings, patient: str | None) -> dict:
        arrays = self.find(paths, settings, patient)
        if arrays is None:
            with phase("preprocessing"):
                arrays = self.compute(paths, settings, patient)
        return arrays

    def find(self, paths: dict, settings: PreprocessSettings, patient: str | None = None) -> dict | None:
        """The stored arrays of one patient, or None when they (or, for a liver or lesion grid, its stored box)
        are not in the cache; counts a hit when found."""
        for modality, p in paths.items():
            if p is not None and not Path(p).is_file():
                raise ImageError("file not found", p, modality, patient)
        record = None
        if settings.roi != "body":
            record = self._read_box(paths, settings)
            if record is None:
                return None
        return self._load(self.key(paths, settings, record))

    def _load(self, key: str) -> dict | None:
        file = self._file(key)
        if file.is_file():
            try:
                with np.load(file) as z:
                    arrays = {k: z[k] for k in z.files}
                with self._count:
                    self.hits += 1
                return arrays
            except (OSError, ValueError):
                pass  # a damaged cache entry is recomputed
        return None

    def compute(self, paths: dict, settings: PreprocessSettings, patient: str | None = None) -> dict:
        """What :meth:`find` did not find: the patient's box drawn (and stored) if it was not stored, then the
        arrays under it read if stored (a hit), else preprocessed and stored (a miss)."""
        record, box = None, None
        if settings.roi != "body":
            record = self._read_box(paths, settings)
            if record is None:
                box = input_box(paths, settings, patient)
                text = json.dumps(box[0].to_record(), sort_keys=True, default=str)
                _write_atomic(self._box_file(paths, settings), text.encode())
                record = json.loads(text)
                arrays = self._load(self.key(paths, settings, record))
                if arrays is not None:
                    return arrays
        arrays = preprocess(paths, settings, patient, box)
        with self._count:
            self.misses += 1
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        _write_atomic(self._file(self.key(paths, settings, record)), buffer.getvalue())
        return arrays

    def _file(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def _box_file(self, paths: dict, settings: PreprocessSettings) -> Path:
        """Where the patient's input box is stored: under the inputs' key and :data:`BOX_RULE`."""
        spec = {"files": self.key(paths, settings), "rule": BOX_RULE}
        name = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        return self.directory / "boxes" / name[:2] / f"{name}.json"

    def _read_box(self, paths: dict, settings: PreprocessSettings) -> dict | None:
        file = self._box_file(paths, settings)
        try:
            return json.loads(file.read_text())
        except (OSError, ValueError):  # not stored yet, or damaged: drawn again
            return None


def _write_atomic(file: Path, content: bytes) -> None:
    """Write ``content`` to ``file`` so that a reader never sees half of it (a temporary file, then a rename)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".partial")
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    os.replace(tmp, file)


def preprocess_cohort(cohort, profile, cache, patients=None, progress: bool = True, size=None,
                      roi: str | None = None, threads: int | None = None) -> dict:
    """Preprocessed arrays for ``patients`` (default: all) of a cohort, through ``cache``.

    ``cache`` is an :class:`ImageCache` or its directory; ``size`` (voxels) replaces the profile's
    input size and ``roi`` its region of interest. The patients the cache holds are read here; the others are
    preprocessed on ``threads`` threads (:func:`prrt.imaging.threads.each_patient`). Returns ``{pseudonym: arrays}``
    (see :func:`preprocess`) in the order of ``patients``.
    """
    settings = PreprocessSettings.from_profile(profile, size, roi)
    if not isinstance(cache, ImageCache):
        cache = ImageCache(cache)
    patients = list(cohort.data.index if patients is None else patients)
    paths = {pid: {m: cohort.image_path(pid, m) for m in cohort.modalities} for pid in patients}
    found = {}
    with phase("loading inputs"):
        for pid in patients:
            arrays = cache.find(paths[pid], settings, pid)
            if arrays is not None:
                found[pid] = arrays
    todo = [pid for pid in patients if pid not in found]
    if todo:
        with phase("preprocessing"):
            done = each_patient(lambda pid: cache.compute(paths[pid], settings, pid), todo,
                                f"preprocessing images ({settings.roi})", progress, threads)
        found.update(zip(todo, done))
    return {pid: found[pid] for pid in patients}


def input_boxes(arrays: dict) -> pd.DataFrame:
    """The input grid of every patient (``{pseudonym: arrays}``) as a table indexed by pseudonym."""
    df = pd.DataFrame.from_dict({p: box_of(a) for p, a in arrays.items()}, orient="index")
    df.index.name = "patient"
    return df
