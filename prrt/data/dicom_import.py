"""DICOM import: a hospital's PET/CT export to NIfTI images in SUV and HU, lesion masks, and a manifest.

``prrt import-dicom SRC --out DIR`` walks a folder of DICOM files (any layout, any file names), groups
them by patient, study and series, picks each patient's PET and CT series
(:func:`prrt.data.dicom_scan.choose_series`; the rules are printed, and ``--pet-series`` / ``--ct-series``
/ ``--study`` override them), and writes

``DIR/images/<patient>/pet.nii.gz``
    the PET in body-weight SUV (:func:`prrt.data.dicom_suv.suv_factor`: the vendor-neutral formula, with
    every tag it needs checked; anything missing or implausible is an error naming the patient, the
    series and the tag);
``DIR/images/<patient>/ct.nii.gz``
    the CT in HU;
``DIR/images/<patient>/mask.nii.gz``
    the lesion mask from an RTSTRUCT (contours rasterised on the slices of the series they were drawn on,
    :func:`rasterise_rtstruct`) or a DICOM-SEG (highdicom), on the grid of the series they reference;
    the ROIs or segments whose name matches ``--roi`` (default: all of them) are united;
``DIR/cohort.csv``, ``DIR/manifest.yaml``
    one row per patient, merged with the clinical table (``--table``) by patient ID, and a manifest
    (endpoint, laboratory values and clinical columns from ``--template``, a manifest of the same study);
``DIR/import-report.json``
    what was chosen for each patient (by pseudonym), the SUV settings, and the list of header fields
    that were read.

Nothing is left in ``DIR`` unless every patient was imported (it is written in a staging folder beside
it). Reading the export, choosing the series and reading a series as one volume are in
:mod:`prrt.data.dicom_scan`.

Privacy: only the header fields in :data:`FIELDS_READ` are read (``dcmread(specific_tags=...)``). Patients
are written under pseudonyms (``D001``, … in the order of a salted hash of the ID) unless ``--id-map`` gives
each DICOM patient ID the ID to use; the key is written only where ``--key`` says, never into ``--out``.
Nothing else of the headers (names, dates of birth, accession numbers, descriptions, UIDs) reaches the output.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .dicom_scan import (
    FIELDS_READ,
    Choice,
    DicomImportError,
    OffSlice,
    choose_series,
    matches_pattern,
    read,
    read_volume,
    scan,
)
from .dicom_suv import suv_factor
from .privacy import pseudonymise


# ---- masks ------------------------------------------------------------------------------------------
def rasterise_rtstruct(ds, volume, roi_pattern: str | None, where: str) -> tuple[np.ndarray, list[str]]:
    """The union of the ROIs of an RTSTRUCT whose name matches ``roi_pattern`` (all when None), on the grid of
    ``volume`` (the series the contours were drawn on); and the names of those ROIs.

    Each closed planar contour must lie on one slice of the volume (within a fifth of the slice spacing); it is
    filled on that slice with the even-odd rule, so a contour inside another on the same slice is a hole. The
    polygon is tested against the voxel centres (:class:`matplotlib.path.Path`)."""
    from matplotlib.path import Path as Polygon

    names = {int(r.ROINumber): str(r.get("ROIName", "")) for r in ds.get("StructureSetROISequence", [])}
    chosen = {n for n, name in names.items() if matches_pattern(roi_pattern, name)}
    if not chosen:
        raise DicomImportError(f"{where}: no ROI name matches {roi_pattern!r}; the ROIs are: "
                               + ", ".join(sorted(names.values())))
    shape = volume.spatial_shape
    mask = np.zeros(shape, bool)
    rows, cols = np.mgrid[0:shape[1], 0:shape[2]]
    centres = np.column_stack([rows.ravel(), cols.ravel()])
    for roi in ds.get("ROIContourSequence", []):
        if int(roi.ReferencedROINumber) not in chosen:
            continue
        per_slice: dict[int, np.ndarray] = {}
        for contour in roi.get("ContourSequence", []):
            kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR"))
            if kind == "POINT":
                continue
            if kind != "CLOSED_PLANAR":
                raise DicomImportError(f"{where}: ROI {names.get(int(roi.ReferencedROINumber))!r} has a {kind} contour; "
                                       "only closed planar contours can be filled")
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            idx = volume.map_reference_to_indices(points, round_output=False)  # (slice, row, column), continuous
            k = np.round(idx[:, 0])
            if np.ptp(idx[:, 0]) > 0.2 or np.abs(idx[:, 0] - k).max() > 0.2:
                raise OffSlice(f"{where}: a contour of ROI {names.get(int(roi.ReferencedROINumber))!r} does not lie on a "
                               "slice of the series it was drawn on (oblique, or between its slices)")
            k = int(k[0])
            if not 0 <= k < shape[0]:
                continue  # outside the volume
            inside = Polygon(idx[:, 1:]).contains_points(centres).reshape(shape[1:])
            per_slice[k] = per_slice.get(k, np.zeros(shape[1:], bool)) ^ inside
        for k, filled in per_slice.items():
            mask[k] |= filled
    return mask, sorted(names[n] for n in chosen)


def seg_mask(path: Path, volume, roi_pattern: str | None, where: str) -> tuple[np.ndarray, list[str]]:
    """The union of the segments of a DICOM-SEG whose label matches ``roi_pattern`` (all when None), on the grid of
    ``volume`` (the series it was drawn on): highdicom reads the segments as a volume in patient coordinates, and
    each voxel of ``volume`` takes the value of the segmentation voxel at its centre."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    labels = {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in seg.SegmentSequence}
    chosen = sorted(n for n, name in labels.items() if matches_pattern(roi_pattern, name))
    if not chosen:
        raise DicomImportError(f"{where}: no segment label matches {roi_pattern!r}; the segments are: "
                               + ", ".join(sorted(labels.values())))
    try:
        seg_volume = seg.get_volume(segment_numbers=chosen, combine_segments=True, relabel=True)
    except Exception as exc:
        raise DicomImportError(f"{where}: the segmentation cannot be read as a volume: {exc}") from None
    return on_grid(seg_volume, np.asarray(seg_volume.array) > 0, volume), [labels[n] for n in chosen]


