"""DICOM written by the tests themselves (pydicom, highdicom): PET and CT series, RTSTRUCT and DICOM-SEG.

Geometry is given as a SimpleITK image (LPS origin, spacing, direction; array (slice, row, column)), so that a
NIfTI of the synthetic cohort becomes a series with the same voxels in the same places.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
PET_SOP = "1.2.840.10008.5.1.4.1.1.128"
RTSTRUCT_SOP = "1.2.840.10008.5.1.4.1.1.481.3"

#: The header every test patient gets: identifying fields that must never reach the output.
IDENTIFYING = {"PatientName": "Mustermann^Erika^QZXDICOMNAME", "PatientBirthDate": "19580412",
               "AccessionNumber": "QZXACCESSION77", "InstitutionName": "QZXHOSPITAL Klinikum",
               "ReferringPhysicianName": "Dr^QZXREFERRER", "OtherPatientIDs": "QZXOTHERID"}

INJECTION = dt.datetime(2024, 3, 5, 9, 12, 30)
SCAN = INJECTION + dt.timedelta(minutes=62, seconds=15)
GA68_HALF_LIFE = 4062.6


def study(patient_id: str) -> dict:
    return {"PatientID": patient_id, "StudyInstanceUID": generate_uid(), "StudyDate": SCAN.strftime("%Y%m%d"),
            "StudyDescription": "PET-CT DOTATOC", "FrameOfReferenceUID": generate_uid(), "PatientSex": "F",
            "StudyTime": SCAN.strftime("%H%M%S"), "StudyID": "QZXSTUDY1", **IDENTIFYING}


def _base(sop_class: str, modality: str, st: dict, series_uid: str, number: int, description: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    for k, v in st.items():
        setattr(ds, k, v)
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, number, description
    ds.SeriesDate, ds.SeriesTime = SCAN.strftime("%Y%m%d"), SCAN.strftime("%H%M%S")
    ds.Manufacturer = "prrt tests"
    return ds


def write_series(image: sitk.Image, folder: Path, modality: str, st: dict, number: int = 1, description: str = "",
                 pet: dict | None = None, per_slice_scale: bool = True, shuffle_names: bool = True,
                 positions=None) -> list[Dataset]:
    """Write ``image`` (values in HU or Bq/mL) as a single-frame series into ``folder``; returns the datasets.

    ``pet``: the PET's SUV tags (Units, DecayCorrection, PatientWeight, dose, half-life, injection time, ...); its
    values are stored as 16-bit integers with a rescale slope per slice. ``positions``: override each slice's
    ImagePositionPatient (to make uneven spacing or a gantry tilt). File names are random (``shuffle_names``),
    so that nothing can rely on them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    array = sitk.GetArrayFromImage(image).astype(np.float64)  # (slice, row, column)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    origin = np.asarray(image.GetOrigin())
    series_uid = generate_uid()
    sop = PET_SOP if modality == "PT" else CT_SOP
    rng = np.random.default_rng(number)
    out = []
    for k in range(array.shape[0]):
        ds = _base(sop, modality, st, series_uid, number, description)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = int(rng.integers(1, 10_000))  # not the slice order
        pos = origin + k * spacing[2] * direction[:, 2]
        ds.ImagePositionPatient = [float(v) for v in (positions[k] if positions is not None else pos)]
        ds.ImageOrientationPatient = [float(v) for v in list(direction[:, 0]) + list(direction[:, 1])]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.AcquisitionDate, ds.AcquisitionTime = SCAN.strftime("%Y%m%d"), SCAN.strftime("%H%M%S")
        values = array[k]
        if modality == "PT":
            ds.PixelRepresentation = 0
            top = float(values.max())
            slope = (top / 32000.0 if per_slice_scale else float(array.max()) / 32000.0) or 1.0
            stored = np.round(values / slope).clip(0, 65535).astype(np.uint16)
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
            ds.RescaleSlope = float(ds.RescaleSlope)
            for key, v in (pet or {}).items():
                setattr(ds, key, v)
        else:
            ds.PixelRepresentation = 1
            stored = np.round(values + 1024).clip(-32768, 32767).astype(np.int16)
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.PixelData = stored.tobytes()
        name = generate_uid().split(".")[-1] if shuffle_names else f"{k:04d}"
        ds.save_as(folder / f"{name}.dcm", enforce_file_format=True)
        out.append(ds)
    return out


