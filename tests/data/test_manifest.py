"""Manifest validation: a valid cohort loads; each kind of bad input gets a message that names it."""

from __future__ import annotations

import gzip
import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import edit_manifest

from prrt.cli import main
from prrt.data.load import load_cohort
from prrt.data.manifest import ManifestError, load_schema
from prrt.data.privacy import pseudonymise

ROW = r" \(row \d+\)"  # a problem names the table's own ID and its line in the CSV


def table(d):
    return pd.read_csv(d / "cohort.csv", dtype=str)


def write(d, df):
    df.to_csv(d / "cohort.csv", index=False)


# ---- the valid cohort ----------------------------------------------------------------------------
def test_valid_cohort_loads_with_pseudonyms_and_labels(small_cohort_dir):
    c = load_cohort(small_cohort_dir / "manifest.yaml", check_images="full")
    raw = table(small_cohort_dir)
    assert c.n_patients == 26 and c.synthetic
    assert list(c.data.index) == [f"P{i:03d}" for i in range(1, 27)]
    assert not set(raw["patient_id"]) & set(c.data.index)  # no real ID is used as an index
    # labels: event at or before 12 months = 1, beyond = 0, censored before = NaN
    ids = c.pseudonym_of_id()
    for _, row in raw.iterrows():
        t, e = float(row["pfs_months"]), int(row["progressed"])
        lab = c.data.at[ids[row["patient_id"]], "label"]
        expected = 1.0 if (e == 1 and t <= 12) else 0.0 if (t > 12 or (e == 0 and t >= 12)) else np.nan
        assert (np.isnan(lab) and np.isnan(expected)) or lab == expected
    assert c.n_excluded_censored == 2 and len(c.labelled) == 24
    assert c.modalities == ["ct", "pet", "mask", "organs"]
    assert "sex" in c.categorical and "age" not in c.categorical
    assert c.data["chromogranin_a"].dtype == float


def test_pseudonyms_do_not_depend_on_row_order():
    ids = ["A1", "B2", "C3", "D4"]
    assert pseudonymise(ids, "x") == pseudonymise(ids[::-1], "x")
    assert sorted(pseudonymise(ids, "x").values()) == ["P001", "P002", "P003", "P004"]


def test_label_endpoint_form(cohort_copy):
    df = table(cohort_copy)
    df["short"] = (df["pfs_months"].astype(float) <= 12).astype(int)
    write(cohort_copy, df)
    edit_manifest(cohort_copy / "manifest.yaml", endpoint={"label": "short"})
    c = load_cohort(cohort_copy / "manifest.yaml", check_images="none")
    assert c.horizon_months is None and c.data["label"].notna().all()
    assert not c.has_survival


def test_schema_file_in_data_manifest_is_the_package_schema():
    from pathlib import Path

    shipped = Path(__file__).parents[2] / "data_manifest" / "schema.json"
    assert json.loads(shipped.read_text()) == load_schema()


def test_demo_manifest_matches_the_schema_and_generator():
    from pathlib import Path

    import yaml

    from prrt.data.synthetic import manifest_dict

    demo = yaml.safe_load((Path(__file__).parents[2] / "data_manifest" / "demo.yaml").read_text())
    expected = manifest_dict(table_rel="../data/demo/cohort.csv", image_root="../data/demo",
                             ct_pretraining="../data/demo/ct_pretraining")
    assert demo == expected


def test_validate_cli_prints_summary(small_cohort_dir, capsys):
    assert main(["validate", str(small_cohort_dir / "manifest.yaml")]) == 0
    out = capsys.readouterr().out
    assert "patients: 26" in out
    assert "labelled at 12 months: 24" in out
    assert "censored before the horizon): 2" in out
    assert "ct 26/26, pet 26/26, mask 26/26, organs 26/26" in out
    assert "missing values" in out


# ---- bad inputs: each names the patient, the column and/or the file -------------------------------
def expect_problem(manifest, *patterns, check_images="full"):
    with pytest.raises(ManifestError) as info:
        load_cohort(manifest, check_images=check_images)
    msg = str(info.value)
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in:\n{msg}"
    return msg


