"""prrt import-dicom: SUV from the DICOM tags, geometry, RTSTRUCT and DICOM-SEG masks, privacy, and the bad cases."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from dicom_helpers import (
    GA68_HALF_LIFE,
    IDENTIFYING,
    INJECTION,
    SCAN,
    bqml,
    pet_tags,
    reread,
    study,
    write_rtstruct,
    write_seg,
    write_series,
)

from prrt.data.dicom_import import import_dicom
from prrt.data.dicom_scan import DicomImportError
from prrt.data.load import load_cohort

MINUTES = (SCAN - INJECTION).total_seconds() / 60


def _image(array_zyx: np.ndarray, spacing=(4.0, 4.0, 5.0), origin=(-30.0, -40.0, 100.0), direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def _sphere(shape, centre, radius) -> np.ndarray:
    z, y, x = np.indices(shape)
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius ** 2


@pytest.fixture
def pet_phantom():
    """SUV values: background 1, a sphere of SUV 12 (radius 3 voxels), on a 10 x 16 x 16 grid."""
    suv = np.ones((10, 16, 16))
    lesion = _sphere(suv.shape, (5, 8, 7), 3)
    suv[lesion] = 12.0
    return suv, lesion


def _export(root: Path, suv: np.ndarray, lesion: np.ndarray | None = None, patient="QZXDICOMID-001",
            tags: dict | None = None, mask: str | None = None, ct: bool = True, **kw) -> dict:
    """One patient's PET (in Bq/mL for the default tags), CT and optionally a mask, as a hospital exports them."""
    st = study(patient)
    tags = tags if tags is not None else pet_tags()
    # the activity of the default tags (the bad cases change the header, not the activity)
    values = bqml(suv, 185e6, 72.5, MINUTES, GA68_HALF_LIFE) if tags.get("Units") == "BQML" else suv
    img = _image(values, **kw)
    pet = write_series(img, root / patient / "pet", "PT", st, number=3, description="PET AC", pet=tags)
    out = {"study": st, "pet": pet, "image": img}
    if ct:
        hu = np.where(lesion if lesion is not None else np.zeros(suv.shape, bool), 40.0, 0.0) - 100.0
        out["ct"] = write_series(_image(hu, **kw), root / patient / "ct", "CT", st, number=2, description="CT")
    if mask == "rtstruct":
        write_rtstruct(root / patient / "rs.dcm", img, reread(root / patient / "pet"), st,
                       {"GTV lesion 1": lesion, "Liver": np.zeros_like(lesion)})
    elif mask == "seg":
        write_seg(root / patient / "seg.dcm", reread(root / patient / "pet"), lesion)
    return out


def _load(path: Path, grid: sitk.Image) -> np.ndarray:
    """The image at ``path`` on the voxels of ``grid`` (nearest neighbour, by world position), as (slice, row, column)."""
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(sitk.Resample(img, grid, sitk.Transform(), sitk.sitkNearestNeighbor, -9999.0,
                                                img.GetPixelID()))


def test_suv_is_computed_from_the_tags_as_by_hand(tmp_path, pet_phantom):
    """185 MBq of Ga-68 (half-life 4062.6 s) injected 62.25 min before the scan, 72.5 kg: the PET stored in Bq/mL
    (16 bits, a rescale slope per slice) comes back as SUV 12 in the lesion and 1 elsewhere, within 0.1 %."""
    suv, lesion = pet_phantom
    grid = _export(tmp_path / "src", suv, lesion)["image"]
    result = import_dicom(tmp_path / "src", tmp_path / "out", progress=False, log=lambda m: None)
    (pid, entry), = result.patients.items()
    decayed = 185e6 * 2 ** (-MINUTES * 60 / GA68_HALF_LIFE)
    assert entry["suv"]["factor"] == pytest.approx(72500 / decayed, rel=1e-9)
    assert entry["suv"]["minutes_after_injection"] == pytest.approx(62.25)
    out = _load(tmp_path / "out" / "images" / pid / "pet.nii.gz", grid)
    assert np.allclose(out[lesion], 12.0, rtol=1e-3) and np.allclose(out[~lesion], 1.0, rtol=1e-3)
    ct = _load(tmp_path / "out" / "images" / pid / "ct.nii.gz", grid)
    assert set(np.unique(ct)) == {-100, -60}