def on_grid(source, array: np.ndarray, target) -> np.ndarray:
    """``array`` (on the grid of the highdicom Volume ``source``) sampled at the voxel centres of ``target``
    (nearest neighbour; False outside ``source``)."""
    shape = target.spatial_shape
    idx = np.indices(shape).reshape(3, -1).T
    world = target.map_indices_to_reference(idx)
    src = np.round(source.map_reference_to_indices(world)).astype(int)
    inside = np.all((src >= 0) & (src < np.asarray(array.shape[:3])), axis=1)
    out = np.zeros(len(idx), bool)
    out[inside] = array[tuple(src[inside].T)]
    return out.reshape(shape)


# ---- writing ----------------------------------------------------------------------------------------
def write_nifti(volume, array: np.ndarray, path: Path) -> None:
    """``array`` (the volume's (slice, row, column) grid) as NIfTI with the volume's geometry (SimpleITK), its axes in
    the usual order: column, row, slice (as the scanner's images are viewed, and as other converters write them)."""
    import SimpleITK as sitk

    image = volume.with_array(array).permute_spatial_axes([2, 1, 0]).to_simpleitk()
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def pseudonyms(ids: list[str], salt: str = "prrt-import-dicom") -> dict[str, str]:
    """DICOM patient ID → ``D001``, ``D002``, … in the order of a salted hash (revealing nothing of the ID), by
    :func:`prrt.data.privacy.pseudonymise` (another prefix when the IDs themselves look like that)."""
    return pseudonymise(ids, salt, prefixes=("D", "DX", "DZ"))


@dataclass
class ImportResult:
    out: Path
    patients: dict  # output ID -> report entry
    problems: list[str]
    manifest: Path | None