def test_bad_yaml(cohort_copy):
    m = cohort_copy / "manifest.yaml"
    m.write_text("name: x\ntable: [unclosed\n")
    expect_problem(m, "not valid YAML at line", re.escape(str(m)))


def test_schema_violation_names_the_field(cohort_copy):
    m = edit_manifest(cohort_copy / "manifest.yaml", endpoint={"time": "pfs_months"}, colour="blue")
    msg = expect_problem(m, "field 'endpoint'", "either \\{time, event, horizon_months\\}",
                         "Additional properties .*'colour'")
    assert msg.count("  - ") == 2


def test_missing_column(cohort_copy):
    m = edit_manifest(cohort_copy / "manifest.yaml", labs=["chromogranin_a", "serotonin"])
    expect_problem(m, "column 'serotonin'", "field 'labs\\[1\\]'", "cohort.csv")


def test_duplicate_id(cohort_copy):
    df = table(cohort_copy)
    dup = df.loc[3, "patient_id"]
    df.loc[5, "patient_id"] = dup
    write(cohort_copy, df)
    expect_problem(cohort_copy / "manifest.yaml", f"patient '{dup}'{ROW}", "appears 2 times", "column 'patient_id'")


def test_empty_id(cohort_copy):
    df = table(cohort_copy)
    df.loc[4, "patient_id"] = ""
    write(cohort_copy, df)
    expect_problem(cohort_copy / "manifest.yaml", "patient 'row 6'", "patient ID is empty")


def test_text_in_lab_column(cohort_copy):
    df = table(cohort_copy)
    pid = df.loc[2, "patient_id"]
    df.loc[2, "ggt"] = "high"
    write(cohort_copy, df)
    expect_problem(cohort_copy / "manifest.yaml", f"patient '{pid}'{ROW}, column 'ggt'", "'high' is not a number")


def test_missing_lab_value_is_allowed(cohort_copy):
    df = table(cohort_copy)
    df.loc[2, "ggt"] = ""
    write(cohort_copy, df)
    c = load_cohort(cohort_copy / "manifest.yaml", check_images="none")
    assert c.data["ggt"].isna().sum() >= 1


def test_negative_time(cohort_copy):
    df = table(cohort_copy)
    pid = df.loc[1, "patient_id"]
    df.loc[1, "pfs_months"] = "-3"
    write(cohort_copy, df)
    expect_problem(cohort_copy / "manifest.yaml", f"patient '{pid}'{ROW}, column 'pfs_months'", "negative")


def test_missing_time(cohort_copy):
    df = table(cohort_copy)
    pid = df.loc[1, "patient_id"]
    df.loc[1, "pfs_months"] = ""
    write(cohort_copy, df)
    expect_problem(cohort_copy / "manifest.yaml", f"patient '{pid}'{ROW}, column 'pfs_months'", "value is missing")


def test_event_of_two(cohort_copy):
    df = table(cohort_copy)
    pid = df.loc[0, "patient_id"]
    df.loc[0, "progressed"] = "2"
    write(cohort_copy, df)
    expect_problem(cohort_copy / "manifest.yaml", f"patient '{pid}'{ROW}, column 'progressed'", "event is 2")


def test_label_of_three(cohort_copy):
    df = table(cohort_copy)
    pid = df.loc[0, "patient_id"]
    df["short"] = "0"
    df.loc[0, "short"] = "3"
    write(cohort_copy, df)
    edit_manifest(cohort_copy / "manifest.yaml", endpoint={"label": "short"})
    expect_problem(cohort_copy / "manifest.yaml", f"patient '{pid}'{ROW}, column 'short'", "label is 3")


def test_missing_table(cohort_copy):
    m = edit_manifest(cohort_copy / "manifest.yaml", table="nowhere.csv")
    expect_problem(m, "table file not found", "nowhere.csv")


def test_missing_image_file(cohort_copy):
    df = table(cohort_copy)
    pid = df.loc[0, "patient_id"]
    (cohort_copy / df.loc[0, "pet_path"]).unlink()
    expect_problem(cohort_copy / "manifest.yaml", f"patient '{pid}'{ROW}, column 'pet_path'", "pet image file not found",
                   "pet.nii.gz", check_images="exists")