@pytest.mark.parametrize("change, words", [
    (dict(weight_kg=0), "tag PatientWeight is missing or 0"),
    (dict(weight_kg=72500), "tag PatientWeight is 72500, which is not a weight in kg (in grams?)"),
    (dict(dose_bq=0), "tag RadionuclideTotalDose is missing or 0"),
    (dict(dose_bq=185), "less than 1 MBq: implausible for a PET (a dose in MBq?)"),
    (dict(injection=SCAN + dt.timedelta(minutes=5)), "is after the scan"),
    (dict(half_life=574300.0), "tag RadionuclideHalfLife is 574300 s, but the nuclide named is GA68"),
    (dict(units="CNTS"), "tag Units is CNTS (counts) and there is no SUV scale factor"),
    (dict(units="PROPCPS"), "tag Units is 'PROPCPS'; BQML (Bq/mL) or GML (SUV) is needed"),
    (dict(decay="NONE"), "tag DecayCorrection is 'NONE'; START or ADMIN is needed"),
])
def test_a_pet_whose_suv_cannot_be_trusted_is_refused_naming_patient_series_and_tag(tmp_path, pet_phantom, change,
                                                                                   words):
    suv, lesion = pet_phantom
    _export(tmp_path / "src", suv, lesion, tags=pet_tags(**change))
    with pytest.raises(DicomImportError) as err:
        import_dicom(tmp_path / "src", tmp_path / "out", progress=False, log=lambda m: None)
    text = str(err.value)
    assert words in text and "patient QZXDICOMID-001, series 3 (PET AC, PT, 10 files in" in text, text
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # nothing half-written is left


def test_other_suv_settings(tmp_path, pet_phantom):
    """GML is SUV already; ADMIN means decay-corrected to the injection; a missing weight tag; the Philips scale."""
    suv, lesion = pet_phantom
    grid = _export(tmp_path / "gml", suv, lesion, tags={**pet_tags(units="GML")})["image"]
    r = import_dicom(tmp_path / "gml", tmp_path / "o1", progress=False, log=lambda m: None)
    (pid, entry), = r.patients.items()
    assert entry["suv"]["units"] == "GML"
    assert np.allclose(_load(tmp_path / "o1" / "images" / pid / "pet.nii.gz", grid)[lesion], 12.0, rtol=1e-3)
    # ADMIN: no decay from injection to scan
    tags = pet_tags(decay="ADMIN")
    item = tags["RadiopharmaceuticalInformationSequence"][0]
    st = study("P-ADMIN")
    values = suv * item.RadionuclideTotalDose / (tags["PatientWeight"] * 1000)
    write_series(_image(values), tmp_path / "admin" / "pet", "PT", st, number=3, description="PET", pet=tags)
    r = import_dicom(tmp_path / "admin", tmp_path / "o2", progress=False, log=lambda m: None)
    (pid, entry), = r.patients.items()
    assert entry["suv"]["minutes_after_injection"] == 0.0
    assert np.allclose(_load(tmp_path / "o2" / "images" / pid / "pet.nii.gz", grid)[lesion], 12.0, rtol=1e-3)
    # no weight tag at all
    tags = pet_tags()
    del tags["PatientWeight"]
    _export(tmp_path / "noweight", suv, lesion, tags=tags)
    with pytest.raises(DicomImportError, match="tag PatientWeight is missing or 0"):
        import_dicom(tmp_path / "noweight", tmp_path / "o3", progress=False, log=lambda m: None)


def _world(img: sitk.Image, point_lps) -> tuple:
    return img.TransformPhysicalPointToIndex(tuple(float(v) for v in point_lps))