def pet_tags(dose_bq: float = 185e6, weight_kg: float = 72.5, half_life: float = GA68_HALF_LIFE,
             injection: dt.datetime = INJECTION, units: str = "BQML", decay: str = "START",
             nuclide: str = "^68^Gallium") -> dict:
    item = Dataset()
    item.Radiopharmaceutical = "Ga-68 DOTATOC"
    item.RadionuclideTotalDose = dose_bq
    item.RadionuclideHalfLife = half_life
    item.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-131A2", "SRT", nuclide
    item.RadionuclideCodeSequence = [code]
    return {"Units": units, "DecayCorrection": decay, "CorrectedImage": ["ATTN", "DECY", "SCAT"],
            "PatientWeight": weight_kg, "RadiopharmaceuticalInformationSequence": [item]}


def bqml(suv: np.ndarray, dose_bq: float, weight_kg: float, minutes: float, half_life: float) -> np.ndarray:
    """Activity concentration (Bq/mL) of ``suv`` for this dose, weight and time after injection."""
    return suv * dose_bq * 2.0 ** (-minutes * 60 / half_life) / (weight_kg * 1000.0)


def contours(mask: np.ndarray) -> dict[int, list[np.ndarray]]:
    """Closed contours (row, column index coordinates) of each slice of a binary (slice, row, column) mask, at
    half height (contourpy, which matplotlib uses): filled by voxel centres, they give the mask back."""
    import contourpy

    out = {}
    for k in range(mask.shape[0]):
        if not mask[k].any():
            continue
        padded = np.pad(mask[k].astype(float), 1)
        gen = contourpy.contour_generator(z=padded, line_type="Separate")
        out[k] = [np.asarray(line)[:, ::-1] - 1 for line in gen.lines(0.5)]  # (x=col, y=row) -> (row, col)
    return out


def write_rtstruct(path: Path, image: sitk.Image, series: list[Dataset], st: dict, rois: dict[str, np.ndarray],
                   number: int = 90) -> Dataset:
    """An RTSTRUCT whose ROIs (``{name: mask (slice, row, column) on image's grid}``) are drawn on ``series``."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    origin = np.asarray(image.GetOrigin())
    ds = _base(RTSTRUCT_SOP, "RTSTRUCT", st, generate_uid(), number, "lesions")
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series[0].SeriesInstanceUID
    ref_study = Dataset()
    ref_study.RTReferencedSeriesSequence = [ref_series]
    frame = Dataset()
    frame.FrameOfReferenceUID = st["FrameOfReferenceUID"]
    frame.RTReferencedStudySequence = [ref_study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for n, (name, mask) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = n, name, st["FrameOfReferenceUID"]
        ds.StructureSetROISequence.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = n
        rc.ContourSequence = []
        for k, lines in contours(mask).items():
            for line in lines:
                # (row, col) index -> patient coordinates: column index along the row direction, row along the column
                pts = (origin + k * spacing[2] * direction[:, 2] + line[:, 1:2] * spacing[0] * direction[:, 0]
                       + line[:, 0:1] * spacing[1] * direction[:, 1])
                c = Dataset()
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(pts)
                c.ContourData = [float(f"{v:.4f}") for v in pts.ravel()]
                rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    ds.save_as(path, enforce_file_format=True)
    return ds


def write_seg(path: Path, series: list[Dataset], mask: np.ndarray, label: str = "lesions") -> None:
    """A DICOM-SEG (highdicom) of a binary mask on the frames of ``series`` (sorted as the mask's slices)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=series, pixel_array=mask.astype(np.uint8), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=generate_uid(), series_number=91,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="prrt tests",
        manufacturer_model_name="tests", software_versions="0", device_serial_number="0")
    seg.save_as(path)


def reread(folder: Path) -> list[Dataset]:
    """The series in ``folder`` sorted along the slice normal (as the import sorts them)."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    iop = np.asarray(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda d: float(np.asarray(d.ImagePositionPatient, float) @ normal))