def test_corrupt_nifti(cohort_copy):
    df = table(cohort_copy)
    pid = df.loc[1, "patient_id"]
    f = cohort_copy / df.loc[1, "ct_path"]
    f.write_bytes(gzip.compress(b"this is not a NIfTI file at all" * 20))
    expect_problem(cohort_copy / "manifest.yaml", f"patient '{pid}'{ROW}, column 'ct_path'", "cannot be read",
                   re.escape(str(f)))


def test_truncated_nifti(cohort_copy):
    df = table(cohort_copy)
    pid = df.loc[1, "patient_id"]
    f = cohort_copy / df.loc[1, "pet_path"]
    f.write_bytes(f.read_bytes()[:2000])
    expect_problem(cohort_copy / "manifest.yaml", f"patient '{pid}'{ROW}, column 'pet_path'", "cannot be read")


def test_2d_image(cohort_copy):
    df = table(cohort_copy)
    pid = df.loc[2, "patient_id"]
    f = cohort_copy / df.loc[2, "ct_path"]
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(0, 100, (32, 32)).astype(np.int16), np.eye(4)), f)
    expect_problem(cohort_copy / "manifest.yaml", f"patient '{pid}'{ROW}, column 'ct_path'", "is 2D", check_images="header")


def test_pet_in_bq_per_ml(cohort_copy):
    df = table(cohort_copy)
    pid = df.loc[3, "patient_id"]
    f = cohort_copy / df.loc[3, "pet_path"]
    img = nib.load(f)
    nib.save(nib.Nifti1Image((img.get_fdata() * 5000).astype(np.float32), img.affine), f)
    expect_problem(cohort_copy / "manifest.yaml", f"patient '{pid}'{ROW}, column 'pet_path'", "Bq/mL", "not SUV")


def test_ct_not_in_hounsfield_units(cohort_copy):
    df = table(cohort_copy)
    pid = df.loc[3, "patient_id"]
    f = cohort_copy / df.loc[3, "ct_path"]
    img = nib.load(f)
    nib.save(nib.Nifti1Image((img.get_fdata() + 1024).astype(np.int16), img.affine), f)
    expect_problem(cohort_copy / "manifest.yaml", f"patient '{pid}'{ROW}, column 'ct_path'", "not Hounsfield units")


def test_all_problems_reported_at_once(cohort_copy):
    df = table(cohort_copy)
    df.loc[0, "ggt"] = "n/a?"
    df.loc[1, "progressed"] = "7"
    write(cohort_copy, df)
    msg = expect_problem(cohort_copy / "manifest.yaml", "'n/a\\?' is not a number", "event is 7")
    assert "2 problem(s)" in msg


def test_validate_cli_exit_code_2(cohort_copy, capsys):
    df = table(cohort_copy)
    df.loc[0, "progressed"] = "2"
    write(cohort_copy, df)
    assert main(["validate", str(cohort_copy / "manifest.yaml")]) == 2
    assert "event is 2" in capsys.readouterr().err


def test_labels_at_the_horizon(cohort_copy):
    """Event at 12.0 = short PFS; censored at exactly 12.0 = long PFS (progression-free through it);
    censored at 11.9 = no label; event after 12 = long PFS."""
    import pandas as pd

    path = cohort_copy / "cohort.csv"
    df = pd.read_csv(path)
    cases = [(12.0, 1, 1.0), (12.0, 0, 0.0), (11.9, 0, np.nan), (12.1, 1, 0.0), (12.1, 0, 0.0)]
    for i, (t, e, _) in enumerate(cases):
        df.loc[i, ["pfs_months", "progressed"]] = [t, e]
    df.to_csv(path, index=False)
    c = load_cohort(cohort_copy / "manifest.yaml", check_images="none")
    ids = c.pseudonym_of_id()
    for i, (t, e, expected) in enumerate(cases):
        got = c.data.at[ids[df.loc[i, "patient_id"]], "label"]
        assert (np.isnan(got) and np.isnan(expected)) or got == expected, (t, e, got)