def test_the_nifti_puts_a_dicom_point_on_the_same_voxel_whatever_the_slice_order_and_orientation(tmp_path):
    """An oblique, reversed series with random file names and instance numbers: the voxel that holds a marked
    value in DICOM (patient coordinates from ImagePositionPatient/Orientation) holds it in the NIfTI (nibabel's RAS
    affine), and the slices are in spatial order."""
    rot = sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5).GetMatrix()
    vol = np.zeros((7, 9, 11))
    vol[2, 3, 4] = 5000.0
    vol[5, 1, 8] = 3000.0
    img = _image(vol, spacing=(2.0, 3.0, 4.0), direction=rot)
    st = study("GEOM")
    series = write_series(img, tmp_path / "src" / "ct", "CT", st, number=2, description="CT")
    r = import_dicom(tmp_path / "src", tmp_path / "out", progress=False, log=lambda m: None)
    (pid, _), = r.patients.items()
    nii = nib.load(tmp_path / "out" / "images" / pid / "ct.nii.gz")
    data = np.asarray(nii.dataobj)
    for k, i, j, value in ((2, 3, 4, 5000), (5, 1, 8, 3000)):
        ds = next(d for d in series if np.allclose(d.ImagePositionPatient, img.TransformIndexToPhysicalPoint((0, 0, k))))
        r_dir, c_dir = np.asarray(ds.ImageOrientationPatient[:3]), np.asarray(ds.ImageOrientationPatient[3:])
        lps = (np.asarray(ds.ImagePositionPatient) + j * ds.PixelSpacing[1] * r_dir + i * ds.PixelSpacing[0] * c_dir)
        ras = lps * np.array([-1, -1, 1])
        voxel = np.round(np.linalg.inv(nii.affine) @ np.append(ras, 1))[:3].astype(int)
        assert data[tuple(voxel)] == value - 1024 + 1024 or data[tuple(voxel)] == value, (voxel, data[tuple(voxel)])
    assert data.max() == 5000 and (data == 3000).sum() == 1


def _positions(img, z_steps, shift=None):
    origin = np.asarray(img.GetOrigin())
    return [origin + np.array([0, 0, z]) + (np.array([0, shift * k, 0]) if shift else 0) for k, z in enumerate(z_steps)]


@pytest.mark.parametrize("what, words", [
    ("uneven", "uneven slice spacing (5 to 10 mm, tag ImagePositionPatient)"),
    ("tilt", "gantry tilt of 11.3°"),
    ("duplicate", "two slices at the same position"),
])
def test_geometry_that_is_not_one_regular_volume_is_refused(tmp_path, what, words):
    img = _image(np.zeros((6, 8, 8)) + 50)
    z = {"uneven": [0, 5, 10, 20, 25, 30], "tilt": [0, 5, 10, 15, 20, 25], "duplicate": [0, 5, 10, 10, 15, 20]}[what]
    positions = _positions(img, z, shift=1.0 if what == "tilt" else None)
    write_series(img, tmp_path / "src" / "ct", "CT", study("GEO-1"), number=2, description="CT", positions=positions)
    with pytest.raises(DicomImportError) as err:
        import_dicom(tmp_path / "src", tmp_path / "out", progress=False, log=lambda m: None)
    assert words in str(err.value) and "patient GEO-1, series 2 (CT, CT, 6 files" in str(err.value)


@pytest.mark.parametrize("kind", ["rtstruct", "seg"])
def test_masks_from_rtstruct_and_seg_land_on_the_lesion(tmp_path, pet_phantom, kind):
    suv, lesion = pet_phantom
    grid = _export(tmp_path / "src", suv, lesion, mask=kind)["image"]
    r = import_dicom(tmp_path / "src", tmp_path / "out", progress=False, log=lambda m: None,
                     roi="gtv|lesion")
    (pid, entry), = r.patients.items()
    mask = _load(tmp_path / "out" / "images" / pid / "mask.nii.gz", grid)
    dice = 2 * (mask.astype(bool) & lesion).sum() / (mask.astype(bool).sum() + lesion.sum())
    assert dice >= 0.95, dice
    assert entry["mask"] == {"from": kind.upper(), "on": "pet", "rois": 1, "voxels": int(mask.sum())}


def test_an_roi_pattern_that_matches_nothing_names_the_rois(tmp_path, pet_phantom):
    suv, lesion = pet_phantom
    _export(tmp_path / "src", suv, lesion, mask="rtstruct")
    with pytest.raises(DicomImportError,
                       match=re.escape("no ROI name matches 'tumou?r'; the ROIs are: GTV lesion 1, Liver")):
        import_dicom(tmp_path / "src", tmp_path / "out", progress=False, log=lambda m: None, roi="tumou?r")


