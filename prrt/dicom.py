"""DICOM import: a hospital's PET/CT export to NIfTI images in SUV and HU, lesion masks, and a manifest.

``prrt import-dicom SRC --out DIR`` walks a folder of DICOM files (any layout, any file names), groups
them by patient, study and series, picks each patient's PET and CT series (:func:`choose_series`; the
rules are printed, and ``--pet-series`` / ``--ct-series`` / ``--study`` override them), and writes

``DIR/images/<patient>/pet.nii.gz``
    the PET in body-weight SUV (:func:`suv_factor`: the vendor-neutral formula, with every tag it needs
    checked; anything missing or implausible is an error naming the patient, the series and the tag);
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

Slices are read with highdicom (:func:`highdicom.get_volume_from_series`): sorted by their position along
the slice normal (never by instance number or file name), with the modality transform (rescale slope and
intercept, per slice) applied; before that, :func:`slice_geometry` refuses uneven slice spacing, gantry
tilt, duplicated positions and multi-frame objects with a message that says what was found.

Privacy: only the header fields in :data:`FIELDS_READ` are read (``dcmread(specific_tags=...)``). Patients
are written under pseudonyms (``D001``, … in the order of a salted hash of the ID) unless ``--id-map`` gives
each DICOM patient ID the ID to use; the key is written only where ``--key`` says, never into ``--out``.
Nothing else of the headers (names, dates of birth, accession numbers, descriptions, UIDs) reaches the output.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

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
PHILIPS_SUV_SCALE = (0x7053, 0x1000)
#: Half-lives (s) of the nuclides of PET, to check RadionuclideHalfLife against the nuclide named in the header.
HALF_LIVES_S = {"F18": 6586.2, "GA68": 4062.6, "CU64": 45721.1, "ZR89": 282276.0, "C11": 1221.8, "N13": 597.9,
                "O15": 122.2, "RB82": 75.45, "LU177": 574300.0, "Y90": 230400.0, "I124": 360806.0}
ELEMENTS = {"FLUORINE": "F", "GALLIUM": "GA", "COPPER": "CU", "ZIRCONIUM": "ZR", "CARBON": "C", "NITROGEN": "N",
            "OXYGEN": "O", "RUBIDIUM": "RB", "LUTETIUM": "LU", "YTTRIUM": "Y", "IODINE": "I"}
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


def _matches(pattern: str | None, text: str) -> bool:
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
                       if any(_matches(study, s.study_description) for s in items if s.study == u)]
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
            cands = [s for s in in_study if s.modality == kind and not s.localizer and _matches(pattern, s.description)]
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


# ---- SUV --------------------------------------------------------------------------------------------
def _datetime(date, time, where: str, tag: str) -> _dt.datetime:
    from pydicom.valuerep import DA, TM

    try:
        d, t = DA(str(date)), TM(str(time))
    except (ValueError, TypeError):
        d = t = None
    if d is None or t is None:
        raise DicomImportError(f"{where}: tag {tag}: cannot read the date/time {date!r} {time!r}")
    return _dt.datetime.combine(d, t)


def _nuclide(item) -> str | None:
    """The nuclide named in a RadiopharmaceuticalInformationSequence item (``GA68``), or None: from the
    radionuclide's code meaning (``^68^Gallium``) or the radiopharmaceutical's name (``Ga-68 DOTATOC``)."""
    texts = [str(code.get("CodeMeaning", "")) for code in item.get("RadionuclideCodeSequence", [])]
    texts.append(str(item.get("Radiopharmaceutical", "")))
    for text in texts:
        t = re.sub(r"[\^\-_/()]", " ", text.upper())
        t = re.sub(r"(\d)([A-Z])", r"\1 \2", re.sub(r"([A-Z])(\d)", r"\1 \2", t))
        tokens = t.split()
        masses = [x for x in tokens if x.isdigit()]
        symbols = [ELEMENTS.get(x, x) for x in tokens if x.isalpha()]
        for mass in masses:
            for symbol in symbols:
                if f"{symbol}{mass}" in HALF_LIVES_S:
                    return f"{symbol}{mass}"
    return None


def suv_factor(datasets, where: str) -> tuple[float, dict]:
    """The factor that turns this PET's values (after the rescale slope and intercept) into body-weight SUV,
    and what it was computed from.

    ``Units`` GML: already SUV (factor 1). BQML: SUV = value × weight[g] / decayed dose[Bq], the dose decayed
    from the injection to the reference time: the series time (``DecayCorrection`` START; the earliest acquisition
    time when that is earlier, as some scanners set the series time after the scan) or none (ADMIN: the images are
    decay-corrected to the injection). CNTS: only with the Philips SUV scale factor (7053,1000). Every tag is
    checked: a missing or implausible one (no weight, a weight in grams, a dose of 0 or in MBq, an injection after
    the scan, a half-life that does not match the nuclide, images not corrected for attenuation or decay) is a
    :class:`DicomImportError` naming the tag.
    """
    ds = datasets[0]
    units = str(ds.get("Units", "")).upper()
    info = {"units": units}
    if units == "GML":
        return 1.0, {**info, "note": "the PET is stored in SUV (Units GML)"}
    if units == "CNTS":
        private = ds.get(PHILIPS_SUV_SCALE)
        value = private.value if private is not None else None
        if isinstance(value, bytes):  # read without a private dictionary: the DS text
            value = value.decode(errors="ignore").strip("\x00 ")
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = None
        if value is None or not value > 0:
            raise DicomImportError(f"{where}: tag Units is CNTS (counts) and there is no SUV scale factor (tag "
                                   "7053,1000): counts cannot be converted to SUV; export the PET in Bq/mL")
        return value, {**info, "note": "Philips SUV scale factor (7053,1000)"}
    if units != "BQML":
        raise DicomImportError(f"{where}: tag Units is {units or 'missing'!r}; BQML (Bq/mL) or GML (SUV) is needed")
    corrected = [str(v).upper() for v in ds.get("CorrectedImage", [])]
    for flag, what in (("ATTN", "attenuation"), ("DECY", "decay")):
        if flag not in corrected:
            raise DicomImportError(f"{where}: tag CorrectedImage lacks {flag}: the PET is not corrected for {what}, so "
                                   "its values are not activity concentrations")
    decay = str(ds.get("DecayCorrection", "")).upper()
    if decay not in ("START", "ADMIN"):
        raise DicomImportError(f"{where}: tag DecayCorrection is {decay or 'missing'!r}; START or ADMIN is needed")
    weight = ds.get("PatientWeight")
    if weight in (None, "") or not float(weight) > 0:
        raise DicomImportError(f"{where}: tag PatientWeight is missing or 0: body-weight SUV needs the weight (kg)")
    weight = float(weight)
    if weight > 350:
        raise DicomImportError(f"{where}: tag PatientWeight is {weight:g}, which is not a weight in kg (in grams?)")
    if weight < 2:
        raise DicomImportError(f"{where}: tag PatientWeight is {weight:g} kg, which is implausible")
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise DicomImportError(f"{where}: tag RadiopharmaceuticalInformationSequence is missing: no dose, half-life "
                               "or injection time")
    item = seq[0]
    dose = item.get("RadionuclideTotalDose")
    if dose in (None, "") or not float(dose) > 0:
        raise DicomImportError(f"{where}: tag RadionuclideTotalDose is missing or 0")
    dose = float(dose)
    if dose < 1e6:
        raise DicomImportError(f"{where}: tag RadionuclideTotalDose is {dose:g} Bq, less than 1 MBq: implausible for a "
                               "PET (a dose in MBq?)")
    half = item.get("RadionuclideHalfLife")
    if half in (None, "") or not float(half) > 0:
        raise DicomImportError(f"{where}: tag RadionuclideHalfLife is missing or 0")
    half = float(half)
    nuclide = _nuclide(item)
    if nuclide is not None and abs(half / HALF_LIVES_S[nuclide] - 1) > 0.02:
        raise DicomImportError(f"{where}: tag RadionuclideHalfLife is {half:g} s, but the nuclide named is {nuclide} "
                               f"(half-life {HALF_LIVES_S[nuclide]:g} s)")
    if "RadiopharmaceuticalStartDateTime" in item and str(item.RadiopharmaceuticalStartDateTime).strip():
        from pydicom.valuerep import DT

        try:
            injected = DT(str(item.RadiopharmaceuticalStartDateTime)).replace(tzinfo=None)
        except ValueError:
            raise DicomImportError(f"{where}: tag RadiopharmaceuticalStartDateTime cannot be read: "
                                   f"{item.RadiopharmaceuticalStartDateTime!r}") from None
    elif str(item.get("RadiopharmaceuticalStartTime", "")).strip():
        injected = _datetime(ds.get("SeriesDate", ""), item.RadiopharmaceuticalStartTime, where,
                             "SeriesDate + RadiopharmaceuticalStartTime")
    else:
        raise DicomImportError(f"{where}: tags RadiopharmaceuticalStartDateTime and RadiopharmaceuticalStartTime are "
                               "missing: no injection time")
    info.update(decay_correction=decay, weight_kg=weight, dose_bq=dose, half_life_s=half, nuclide=nuclide)
    if decay == "ADMIN":
        decayed, reference, minutes = dose, injected, 0.0
    else:
        reference = _datetime(ds.get("SeriesDate", ""), ds.get("SeriesTime", ""), where, "SeriesDate/SeriesTime")
        acquired = [_datetime(d.get("AcquisitionDate", "") or d.get("SeriesDate", ""), d.AcquisitionTime, where,
                              "AcquisitionDate/AcquisitionTime")
                    for d in datasets if str(d.get("AcquisitionTime", "")).strip()]
        if acquired and min(acquired) < reference:
            reference = min(acquired)
            info["note"] = "reference time: the earliest acquisition time (before the series time)"
        seconds = (reference - injected).total_seconds()
        if seconds < 0:
            raise DicomImportError(f"{where}: the injection (tag RadiopharmaceuticalStartDateTime/Time, {injected}) is "
                                   f"after the scan ({reference}): a wrong date or time")
        if seconds > 10 * half:
            raise DicomImportError(f"{where}: the scan is {seconds / 3600:.1f} h after the injection, more than ten "
                                   f"half-lives ({half:g} s): a wrong date, time or half-life")
        decayed = dose * 2.0 ** (-seconds / half)
        minutes = seconds / 60
    info["minutes_after_injection"] = round(minutes, 2)
    return weight * 1000.0 / decayed, info


# ---- masks ------------------------------------------------------------------------------------------
def rasterise_rtstruct(ds, volume, roi_pattern: str | None, where: str) -> tuple[np.ndarray, list[str]]:
    """The union of the ROIs of an RTSTRUCT whose name matches ``roi_pattern`` (all when None), on the grid of
    ``volume`` (the series the contours were drawn on); and the names of those ROIs.

    Each closed planar contour must lie on one slice of the volume (within a fifth of the slice spacing); it is
    filled on that slice with the even-odd rule, so a contour inside another on the same slice is a hole. The
    polygon is tested against the voxel centres (:class:`matplotlib.path.Path`)."""
    from matplotlib.path import Path as Polygon

    names = {int(r.ROINumber): str(r.get("ROIName", "")) for r in ds.get("StructureSetROISequence", [])}
    chosen = {n for n, name in names.items() if _matches(roi_pattern, name)}
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
    chosen = sorted(n for n, name in labels.items() if _matches(roi_pattern, name))
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
    :func:`prrt.manifest.pseudonymise` (another prefix when the IDs themselves look like that)."""
    from .manifest import pseudonymise

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