def test_pfs_label_table():
    from prrt.data.cohort import pfs_label

    time = [0.0, 3.0, 11.9, 12.0, 12.0, 11.9, 12.1, 12.1, 40.0]
    event = [1, 1, 1, 1, 0, 0, 1, 0, 0]
    expected = [1, 1, 1, 1, 0, np.nan, 0, 0, 0]
    np.testing.assert_array_equal(pfs_label(time, event, 12.0), np.array(expected, float))
    # another horizon moves the boundary with it
    np.testing.assert_array_equal(pfs_label([6.0, 6.0, 5.0], [1, 0, 0], 6.0), [1.0, 0.0, np.nan])
    # without an event flag, follow-up exactly to the horizon says nothing; beyond it, long PFS
    np.testing.assert_array_equal(pfs_label([12.0, 12.1], [np.nan, np.nan], 12.0), [np.nan, 0.0])


def test_image_path_of_a_patient_without_that_image_is_none(cohort_copy):
    import pandas as pd

    from prrt.data.load import load_cohort

    table = cohort_copy / "cohort.csv"
    df = pd.read_csv(table, dtype=str)
    df.loc[0, "organ_mask_path"] = ""  # an optional image (a missing PET is an error)
    df.to_csv(table, index=False)
    c = load_cohort(cohort_copy / "manifest.yaml")
    paths = {p: c.image_path(p, "organs") for p in c.data.index}
    without = [p for p, v in paths.items() if v is None]
    assert len(without) == 1 and paths[without[0]] is None
    assert all(v.name == "organs.nii.gz" for p, v in paths.items() if p not in without)
    assert c.image_path(without[0], "xray") is None  # a modality the manifest does not name


def test_horizon_text_for_both_endpoint_forms(small_cohort_dir, cohort_copy):
    from prrt.study.notebook import horizon_text

    assert horizon_text(load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")) == "12 months"
    import pandas as pd

    df = pd.read_csv(cohort_copy / "cohort.csv")
    df["short_pfs"] = ((df["progressed"] == 1) & (df["pfs_months"] <= 12)).astype(int)
    df.to_csv(cohort_copy / "cohort.csv", index=False)
    m = edit_manifest(cohort_copy / "manifest.yaml", endpoint={"label": "short_pfs"})
    assert "own label" in horizon_text(load_cohort(m, check_images="none"))


def test_pseudonyms_follow_the_salted_hash_not_the_ids():
    """A fixed expected mapping (sorted by SHA-256 of "cohort:ID", not by ID or row order), and
    another cohort name gives another mapping."""
    from prrt.data.privacy import pseudonymise

    ids = ["A-1", "B-2", "C-3", "D-4"]
    assert pseudonymise(ids, "cohort-x") == {"C-3": "P001", "A-1": "P002", "D-4": "P003", "B-2": "P004"}
    assert pseudonymise(ids[::-1], "cohort-x") == pseudonymise(ids, "cohort-x")  # row order does not matter
    assert pseudonymise(ids, "cohort-y") == {"C-3": "P001", "B-2": "P002", "D-4": "P003", "A-1": "P004"}


def test_cohort_summary_counts(cohort_copy):
    import pandas as pd

    path = cohort_copy / "cohort.csv"
    df = pd.read_csv(path)
    df.loc[:1, "chromogranin_a"] = np.nan  # two missing values in one lab column
    df.to_csv(path, index=False)
    c = load_cohort(cohort_copy / "manifest.yaml", check_images="none")
    s = c.summary()
    lab = c.data["label"]
    assert s["patients"] == 26 and s["labelled"] == 24 and s["excluded_censored_before_horizon"] == 2
    assert s["short_pfs"] == int((lab == 1).sum()) and s["long_pfs"] == int((lab == 0).sum())
    assert s["short_pfs"] + s["long_pfs"] == 24 and 0 < s["short_pfs"] < 24
    missing = {col: int(df[col].isna().sum()) for col in c.labs + c.clinical}
    assert s["missing_values"] == {col: n for col, n in missing.items() if n > 0}  # complete columns left out
    assert s["missing_values"]["chromogranin_a"] >= 2 and any(n == 1 for n in missing.values())
    assert any(n == 0 for n in missing.values())
    assert s["modalities"] == {m: 26 for m in c.modalities} and s["horizon_months"] == 12