def test_nothing_of_the_headers_reaches_the_output_and_the_clinical_table_is_merged(tmp_path, pet_phantom):
    suv, lesion = pet_phantom
    for i in range(3):
        _export(tmp_path / "src", suv, lesion, patient=f"QZXDICOMID-00{i}", mask="seg")
    table = pd.DataFrame({"mrn": [f"QZXDICOMID-00{i}" for i in range(3)], "pfs_months": [5.0, 20.0, 14.0],
                          "progressed": [1, 0, 1], "chromogranin_a": [100, 200, 300]})
    table.to_csv(tmp_path / "clinical.csv", index=False)
    template = {"name": "my-hospital", "endpoint": {"time": "pfs_months", "event": "progressed", "horizon_months": 12},
                "labs": ["chromogranin_a"], "units": {"chromogranin_a": "ng/mL"}}
    (tmp_path / "template.yaml").write_text(yaml.safe_dump(template))
    import_dicom(tmp_path / "src", tmp_path / "out", table=tmp_path / "clinical.csv", table_id="mrn",
                 template=tmp_path / "template.yaml", key=tmp_path / "private" / "key.csv", progress=False,
                 log=lambda m: None)
    secrets = [v for v in IDENTIFYING.values()] + [f"QZXDICOMID-00{i}" for i in range(3)] + ["19580412", "QZX"]
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            content = f.read_bytes()
            if f.suffix == ".gz":
                import gzip

                content = gzip.decompress(content)
            assert not [s for s in secrets if s.encode() in content], f
    data = pd.read_csv(tmp_path / "out" / "cohort.csv")
    assert sorted(data["patient_id"]) == ["D001", "D002", "D003"] and "mrn" not in data.columns
    key = pd.read_csv(tmp_path / "private" / "key.csv").set_index("patient_id")["dicom_patient_id"]
    merged = data.set_index("patient_id").join(key)
    assert (merged.set_index("dicom_patient_id")["pfs_months"] == table.set_index("mrn")["pfs_months"]).all()
    report = json.loads((tmp_path / "out" / "import-report.json").read_text())
    assert "PatientName" not in report["header_fields_read"] and "PatientID" in report["header_fields_read"]
    load_cohort(tmp_path / "out" / "manifest.yaml", check_images="full")  # raises, listing every problem, if invalid
    with pytest.raises(DicomImportError, match="is inside --out"):
        import_dicom(tmp_path / "src", tmp_path / "out2", key=tmp_path / "out2" / "key.csv", progress=False)


def test_several_series_are_chosen_by_the_printed_rules_and_can_be_overridden(tmp_path, pet_phantom):
    """An attenuation-corrected PET is preferred to a longer uncorrected one; --pet-series takes the other (whose SUV
    then cannot be trusted: an error naming the tag)."""
    suv, lesion = pet_phantom
    st = study("CHOOSE-1")
    values = bqml(suv, 185e6, 72.5, MINUTES, GA68_HALF_LIFE)
    nac = {**pet_tags(), "CorrectedImage": ["DECY"]}
    write_series(_image(values[2:8]), tmp_path / "src" / "a", "PT", st, number=3, description="PET AC", pet=pet_tags())
    write_series(_image(values), tmp_path / "src" / "b", "PT", st, number=4, description="PET NAC", pet=nac)
    said = []
    r = import_dicom(tmp_path / "src", tmp_path / "o1", progress=False, log=said.append)
    (pid, entry), = r.patients.items()
    assert entry["pet"]["slices"] == 6 and any("2 PT series; took series 3 (PET AC" in s for s in said), said
    with pytest.raises(DicomImportError, match="series 4 .PET NAC.*tag CorrectedImage lacks ATTN"):
        import_dicom(tmp_path / "src", tmp_path / "o2", progress=False, log=lambda m: None, pet_series="NAC")


def test_a_multiframe_image_is_refused_clearly(tmp_path):
    img = _image(np.zeros((4, 6, 6)))
    series = write_series(img, tmp_path / "src" / "ct", "CT", study("MF-1"), number=2, description="CT")
    for p in (tmp_path / "src" / "ct").glob("*.dcm"):
        import pydicom

        ds = pydicom.dcmread(p)
        ds.NumberOfFrames = 2
        ds.save_as(p)
    with pytest.raises(DicomImportError, match="a multi-frame .enhanced. image; export the series as single-frame"):
        import_dicom(tmp_path / "src", tmp_path / "out", progress=False, log=lambda m: None)
    assert series


