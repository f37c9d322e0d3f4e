"""Reading a DICOM export for the import: its series, the series chosen for each patient, and a series as one
volume.

:func:`scan` walks a folder of DICOM files (any layout, any file names) and groups them by patient, study
and series (:class:`Series`); :func:`choose_series` picks each patient's study, PET and CT series and mask
object, with the reasons (:class:`Choice`; ``--pet-series`` / ``--ct-series`` / ``--study`` override the
rules). :func:`read_volume` reads a series with highdicom (:func:`highdicom.get_volume_from_series`):
slices sorted by their position along the slice normal (never by instance number or file name), with the
modality transform (rescale slope and intercept, per slice) applied; before that, :func:`slice_geometry`
refuses uneven slice spacing, gantry tilt, duplicated positions and multi-frame objects with a message
that says what was found.

Privacy: only the header fields in :data:`FIELDS_READ` are read (``dcmread(specific_tags=...)``), each
with the reason it is read. A problem is a :class:`DicomImportError` naming the patient, the series and
the tag.

The import as a whole is :func:`prrt.data.import_dicom` (:mod:`prrt.data.dicom_import`); the conversion to
SUV is in :mod:`prrt.data.dicom_suv`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Every header field the import reads (besides the pixel data), and why. Nothing else is read.
FIELDS_READ = {
    "PatientID": "to group files by patient (replaced by a pseudonym, or by --id-map)",
    "StudyInstanceUID": "to group files by study",
    "StudyDate": "to choose among several studies (earliest first)",
    "StudyDescription": "to choose a study by --study",
    "SeriesInstanceUID": "to group files by series",
    "SeriesNumber": "to name a series in messages",
    "SeriesDescription": "to choose series by --pet-series / --ct-series, and name them in messages",
    "Modality": "PT, CT, RTSTRUCT or SEG",
    "SOPClassUID": "the kind of object",
    "SOPInstanceUID": "to match masks to the slices they were drawn on",
    "FrameOfReferenceUID": "to match masks and series in space",
    "ImageType": "to leave out localizers",
    "NumberOfFrames": "to refuse multi-frame images clearly",
    "ImagePositionPatient": "geometry",
    "ImageOrientationPatient": "geometry",
    "PixelSpacing": "geometry",
    "SliceThickness": "geometry (reported)",
    "Rows": "geometry",
    "Columns": "geometry",
    "BitsAllocated": "pixel data",
    "BitsStored": "pixel data",
    "HighBit": "pixel data",
    "PixelRepresentation": "pixel data",
    "SamplesPerPixel": "pixel data",
    "PhotometricInterpretation": "pixel data",
    "RescaleSlope": "pixel values to HU or Bq/mL",
    "RescaleIntercept": "pixel values to HU or Bq/mL",
    "RescaleType": "pixel values",
    "Units": "SUV: BQML, GML or CNTS",
    "DecayCorrection": "SUV: START or ADMIN",
    "CorrectedImage": "SUV: attenuation and decay corrected",
    "PatientWeight": "SUV: body weight (kg)",
    "SeriesDate": "SUV: reference time",
    "SeriesTime": "SUV: reference time",
    "AcquisitionDate": "SUV: reference time (the earliest, when before the series time)",
    "AcquisitionTime": "SUV: reference time (the earliest, when before the series time)",
    "RadiopharmaceuticalInformationSequence": "SUV: injected dose, half-life, injection time, nuclide",
    "ReferencedFrameOfReferenceSequence": "RTSTRUCT: the series the contours were drawn on",
    "StructureSetROISequence": "RTSTRUCT: ROI names (to choose with --roi)",
    "ROIContourSequence": "RTSTRUCT: the contours",
    "SegmentSequence": "SEG: segment names (to choose with --roi); a SEG object is opened whole by highdicom, and only "
                       "its segment names and pixels are used",
    "ReferencedSeriesSequence": "SEG: the series it was drawn on",
    "(7053,1000)": "SUV: the Philips SUV scale factor, when Units is CNTS",
}

#: Tolerances of :func:`slice_geometry`: relative spread of slice spacings, and gantry tilt (degrees).
SPACING_RTOL = 0.01
TILT_TOL_DEG = 0.5
PET_SOP = "1.2.840.10008.5.1.4.1.1.128"


class DicomImportError(ValueError):
    """A DICOM input that cannot be imported; the message names the patient, the series and the tag."""


class OffSlice(DicomImportError):
    """A contour that does not lie on a slice of the series tried."""


@dataclass
class Series:
    """The files of one series and what the import needs to know about them."""

    patient: str  # the DICOM PatientID (private: never written)
    study: str
    study_date: str
    study_description: str
    uid: str
    number: int | None
    description: str
    modality: str
    frame_of_reference: str
    files: list[Path] = field(default_factory=list)
    localizer: bool = False
    attenuation_corrected: bool = False

    def name(self) -> str:
        """How messages name the series: its number and description, and where its files are."""
        folder = self.files[0].parent if self.files else "?"
        return f"series {self.number if self.number is not None else '?'} ({self.description or 'no description'}, " \
               f"{self.modality}, {len(self.files)} files in {folder})"


# ---- reading the export -----------------------------------------------------------------------------
def _tags(names) -> list:
    from pydicom.datadict import tag_for_keyword

    out = []
    for n in names:
        if n.startswith("("):
            group, elem = n.strip("()").split(",")
            out.append((int(group, 16), int(elem, 16)))
        else:
            out.append(tag_for_keyword(n))
    return out


#: The fields :func:`scan` reads to sort files into series (the pixel data and the rest come later).
SCAN_FIELDS = ["PatientID", "StudyInstanceUID", "StudyDate", "StudyDescription", "SeriesInstanceUID", "SeriesNumber",
               "SeriesDescription", "Modality", "SOPClassUID", "FrameOfReferenceUID", "ImageType", "CorrectedImage"]


def read(path, fields=None, pixels: bool = False):
    """A DICOM file with only ``fields`` (default: :data:`FIELDS_READ`) and, with ``pixels``, the pixel data."""
    import pydicom

    names = list(fields or FIELDS_READ) + (["PixelData"] if pixels else [])
    return pydicom.dcmread(str(path), specific_tags=_tags(names), stop_before_pixels=not pixels)


def scan(src, progress: bool = True) -> list[Series]:
    """Every DICOM series under ``src`` (files that are not DICOM are skipped), in a stable order."""
    from pydicom.errors import InvalidDicomError
    from tqdm.auto import tqdm

    src = Path(src)
    if not src.is_dir():
        raise DicomImportError(f"{src} is not a folder")
    series: dict[str, Series] = {}
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for f in tqdm(files, desc="reading DICOM headers", unit="file", disable=not progress):
        try:
            ds = read(f, SCAN_FIELDS)
        except (InvalidDicomError, OSError, ValueError, TypeError):
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid or "Modality" not in ds:
            continue
        if uid not in series:
            number = ds.get("SeriesNumber")
            series[uid] = Series(
                patient=str(ds.get("PatientID", "")), study=str(ds.get("StudyInstanceUID", "")),
                study_date=str(ds.get("StudyDate", "")), study_description=str(ds.get("StudyDescription", "")),
                uid=uid, number=int(number) if number not in (None, "") else None,
                description=str(ds.get("SeriesDescription", "")), modality=str(ds.Modality),
                frame_of_reference=str(ds.get("FrameOfReferenceUID", "")))
        s = series[uid]
        s.files.append(f)
        s.localizer |= "LOCALIZER" in [str(t).upper() for t in ds.get("ImageType", [])]
        s.attenuation_corrected |= "ATTN" in [str(t).upper() for t in ds.get("CorrectedImage", [])]
    return sorted(series.values(), key=lambda s: (s.patient, s.study_date, s.study, s.number or 0, s.uid))


# ---- choosing series --------------------------------------------------------------------------------
@dataclass
class Choice:
    """The series chosen for one patient: PET, CT and mask, each with the reason."""

    patient: str  # DICOM PatientID (private)
    study: str
    pet: Series | None = None
    ct: Series | None = None
    mask: Series | None = None
    notes: list[str] = field(default_factory=list)


def matches_pattern(pattern: str | None, text: str) -> bool:
    return pattern is None or re.search(pattern, text or "", re.IGNORECASE) is not None


def choose_series(series: list[Series], study: str | None = None, pet: str | None = None, ct: str | None = None,
                  mask_modality: str | None = None) -> list[Choice]:
    """For each patient: the study (the earliest that has a PET, or the one whose description matches
    ``study``), its PET (of those whose description matches ``pet``: an attenuation-corrected one, then the one with
    the most slices, then the lowest series number), its CT (no localizer, the same frame of
    reference as the PET if any, then the most slices), and a mask (an RTSTRUCT or SEG of the study that refers to
    the PET's or CT's frame of reference; ``mask_modality`` picks one kind). ``notes`` say what was chosen and why."""
    by_patient: dict[str, list[Series]] = {}
    for s in series:
        by_patient.setdefault(s.patient, []).append(s)
    choices = []
    for patient, items in by_patient.items():
        studies = sorted({(s.study_date, s.study) for s in items if s.modality in ("PT", "CT")})
        if study is not None:
            studies = [(d, u) for d, u in studies
                       if any(matches_pattern(study, s.study_description) for s in items if s.study == u)]
        with_pet = [(d, u) for d, u in studies if any(s.modality == "PT" and s.study == u for s in items)]
        pool = with_pet or studies
        if not pool:
            choices.append(Choice(patient, "", notes=["no PET or CT study" + (f" matching --study {study!r}"
                                                                             if study else "")]))
            continue
        date, uid = pool[0]
        c = Choice(patient, uid)
        if len(studies) > 1:
            c.notes.append(f"{len(studies)} studies; took the earliest{' with a PET' if with_pet else ''} "
                           f"({date or 'no date'}); --study chooses another")
        in_study = [s for s in items if s.study == uid]

        def pick(kind, pattern, key):
            cands = [s for s in in_study if s.modality == kind and not s.localizer and matches_pattern(pattern, s.description)]
            if not cands:
                return None
            cands.sort(key=key)
            if len(cands) > 1:
                c.notes.append(f"{len(cands)} {kind} series; took {cands[0].name()}; others: "
                               + "; ".join(x.name() for x in cands[1:]))
            return cands[0]

        c.pet = pick("PT", pet, lambda s: (not s.attenuation_corrected, -len(s.files), s.number or 0))
        same_frame = c.pet.frame_of_reference if c.pet else None
        c.ct = pick("CT", ct, lambda s: (s.frame_of_reference != same_frame, -len(s.files), s.number or 0))
        frames = {x.frame_of_reference for x in (c.pet, c.ct) if x is not None}
        masks = [s for s in in_study if s.modality in ("RTSTRUCT", "SEG")
                 and (mask_modality is None or s.modality == mask_modality)
                 and (s.frame_of_reference in frames or not s.frame_of_reference)]
        if masks:
            masks.sort(key=lambda s: (s.modality != "SEG", s.number or 0))
            c.mask = masks[0]
            if len(masks) > 1:
                c.notes.append(f"{len(masks)} mask objects; took {masks[0].name()}")
        choices.append(c)
    return choices


# ---- geometry ---------------------------------------------------------------------------------------
def slice_geometry(datasets, where: str) -> dict:
    """The slices of a series sorted along their normal, with their spacing; errors for what cannot become one
    regular volume: multi-frame objects, different orientations, duplicated positions, uneven spacing, gantry tilt."""
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise DicomImportError(f"{where}: a multi-frame (enhanced) image; export the series as single-frame "
                               "(classic) images")
    orients = {tuple(np.round(np.asarray(ds.ImageOrientationPatient, float), 4)) for ds in datasets}
    if len(orients) > 1:
        raise DicomImportError(f"{where}: the slices have {len(orients)} different orientations (tag "
                               "ImageOrientationPatient): not one volume")
    iop = np.asarray(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    pos = np.array([np.asarray(ds.ImagePositionPatient, float) for ds in datasets])
    order = np.argsort(pos @ normal)
    pos = pos[order]
    if len(datasets) < 2:
        raise DicomImportError(f"{where}: a single slice is not a volume")
    steps = np.diff(pos, axis=0)
    along = steps @ normal
    if np.any(along < 1e-3):
        raise DicomImportError(f"{where}: two slices at the same position (tag ImagePositionPatient); the series holds "
                               "duplicates or more than one volume")
    spacing = float(np.median(along))
    if np.max(np.abs(along - spacing)) > SPACING_RTOL * spacing:
        raise DicomImportError(f"{where}: uneven slice spacing ({along.min():.3g} to {along.max():.3g} mm, tag "
                               "ImagePositionPatient); resample the series to even spacing (or export it without "
                               "missing slices) first")
    tilt = float(np.degrees(np.arccos(np.clip(np.abs(steps @ normal) / np.linalg.norm(steps, axis=1), 0, 1)).max()))
    if tilt > TILT_TOL_DEG:
        raise DicomImportError(f"{where}: gantry tilt of {tilt:.1f}° (the slices are shifted along the table, tags "
                               "ImagePositionPatient/ImageOrientationPatient); correct the tilt (resample) first")
    return {"order": order, "spacing_mm": spacing, "n_slices": len(datasets),
            "pixel_spacing_mm": [float(v) for v in datasets[0].PixelSpacing]}


def read_volume(series: Series, where: str):
    """The series as a highdicom Volume (modality transform applied, float32), its datasets sorted, and its geometry."""
    import highdicom as hd

    datasets = [read(f, pixels=True) for f in series.files]
    geometry = slice_geometry(datasets, where)
    datasets = [datasets[i] for i in geometry["order"]]
    try:
        volume = hd.get_volume_from_series(datasets, dtype=np.float32, apply_modality_transform=True,
                                           apply_voi_transform=False, apply_real_world_transform=False)
    except Exception as exc:  # highdicom's own checks: the message says what is wrong
        raise DicomImportError(f"{where}: cannot be read as one volume: {exc}") from None
    # index axes as the images are: slices along the normal (first slice first), rows down, columns across
    iop = np.asarray(datasets[0].ImageOrientationPatient, float)
    expected = (np.cross(iop[:3], iop[3:]), iop[3:], iop[:3])
    flips = [a for a in range(3) if volume.affine[:3, a] @ expected[a] < 0]
    if flips:
        volume = volume.flip_spatial(flips)
    return volume, datasets, geometry
