"""The image checks of a manifest: the files exist and read as 3D volumes in the right units, and each
patient's scans and masks overlap in patient space.

:func:`check_images`, as far as ``check_images`` says: ``"exists"`` (the files exist), ``"header"`` (each
file's header is read) or ``"full"`` (every voxel is read and checked, :func:`prrt.imaging.read_image`);
a patient without a CT, a PET, a lesion mask or an organ map is a warning that says what follows (the
models of a scan leave out the patients without it, the fusions predict them without it), a manifest
that names a scan no patient has is an error; the manifest's
``ct_pretraining`` files must exist. :func:`check_geometry`: the fields of view of a patient's PET, CT,
mask and organ map overlap (from the headers), and, in ``"full"`` mode, the lesion mask has lesion voxels
inside each scan.

Both run as checks of :func:`prrt.data.load_cohort` (:mod:`prrt.data.load`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..imaging import (
    ImageError,
    each_patient,
    field_of_view_bounds_mm,
    lesion_bounds_mm,
    read_header,
    read_image,
    voxels_inside,
)
from .checks import WARNING, Draft
from .manifest import MODALITIES, Problem


def _header_problem(d: Draft, i: int, modality: str, col: str, path: Path) -> Problem | None:
    try:
        d.headers[i, modality] = read_header(path, modality=modality, patient=d.ids[i])
        if d.check_images == "full":
            image = read_image(path, modality=modality, patient=d.ids[i], header_read=True)
            if modality == "mask":  # the scans' headers are read already (MODALITIES puts them first)
                bounds = lesion_bounds_mm(image)
                d.lesions[i] = {"bounds": bounds, "inside": {} if bounds is None else {
                    m: voxels_inside(image, d.headers[i, m]) for m in ("pet", "ct") if (i, m) in d.headers}}
    except ImageError as exc:
        return d.problem(exc.reason, i, col, file=str(path))
    return None


def check_images(d: Draft) -> list[Problem]:
    """Image files exist and read as 3D volumes in the right units; every patient has a CT or a PET.

    The files are read on threads, a patient per thread (:func:`prrt.imaging.each_patient`; reading and
    decompressing leave Python's lock), each patient's in the order of ``MODALITIES`` (scans before masks); the
    problems come in the order of a loop over the modalities and rows."""
    columns = {m: d.image_columns[m] for m in MODALITIES if d.image_columns.get(m) is not None}
    paths: dict[str, list] = {}
    found: dict[tuple[str, int], Problem | None] = {}  # (modality, row) -> its problem
    to_read: dict[int, list] = {}  # row -> [(modality, column, path)] in the order of MODALITIES
    for modality, col in columns.items():
        paths[modality] = []
        for i, v in enumerate(d.df[col]):
            if pd.isna(v) or str(v).strip() == "":
                paths[modality].append(None)
                continue
            p = (d.image_root / str(v).strip()).resolve()
            paths[modality].append(str(p))
            if d.check_images == "none":
                continue
            if not p.is_file():
                found[modality, i] = d.problem(f"{modality} image file not found", i, col, file=str(p))
            elif d.check_images in ("header", "full"):
                to_read.setdefault(i, []).append((modality, col, p))

    def read(i: int) -> list:
        return [(m, i, _header_problem(d, i, m, col, p)) for m, col, p in to_read[i]]

    for per_patient in each_patient(read, sorted(to_read), "checking images", progress=False):
        for m, i, problem in per_patient:
            found[m, i] = problem
    problems: list[Problem] = []
    for modality, col in columns.items():
        paths_ = paths[modality]
        blank = [i for i, p in enumerate(paths_) if p is None]
        problems += [found[modality, i] for i in range(len(paths_)) if found.get((modality, i)) is not None]
        d.image_paths[modality] = paths_
        if modality in ("ct", "pet") and blank:
            # the splits stay shared: a model of this scan leaves these patients out, the fusions predict them without
            name = modality.upper()
            problems.append(Problem(f"{len(blank)} of {len(d.df)} patients have no {name} (empty cell): "
                                    f"{d.rows_text(blank)}; the {name} models are fitted and scored without them "
                                    f"(the tables say on how many patients), the fusions predict them without "
                                    f"{name}" + (" and its lesion features" if modality == "pet" else ""),
                                    column=col, file=d.tfile, severity=WARNING))
            if len(blank) == len(d.df):
                problems.append(Problem(f"no patient has a {name} although the manifest names {name} images: "
                                        f"leave '{modality}' out of 'images'", column=col, file=d.tfile))
        elif blank:
            effect = {"mask": "their input box is placed around a PET threshold segmentation instead",
                      "organs": "no tumour-to-liver or tumour-to-spleen ratio, an input box around the lesions "
                                "instead of the liver, and no liver in the networks' mask channel (a difference "
                                "between patients that a network can learn)"}[modality]
            problems.append(Problem(f"{len(blank)} of {len(d.df)} patients have no {modality} image (empty cell): "
                                    f"{d.rows_text(blank)}; {effect}", column=col, file=d.tfile, severity=WARNING))
    base = d.path.parent
    for key, value in (d.doc.get("ct_pretraining") or {}).items():
        if key == "key_prefixes":
            d.pretraining[key] = list(value)
            continue
        p = (base / value).resolve()
        if not p.exists():
            problems.append(Problem(f"ct_pretraining {key} not found", column=f"ct_pretraining.{key}", file=str(p)))
        d.pretraining[key] = p
    return problems


def box_gap_mm(a: tuple, b: tuple) -> float:
    """Distance in mm between two axis-aligned boxes ``(lo, hi)`` (0 when they overlap)."""
    gap = np.maximum(0.0, np.maximum(np.asarray(b[0]) - np.asarray(a[1]), np.asarray(a[0]) - np.asarray(b[1])))
    return float(np.linalg.norm(gap))


def check_geometry(d: Draft) -> list[Problem]:
    """PET, CT and masks of a patient overlap in patient space; a mask has lesion voxels inside the scans.

    From the headers (``check_images`` "header" or "full"); the mask's own voxels only in "full" mode.
    """
    problems: list[Problem] = []
    for i in range(len(d.df)):
        boxes = {m: field_of_view_bounds_mm(h) for (row, m), h in d.headers.items() if row == i}
        for a, b in (("pet", "ct"), ("mask", "pet"), ("mask", "ct"), ("organs", "pet"), ("organs", "ct")):
            if a in boxes and b in boxes:
                gap = box_gap_mm(boxes[a], boxes[b])
                if gap > 0:
                    problems.append(d.problem(
                        f"the {a.upper() if a in ('ct', 'pet') else a} and the {b.upper()} do not overlap in "
                        f"patient space: they are {gap:.0f} mm apart. Do both belong to this patient and scan, and "
                        "were their origins and orientations kept on export?", i, d.image_columns[a],
                        file=d.image_paths[a][i]))
        lesions = d.lesions.get(i)
        if lesions is None:
            continue
        if lesions["bounds"] is None:
            problems.append(d.problem("the lesion mask has no lesion voxel (every voxel is 0): the input box will be "
                                      "placed around a PET threshold segmentation instead", i,
                                      d.image_columns["mask"], file=d.image_paths["mask"][i], severity=WARNING))
            continue
        for m, (inside, total) in lesions["inside"].items():
            if inside == 0 and box_gap_mm(boxes["mask"], boxes[m]) == 0:  # (apart altogether: said above)
                gap = box_gap_mm(lesions["bounds"], boxes[m])
                problems.append(d.problem(
                    f"none of the lesion mask's {total} lesion voxels lies inside the {m.upper()}'s field of "
                    f"view (the lesions are {gap:.0f} mm outside it): is it this patient's mask?", i,
                    d.image_columns["mask"], file=d.image_paths["mask"][i]))
    return problems