REAL = Path(__file__).resolve().parents[3] / "shared" / "realdata" / "ibsi_ct_phantom"


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/realdata/ibsi_ct_phantom is absent (it may not be copied "
                                              "into the repository: CC BY-NC)")
def test_the_ibsi_phantom_matches_its_publishers_nifti(tmp_path):
    """A real CT series with an RTSTRUCT: the same voxels, geometry and mask as the publishers' NIfTI conversion."""
    shutil.copytree(REAL / "dicom", tmp_path / "src")
    r = import_dicom(tmp_path / "src", tmp_path / "out", progress=False, log=lambda m: None)
    (pid, entry), = r.patients.items()
    ours = sitk.ReadImage(str(tmp_path / "out" / "images" / pid / "ct.nii.gz"))
    theirs = sitk.ReadImage(str(REAL / "nifti" / "image" / "phantom.nii.gz"))
    assert ours.GetSize() == theirs.GetSize()
    assert np.allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-3)
    assert np.allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "images" / pid / "mask.nii.gz"))) > 0
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / "nifti" / "mask" / "mask.nii.gz"))) > 0
    dice = 2 * (mask & ref).sum() / (mask.sum() + ref.sum())
    assert dice >= 0.95, dice


@pytest.fixture(scope="module")
def dicom_export(small_cohort_dir, tmp_path_factory):
    """The small synthetic cohort as a hospital would export it: per patient a PET series in Bq/mL (known dose,
    weight, times), a CT series in HU, the lesion mask as a DICOM-SEG (even rows) or an RTSTRUCT (odd rows) drawn
    on the PET; and the clinical table keyed by the DICOM patient ID."""
    from dicom_helpers import write_seg as seg

    root = tmp_path_factory.mktemp("pacs")
    table = pd.read_csv(small_cohort_dir / "cohort.csv", dtype=str, keep_default_na=False)
    for n, row in table.iterrows():
        st = study(row["patient_id"])
        pet = sitk.ReadImage(str(small_cohort_dir / row["pet_path"]))
        weight = 60.0 + n
        activity = sitk.GetImageFromArray(bqml(sitk.GetArrayFromImage(pet).astype(np.float64), 185e6, weight, MINUTES,
                                               GA68_HALF_LIFE))
        activity.CopyInformation(pet)
        folder = root / "export" / f"case{n:02d}"
        write_series(activity, folder / "pt", "PT", st, number=3, description="PET AC", pet=pet_tags(weight_kg=weight))
        write_series(sitk.ReadImage(str(small_cohort_dir / row["ct_path"])), folder / "ct", "CT", st, number=2,
                     description="CT")
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(small_cohort_dir / row["lesion_mask_path"]))) > 0
        if mask.any():
            if n % 2 == 0:
                seg(folder / "seg.dcm", reread(folder / "pt"), mask)
            else:
                write_rtstruct(folder / "rs.dcm", pet, reread(folder / "pt"), st, {"lesions": mask})
    clinical = table.drop(columns=[c for c in table.columns if c.endswith("_path")])
    clinical.to_csv(root / "clinical.csv", index=False)
    return root