def import_dicom(src, out, table=None, table_id: str = "patient_id", template=None, id_map=None, key=None,
                 study: str | None = None, pet_series: str | None = None, ct_series: str | None = None,
                 roi: str | None = None, mask_from: str | None = None, progress: bool = True, log=print) -> ImportResult:
    """Import every patient of the DICOM export ``src`` into ``out`` (see the module's description). Nothing is left
    in ``out`` unless every patient was imported."""
    src, out = Path(src).resolve(), Path(out).resolve()
    if key is not None and Path(key).resolve().is_relative_to(out):
        raise DicomImportError(f"--key {key} is inside --out {out}: the key of the pseudonyms must be kept apart "
                               "from what is shared")
    if out.exists() and any(out.iterdir()):
        raise DicomImportError(f"{out} exists and is not empty; choose a new folder")
    # written into a staging folder beside --out and moved there only when every patient was imported
    staging = out.with_name(f".{out.name}.importing-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        result = _import_into(src, staging, table, table_id, template, id_map, key, study, pet_series, ct_series, roi,
                              mask_from, progress, log)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.out = out
    result.manifest = out / result.manifest.name if result.manifest else None
    return result


def _import_into(src, out, table, table_id, template, id_map, key, study, pet_series, ct_series, roi, mask_from,
                 progress, log) -> ImportResult:
    from tqdm.auto import tqdm

    out.mkdir(parents=True)
    series = scan(src, progress=progress)
    if not series:
        raise DicomImportError(f"no DICOM files found under {src}")
    choices = choose_series(series, study=study, pet=pet_series, ct=ct_series, mask_modality=mask_from)
    mapping = _id_mapping([c.patient for c in choices], id_map)
    problems, report = [], {}
    rows = []
    for c in tqdm(choices, desc="importing patients", unit="patient", disable=not progress):
        pid = mapping[c.patient]
        for note in c.notes:
            log(f"patient {c.patient} (→ {pid}): {note}")
        if c.pet is None and c.ct is None:
            problems.append(f"patient {c.patient}: {'; '.join(c.notes) or 'no PET or CT series'}")
            continue
        try:
            row, entry = _import_patient(c, pid, out, roi)
        except DicomImportError as exc:
            problems.append(str(exc))
            continue
        rows.append(row)
        report[pid] = entry
    if problems:
        raise DicomImportError(f"{len(problems)} problem(s); nothing was kept for those patients:\n  - "
                               + "\n  - ".join(problems))
    images = pd.DataFrame(rows)
    manifest = _write_table_and_manifest(out, images, {v: k for k, v in mapping.items()}, table, table_id, template)
    (out / "import-report.json").write_text(json.dumps({
        "patients": report, "header_fields_read": FIELDS_READ,
        "ids": "from --id-map" if id_map else "pseudonyms D001, … (the key is not in this folder)",
    }, indent=2))
    if key is not None:
        Path(key).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"dicom_patient_id": list(mapping), "patient_id": list(mapping.values())}).to_csv(key, index=False)
    return ImportResult(out, report, problems, manifest)


def _id_mapping(patients: list[str], id_map) -> dict[str, str]:
    if id_map is None:
        return pseudonyms(patients)
    m = pd.read_csv(id_map, dtype=str, keep_default_na=False)
    if not {"dicom_patient_id", "patient_id"} <= set(m.columns):
        raise DicomImportError(f"--id-map {id_map} needs the columns dicom_patient_id and patient_id")
    given = dict(zip(m["dicom_patient_id"], m["patient_id"]))
    missing = [p for p in patients if p not in given]
    if missing:
        raise DicomImportError(f"--id-map {id_map} has no row for {len(missing)} patient(s) of the export, e.g. "
                               f"{missing[:3]}")
    return {p: given[p] for p in patients}