def test_a_synthetic_cohort_survives_the_round_trip_through_dicom(dicom_export, small_cohort_dir, tmp_path):
    """Imported again, each patient's PET is the original SUV within 0.1 % (voxels above 2 % of their slice's
    maximum: 16-bit storage), the CT the same HU, the mask (from SEG or RTSTRUCT) a Dice of at least 0.95; and the
    manifest passes prrt validate with the synthetic manifest's endpoint and labs."""
    out = tmp_path / "hospital"
    import_dicom(dicom_export / "export", out, table=dicom_export / "clinical.csv", template=small_cohort_dir /
                 "manifest.yaml", key=tmp_path / "key.csv", progress=False, log=lambda m: None)
    key = pd.read_csv(tmp_path / "key.csv").set_index("dicom_patient_id")["patient_id"]
    table = pd.read_csv(small_cohort_dir / "cohort.csv", dtype=str, keep_default_na=False)
    dices = []
    for _, row in table.iterrows():
        pid = key[row["patient_id"]]
        grid = sitk.ReadImage(str(small_cohort_dir / row["pet_path"]))
        want = sitk.GetArrayFromImage(grid)
        got = _load(out / "images" / pid / "pet.nii.gz", grid)
        big = want > 0.02 * want.max(axis=(1, 2), keepdims=True)
        assert np.abs(got[big] / want[big] - 1).max() < 1e-3, row["patient_id"]
        ct_grid = sitk.ReadImage(str(small_cohort_dir / row["ct_path"]))
        assert np.array_equal(_load(out / "images" / pid / "ct.nii.gz", ct_grid), sitk.GetArrayFromImage(ct_grid))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(small_cohort_dir / row["lesion_mask_path"]))) > 0
        if mask.any():
            got_mask = _load(out / "images" / pid / "mask.nii.gz", grid) > 0
            dices.append(2 * (got_mask & mask).sum() / (got_mask.sum() + mask.sum()))
    assert len(dices) >= 20 and min(dices) >= 0.95, dices
    cohort = load_cohort(out / "manifest.yaml", check_images="full", profile="smoke")
    assert cohort.n_patients == 26 and len(cohort.labelled) == 24 and cohort.labs == list(
        yaml.safe_load((small_cohort_dir / "manifest.yaml").read_text())["labs"])


@pytest.mark.slow
def test_prrt_run_uses_an_imported_cohort(dicom_export, small_cohort_dir, tmp_path):
    """From the DICOM export to a run and its book: import, then every notebook of the smoke profile, as a hospital's
    data come: a fifth of the patients without a PET and two others without a CT (the manifest shape of
    tests/e2e/test_shapes.py that runs here: every fusion still predicts every labelled patient)."""
    from shape_checks import check_shape_run

    from prrt.cli import main

    out = tmp_path / "hospital"
    assert main(["import-dicom", str(dicom_export / "export"), "--out", str(out), "--table",
                 str(dicom_export / "clinical.csv"), "--template", str(small_cohort_dir / "manifest.yaml")]) == 0
    assert main(["validate", str(out / "manifest.yaml"), "--profile", "smoke"]) == 0
    doc = yaml.safe_load((out / "manifest.yaml").read_text())
    table = out / doc["table"] if not Path(doc["table"]).is_absolute() else Path(doc["table"])
    df = pd.read_csv(table, dtype=str, keep_default_na=False)
    df.loc[[0, 5, 10, 15, 20], doc["images"]["pet"]] = ""
    df.loc[[2, 7], doc["images"]["ct"]] = ""
    df.to_csv(table, index=False)
    checked = load_cohort(out / "manifest.yaml", check_images="full", profile="smoke")
    assert len(checked.warnings) == 2, checked.warnings  # one per image column with blanks
    run_dir = tmp_path / "runs" / "hospital"
    assert main(["run", "--manifest", str(out / "manifest.yaml"), "--profile", "smoke", "--run-dir", str(run_dir),
                 "--seed", "3"]) == 0
    summary = pd.read_csv(run_dir / "results" / "summary.csv").set_index("model")
    assert summary.loc[["lab_rf", "pet_cnn", "ct_cnn", "lab_pet_ct_fusion"], "status"].eq("ran").all()
    check_shape_run(doc, run_dir, checked, some_without_images=True)


def test_philips_counts_with_their_suv_scale_factor_and_an_id_map(tmp_path, pet_phantom):
    """Units CNTS with the Philips SUV scale factor (7053,1000) gives SUV; --id-map names the patients; a clinical
    table without a row for an imported patient is an error naming the column."""
    suv, lesion = pet_phantom
    tags = pet_tags(units="CNTS")
    st = study("PHILIPS-1")
    counts = suv * 400.0
    series = write_series(_image(counts), tmp_path / "src" / "pet", "PT", st, number=3, description="PET", pet=tags)
    import pydicom

    for p in (tmp_path / "src" / "pet").glob("*.dcm"):
        ds = pydicom.dcmread(p)
        ds.add_new((0x7053, 0x0010), "LO", "Philips PET Private Group")
        ds.add_new((0x7053, 0x1000), "DS", "0.0025")
        ds.save_as(p)
    pd.DataFrame({"dicom_patient_id": ["PHILIPS-1"], "patient_id": ["NET-7"]}).to_csv(tmp_path / "map.csv", index=False)
    r = import_dicom(tmp_path / "src", tmp_path / "out", id_map=tmp_path / "map.csv", progress=False, log=lambda m: None)
    assert list(r.patients) == ["NET-7"] and r.patients["NET-7"]["suv"]["factor"] == pytest.approx(0.0025)
    grid = _image(counts)
    assert np.allclose(_load(tmp_path / "out" / "images" / "NET-7" / "pet.nii.gz", grid)[lesion], 12.0, rtol=1e-3)
    pd.DataFrame({"patient_id": ["SOMEONE-ELSE"], "age": [60]}).to_csv(tmp_path / "clinical.csv", index=False)
    with pytest.raises(DicomImportError, match=r"--table .*: no row for 1 imported patient\(s\), e.g. \['PHILIPS-1'\]"):
        import_dicom(tmp_path / "src", tmp_path / "out2", table=tmp_path / "clinical.csv", progress=False,
                     log=lambda m: None)
    assert series


def test_an_rtstruct_that_names_only_the_frame_of_reference_lands_on_the_series_it_was_drawn_on(tmp_path, pet_phantom):
    """Contours drawn on the CT (finer slices than the PET), the RTSTRUCT naming no series: the mask is put on the CT,
    the series whose slices the contours lie on."""
    suv, _ = pet_phantom
    st = study("RS-CT")
    tags = pet_tags()
    write_series(_image(bqml(suv, 185e6, 72.5, MINUTES, GA68_HALF_LIFE)), tmp_path / "src" / "pet", "PT", st, number=3,
                 description="PET", pet=tags)
    ct_img = _image(np.zeros((20, 16, 16)) - 100, spacing=(4.0, 4.0, 2.5))
    write_series(ct_img, tmp_path / "src" / "ct", "CT", st, number=2, description="CT")
    lesion = _sphere((20, 16, 16), (10, 8, 7), 4)
    ds = write_rtstruct(tmp_path / "src" / "rs.dcm", ct_img, reread(tmp_path / "src" / "ct"), st, {"lesion": lesion})
    del ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    ds.save_as(tmp_path / "src" / "rs.dcm", enforce_file_format=True)
    r = import_dicom(tmp_path / "src", tmp_path / "out", progress=False, log=lambda m: None)
    (pid, entry), = r.patients.items()
    assert entry["mask"]["on"] == "ct"
    mask = _load(tmp_path / "out" / "images" / pid / "mask.nii.gz", ct_img) > 0
    assert 2 * (mask & lesion).sum() / (mask.sum() + lesion.sum()) >= 0.95


def test_of_several_studies_the_earliest_with_a_pet_is_taken_unless_study_says_otherwise(tmp_path, pet_phantom):
    suv, _ = pet_phantom
    values = bqml(suv, 185e6, 72.5, MINUTES, GA68_HALF_LIFE)
    early = {**study("TWO-STUDIES"), "StudyDate": "20230101", "StudyDescription": "PET-CT baseline"}
    late = {**early, "StudyInstanceUID": "1.2.3.4.5.6", "StudyDate": "20240305", "StudyDescription": "PET-CT restaging",
            "FrameOfReferenceUID": "1.2.3.4.5.7"}
    write_series(_image(values), tmp_path / "src" / "a", "PT", early, number=3, description="PET", pet=pet_tags())
    write_series(_image(values[:8]), tmp_path / "src" / "b", "PT", late, number=3, description="PET", pet=pet_tags())
    said = []
    r = import_dicom(tmp_path / "src", tmp_path / "o1", progress=False, log=said.append)
    assert next(iter(r.patients.values()))["pet"]["slices"] == 10
    assert any("2 studies; took the earliest with a PET (20230101); --study chooses another" in s for s in said), said
    r = import_dicom(tmp_path / "src", tmp_path / "o2", progress=False, log=lambda m: None, study="restaging")
    assert next(iter(r.patients.values()))["pet"]["slices"] == 8