def _import_patient(c: Choice, pid: str, out: Path, roi: str | None) -> tuple[dict, dict]:
    folder = out / "images" / pid
    row, entry = {"patient_id": pid}, {}
    volumes = {}
    for kind, s in (("pet", c.pet), ("ct", c.ct)):
        if s is None:
            continue
        where = f"patient {c.patient}, {s.name()}"
        volume, datasets, geometry = read_volume(s, where)
        array = volume.array
        if kind == "pet":
            factor, suv = suv_factor(datasets, where)
            array = array * np.float32(factor)
            entry["suv"] = {**suv, "factor": factor}
        integral = kind == "ct" and np.array_equal(array, np.round(array)) and -32768 <= array.min() <= array.max() <= 32767
        write_nifti(volume, array.astype(np.int16 if integral else np.float32), folder / f"{kind}.nii.gz")
        volumes[s.uid] = (volume, datasets, s)
        row[f"{kind}_path"] = f"images/{pid}/{kind}.nii.gz"
        entry[kind] = {"slices": geometry["n_slices"], "slice_spacing_mm": round(geometry["spacing_mm"], 4),
                       "pixel_spacing_mm": geometry["pixel_spacing_mm"], "shape": list(volume.spatial_shape)}
    if c.mask is not None:
        where = f"patient {c.patient}, {c.mask.name()}"
        if len(c.mask.files) != 1:
            raise DicomImportError(f"{where}: {len(c.mask.files)} files; one RTSTRUCT or SEG object is expected")
        mask_file = c.mask.files[0]
        ds = read(mask_file)
        candidates = _referenced(ds, volumes, where)
        for n, (volume, datasets, ref) in enumerate(candidates):
            try:
                if c.mask.modality == "RTSTRUCT":
                    mask, names = rasterise_rtstruct(ds, volume, roi, where)
                else:
                    mask, names = seg_mask(mask_file, volume, roi, where)
                break
            except OffSlice:  # drawn on the other series of the frame of reference
                if n == len(candidates) - 1:
                    raise
        write_nifti(volume, mask.astype(np.uint8), folder / "mask.nii.gz")
        row["mask_path"] = f"images/{pid}/mask.nii.gz"
        entry["mask"] = {"from": c.mask.modality, "on": "pet" if ref is c.pet else "ct", "rois": len(names),
                         "voxels": int(mask.sum())}
    return row, entry


def _referenced(ds, volumes: dict, where: str) -> list:
    """The (volume, datasets, series) a mask object may have been drawn on: the series it names, else every chosen
    series of its frame of reference (PET first)."""
    uids = []
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            uids += [str(s.SeriesInstanceUID) for s in study.get("RTReferencedSeriesSequence", [])]
    uids += [str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])]
    named = [volumes[u] for u in uids if u in volumes]
    if named:
        return named[:1]
    frames = [str(f.FrameOfReferenceUID) for f in ds.get("ReferencedFrameOfReferenceSequence", [])]
    frames.append(str(ds.get("FrameOfReferenceUID", "")))
    same = [v for v in volumes.values() if v[2].frame_of_reference in frames]
    if not same:
        raise DicomImportError(f"{where}: the mask refers to none of the chosen PET and CT series")
    return same


def _write_table_and_manifest(out: Path, images: pd.DataFrame, dicom_id_of: dict, table, table_id: str,
                              template) -> Path | None:
    import yaml

    data = images.copy()
    if table is not None:
        clinical = pd.read_csv(table, dtype=str, keep_default_na=False)
        if table_id not in clinical.columns:
            raise DicomImportError(f"--table {table}: no column {table_id!r} (--table-id names the patient ID column)")
        clinical = clinical.set_index(table_id)
        missing = [dicom_id_of[p] for p in data["patient_id"] if dicom_id_of[p] not in clinical.index]
        if missing:
            raise DicomImportError(f"--table {table}: no row for {len(missing)} imported patient(s), e.g. "
                                   f"{missing[:3]} (column {table_id!r} must hold the DICOM patient IDs)")
        extra = clinical.loc[[dicom_id_of[p] for p in data["patient_id"]]].reset_index(drop=True)
        data = pd.concat([data.reset_index(drop=True), extra], axis=1)
    data.to_csv(out / "cohort.csv", index=False)
    doc = yaml.safe_load(Path(template).read_text()) if template is not None else {}
    doc.update({"table": "cohort.csv", "image_root": ".", "id": "patient_id",
                "images": {m: f"{m}_path" for m in ("ct", "pet", "mask") if f"{m}_path" in data.columns}})
    doc.setdefault("name", "imported-from-dicom")
    doc["synthetic"] = bool(doc.get("synthetic", False))
    path = out / "manifest.yaml"
    path.write_text("# Written by `prrt import-dicom`; check it with `prrt validate`\n"
                    + yaml.safe_dump(doc, sort_keys=False))
    return path
