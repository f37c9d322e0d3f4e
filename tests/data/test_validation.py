"""`prrt validate` is the gate: one table of bad inputs, each with the error or warning it must get.

Each case edits a copy of the small synthetic cohort (table, manifest or images) and names what the
message must say; ``{id0}``, ``{id1}`` … stand for the table's own patient IDs of rows 0, 1, ….
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import edit_manifest, problems_of

from prrt.cli import main
from prrt.data.checks import min_patients_per_class
from prrt.data.image_checks import box_gap_mm
from prrt.data.load import CHECKS, load_cohort
from prrt.data.manifest import ManifestError
from prrt.data.privacy import identifier_tokens, pseudonymise
from prrt.profiles import get_profile


def _table(d):
    return pd.read_csv(d / "cohort.csv", dtype=str, keep_default_na=False)


def _edit_table(fn):
    def edit(d):
        df = _table(d)
        df = fn(df) if fn(df) is not None else df
        df.to_csv(d / "cohort.csv", index=False)
    return edit


def _cells(**values):
    """Set cells: ``_cells(ggt={2: "inf"})``."""
    def fn(df):
        for col, rows in values.items():
            for i, v in rows.items():
                df.loc[i, col] = v
        return df
    return _edit_table(fn)


def _image(row: int, column: str, change: Callable):
    """Rewrite the NIfTI of table row ``row``, column ``column``: ``change(data, affine) -> (data, affine)``."""
    def edit(d):
        f = d / _table(d).loc[row, column]
        img = nib.load(f)
        data, affine = change(np.asanyarray(img.dataobj).copy(), img.affine.copy())
        nib.save(nib.Nifti1Image(data, affine), f)
    return edit


def _shift(mm):
    def change(data, affine):
        affine[:3, 3] += mm
        return data, affine
    return change


def _lesions_beyond_the_scan(data, affine):
    """The mask's grid moved along its first axis until it overlaps the scan by 8 voxels, with its only lesion
    voxels at the far end: the fields of view overlap, the lesions lie outside the scan."""
    out = np.zeros_like(data)
    n = data.shape[0]
    out[-4:, data.shape[1] // 2, data.shape[2] // 2] = 1
    affine[:3, 3] += affine[:3, 0] * (n - 8)
    return out, affine


def _keep_rows(keep: Callable):
    return _edit_table(lambda df: df[keep(df)].reset_index(drop=True))


def _label_column(values: Callable):
    def edit(d):
        df = _table(d)
        df["response"] = values(df)
        df.to_csv(d / "cohort.csv", index=False)
        edit_manifest(d / "manifest.yaml", endpoint={"label": "response"})
    return edit


def _manifest(**changes):
    return lambda d: edit_manifest(d / "manifest.yaml", **changes)


def _both(*edits):
    def edit(d):
        for e in edits:
            e(d)
    return edit


def _short(df):
    t, e = df["pfs_months"].astype(float), df["progressed"].astype(float)
    return (e == 1) & (t <= 12)


@dataclass
class Case:
    name: str
    edit: Callable
    severity: str              # "error" or "warning"
    patterns: tuple            # regular expressions the message must contain
    check_images: str = "full"
    alone: bool = True         # no problem of the other severity (an error makes a warning case fail)


CASES = [
    Case("one class only", _label_column(lambda df: "0"), "error", (r"every labelled patient is in one class",
                                                                    r"response = 1: 0, response = 0: 26")),
    Case("too few in a class", _keep_rows(lambda df: ~_short(df) | df.index.isin(df.index[_short(df)][:4])),
         "error", (r"at least 5 in each class", r"short PFS: 4", r"demo profile")),
    Case("five patients", _keep_rows(lambda df: df.index < 5), "error", (r"too few patients per class",)),
    Case("PFS in days", _edit_table(lambda df: df.assign(pfs_months=(df["pfs_months"].astype(float) * 30.44)
                                                         .round(0).astype(str))),
         "warning", (r"column 'pfs_months'", r"is PFS recorded in days"), alone=False),  # (and one class: an error)
    Case("blank mask cell", _cells(lesion_mask_path={3: ""}), "warning",
         (r"column 'lesion_mask_path'", r"1 of 26 patients have no mask image", r"'{id3}' \(row 5\)",
          r"PET threshold")),
    Case("blank PET cell", _cells(pet_path={3: ""}), "warning",
         (r"column 'pet_path'", r"1 of 26 patients have no PET \(empty cell\)", r"'{id3}' \(row 5\)",
          r"the PET models are fitted and scored without them",
          r"the fusions predict them without PET and its lesion features")),
    Case("blank CT cell", _cells(ct_path={3: "", 4: ""}), "warning",
         (r"column 'ct_path'", r"2 of 26 patients have no CT \(empty cell\)", r"the fusions predict them without CT$")),
    Case("no PET at all", _cells(pet_path={i: "" for i in range(26)}), "error",
         (r"column 'pet_path'", r"no patient has a PET although the manifest names PET images")),
    Case("identifier-like clinical column",
         _both(_edit_table(lambda df: df.assign(birth_date=[f"19{40 + i}-03-0{i % 9 + 1}" for i in range(len(df))])),
               _manifest(clinical=["age", "sex", "birth_date"])),
         "error", (r"column 'birth_date'", r"looks like an identifier")),
    Case("record numbers as a clinical number",
         _both(_edit_table(lambda df: df.assign(mrn=[str(40312877 + 7919 * i) for i in range(len(df))])),
               _manifest(clinical=["age", "mrn"])),
         "error", (r"column 'mrn'", r"looks like a record number or a date")),
    Case("all-zero mask", _image(2, "lesion_mask_path", lambda a, f: (np.zeros_like(a), f)), "warning",
         (r"patient '{id2}' \(row 4\), column 'lesion_mask_path'", r"no lesion voxel")),
    Case("negative mask label", _image(2, "lesion_mask_path", lambda a, f: (np.where(a > 0, -1, 0).astype(np.int16), f)),
         "error", (r"patient '{id2}'", r"negative label")),
    Case("fractional mask label", _image(2, "lesion_mask_path", lambda a, f: (((a > 0) * 0.5).astype(np.float32), f)),
         "error",
         (r"patient '{id2}'", r"does not look like a label mask")),
    Case("mask outside the PET", _image(4, "lesion_mask_path", _shift([0, 0, 2000])), "error",
         (r"patient '{id4}' \(row 6\), column 'lesion_mask_path'", r"the mask and the PET do not overlap",
          r"\d+ mm apart")),
    Case("lesions outside the PET", _image(4, "lesion_mask_path", _lesions_beyond_the_scan), "error",
         (r"patient '{id4}' \(row 6\), column 'lesion_mask_path'",
          r"none of the lesion mask's 4 lesion voxels lies inside the PET's field of view \(the lesions are \d+ mm "
          r"outside it\)")),
    Case("PET and CT apart", _image(4, "pet_path", _shift([900, 0, 0])), "error",
         (r"patient '{id4}'", r"the PET and the CT do not overlap in patient space: they are \d+ mm apart")),
    Case("lab of 1e12", _cells(chromogranin_a={1: "1e12"}), "error",
         (r"patient '{id1}' \(row 3\), column 'chromogranin_a'", r"outside the plausible range 0-1e\+06 ng/mL")),
    Case("albumin 9999 g/dL", _cells(albumin={1: "9999"}), "error", (r"column 'albumin'", r"0.5-7 g/dL")),
    Case("inf in a lab", _cells(ggt={2: "inf"}), "error", (r"patient '{id2}' \(row 4\), column 'ggt'",
                                                         r"'inf' is not a finite number")),
    Case("NaN text in a lab", _cells(ggt={2: "NaN", 5: "n/a"}), "warning",
         (r"column 'ggt'", r"read as missing", r"'{id2}' \(row 4\), '{id5}' \(row 7\)")),
    Case("IDs differing in case", _cells(patient_id={6: "net-0007", 7: "NET-0007"}), "error",
         (r"'NET-0007', 'net-0007'", r"rows 8, 9|rows 9, 8", r"letter case or Unicode form")),
    Case("IDs differing in Unicode form", _cells(patient_id={6: unicodedata.normalize("NFC", "Zoë-01"),
                                                            7: unicodedata.normalize("NFD", "Zoë-01")}),
         "error", (r"differ only in letter case or Unicode form",)),
    Case("endpoint listed as a lab", _manifest(labs=["chromogranin_a", "pfs_months"]), "error",
         (r"column 'pfs_months'", r"is the endpoint \(time\) and is also listed as a laboratory input")),
    Case("ID listed as clinical", _manifest(clinical=["age", "patient_id"]), "error",
         (r"column 'patient_id'", r"is the patient ID and is also listed as a clinical variable")),
    Case("lab in another unit", _manifest(units={"ggt": "µkat/L"}), "warning",
         (r"column 'ggt'", r"not range-checked")),
    Case("range for an unknown column", _manifest(ranges={"weight": [20, 300]}), "error",
         (r"column 'weight'", r"neither a lab nor a clinical column")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_a_clear_problem(case, cohort_copy):
    ids = list(_table(cohort_copy)["patient_id"])
    case.edit(cohort_copy)
    problems = problems_of(cohort_copy / "manifest.yaml", check_images=case.check_images, profile="demo")
    found = [p for p in problems if p.severity == case.severity]
    text = "\n".join(str(p) for p in found)
    for pattern in case.patterns:
        pattern = pattern.format(**{f"id{i}": re.escape(v) for i, v in enumerate(ids)})
        assert re.search(pattern, text), f"{pattern!r} not in the {case.severity}s:\n{text}\n(all: {problems})"
    if case.severity == "error":
        with pytest.raises(ManifestError):
            load_cohort(cohort_copy / "manifest.yaml", check_images=case.check_images, profile="demo")
    elif case.alone:
        cohort = load_cohort(cohort_copy / "manifest.yaml", check_images=case.check_images, profile="demo")
        assert cohort.warnings == found


def test_the_valid_cohort_has_no_problem(small_cohort_dir):
    assert problems_of(small_cohort_dir / "manifest.yaml", check_images="full", profile="demo") == []
    assert load_cohort(small_cohort_dir / "manifest.yaml", check_images="full", profile="demo").n_patients == 26


def test_checks_run_in_order_and_the_gates_stop_early(cohort_copy):
    assert [name for name, _, _ in CHECKS] == ["schema", "table", "ids", "endpoint", "values", "images", "geometry",
                                               "privacy", "feasibility"]
    edit_manifest(cohort_copy / "manifest.yaml", labs=["no_such_column"])
    _cells(ggt={0: "high"})(cohort_copy)
    problems = problems_of(cohort_copy / "manifest.yaml")
    assert len(problems) == 1 and "no_such_column" in str(problems[0])  # the table gate stopped the rest


def test_range_in_the_manifest_replaces_the_built_in_one(cohort_copy):
    _edit_table(lambda df: df.assign(albumin=(df["albumin"].astype(float) * 10).round(1).astype(str)))(cohort_copy)
    _cells(albumin={1: "35"})(cohort_copy)
    edit_manifest(cohort_copy / "manifest.yaml", units={"albumin": "g/L"}, ranges={"albumin": [10, 60]})
    assert not problems_of(cohort_copy / "manifest.yaml", check_images="none")
    _cells(albumin={1: "61"})(cohort_copy)
    assert re.search(r"61 is outside the plausible range 10-60 g/L", str([p for p in problems_of(
        cohort_copy / "manifest.yaml", check_images="none") if p.severity == "error"]))


def test_minimum_class_size_follows_the_profile():
    # 3 folds: a class of 5 leaves at least 3 of it in every training part (the inner 3-fold CV); 4 leaves 2
    assert min_patients_per_class(get_profile("demo")) == 5 == min_patients_per_class(get_profile("smoke"))
    from dataclasses import replace

    assert min_patients_per_class(replace(get_profile("demo"), n_folds=5)) == 5
    assert min_patients_per_class(replace(get_profile("demo"), late_inner_folds=4)) == 6


def test_minimum_class_size_is_enough_for_the_splits():
    """With the minimum per class, every training part of the saved splits keeps enough of each class for an
    inner stratified 3-fold CV (each inner fold then has both classes); with one fewer, some training part does not."""
    from prrt.evaluation.splits import iter_folds, make_splits
    from prrt.learn.loop import inner_split

    profile = get_profile("demo")
    n = min_patients_per_class(profile)

    def fewest_in_a_training_part(n_short):
        y = pd.Series([1] * n_short + [0] * n, index=[f"P{i:03d}" for i in range(n_short + n)])
        fewest = []
        for fold in iter_folds(make_splits(y, profile.n_folds, profile.n_repeats, seed=1)):
            train = list(fold.train)
            inner_split(train, y, 0.2, seed=1)  # the networks' fitting/validation split works
            fewest.append(int(y.loc[train].value_counts().min()))
        return min(fewest)

    assert fewest_in_a_training_part(n) >= 3
    assert fewest_in_a_training_part(n - 1) < 3


def test_box_gap():
    a = (np.zeros(3), np.ones(3) * 10)
    assert box_gap_mm(a, (np.array([5, 5, 5]), np.array([20, 20, 20]))) == 0
    assert box_gap_mm(a, (np.array([13, 14, 0]), np.array([20, 20, 5]))) == pytest.approx(5.0)


def test_pseudonyms_never_equal_an_id():
    ids = [f"P{i:03d}" for i in range(1, 31)]
    mapping = pseudonymise(ids, "hospital")
    assert all(v.startswith("PS") for v in mapping.values()) and not set(mapping.values()) & set(ids)
    assert set(pseudonymise(["A-1", "B-2"], "x").values()) == {"P001", "P002"}
    from prrt.data.privacy import PSEUDONYM_PREFIXES

    every_prefix = [f"{p.lower()}001" for p in PSEUDONYM_PREFIXES]  # (case does not matter)
    with pytest.raises(ValueError, match=r"^every pseudonym prefix collides with the patient IDs; rename the IDs$"):
        pseudonymise(every_prefix, "x")
    # another cohort's IDs and pseudonyms are avoided too, with the prefixes asked for (external validation)
    assert set(pseudonymise(["A-1", "B-2"], "x", prefixes=("E", "EX"), taken=["e002"]).values()) == {"EX001", "EX002"}
    assert set(pseudonymise(["A-1", "B-2"], "x", prefixes=("E", "EX")).values()) == {"E001", "E002"}


# ---- the command ---------------------------------------------------------------------------------
def test_warnings_exit_0_and_strict_turns_them_into_errors(cohort_copy, capsys):
    _cells(ggt={2: "NaN"})(cohort_copy)
    m = str(cohort_copy / "manifest.yaml")
    assert main(["validate", m, "--check-images", "none"]) == 0
    out = capsys.readouterr().out
    assert "is valid, with 1 warning(s)" in out and "warning: column 'ggt'" in out
    assert main(["validate", m, "--check-images", "none", "--strict"]) == 2
    assert "1 problem(s) (0 error(s), 1 warning(s))" in capsys.readouterr().err


def test_validate_names_the_groups_of_a_generic_label(cohort_copy, capsys):
    df = _table(cohort_copy)
    df["response"] = (df.index % 2).astype(str)
    df.to_csv(cohort_copy / "cohort.csv", index=False)
    edit_manifest(cohort_copy / "manifest.yaml", endpoint={"label": "response"}, labs=[], clinical=[])
    assert main(["validate", str(cohort_copy / "manifest.yaml"), "--check-images", "none"]) == 0
    out = capsys.readouterr().out
    assert "response = 1: 13, response = 0: 13" in out and "PFS" not in out


def test_validate_checks_the_profile_it_is_given(cohort_copy, capsys):
    _keep_rows(lambda df: ~_short(df) | df.index.isin(df.index[_short(df)][:4]))(cohort_copy)
    m = str(cohort_copy / "manifest.yaml")
    assert main(["validate", m, "--check-images", "none", "--profile", "smoke"]) == 2
    assert "for the smoke profile's repeated stratified 3-fold" in capsys.readouterr().err


# ---- what a book must never contain -----------------------------------------------------------------
def test_identifier_tokens_cover_ids_rare_values_paths_and_the_manifest_folder(cohort_copy):
    df = _table(cohort_copy)
    df.loc[0, "primary_site"] = "Hospital-Ward-7B"
    df.to_csv(cohort_copy / "cohort.csv", index=False)
    c = load_cohort(cohort_copy / "manifest.yaml", check_images="none")
    tokens = identifier_tokens(c)
    assert set(df["patient_id"]) <= set(tokens)
    assert tokens["Hospital-Ward-7B"] == "a rare value of column 'primary_site'"
    common = c.data["sex"].value_counts()
    assert common.min() >= 5 and not set(common.index) & set(tokens)  # common levels are published in Table 1
    assert str(c.data["ct_path"].iloc[0]) in tokens and df["patient_id"].iloc[0] in tokens
    assert "ct.nii.gz" not in tokens and "images" not in tokens  # shared by every patient
    assert tokens[str(cohort_copy)] == "the manifest's folder"


def test_yaml_of_the_table_is_not_read_as_na(cohort_copy):
    """'NA' or 'None' as a category is text, read as missing only with a warning, not silently."""
    _cells(sex={0: "NA"})(cohort_copy)
    cohort = load_cohort(cohort_copy / "manifest.yaml", check_images="none")
    assert [p.column for p in cohort.warnings] == ["sex"]
    assert pd.isna(cohort.data.loc[cohort.pseudonym_of_id()[_table(cohort_copy)["patient_id"][0]], "sex"])


# ---- a second cohort -----------------------------------------------------------------------------------
def test_a_second_cohort_must_match_the_first(small_cohort_dir, cohort_copy):
    from prrt.data.external import check_compatible

    development = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    # the same patients: refused
    same = check_compatible(development, load_cohort(cohort_copy / "manifest.yaml", check_images="none"))
    assert [p.message for p in same] == ["26 patient ID(s) are in both cohorts: an external cohort must not hold "
                                         "patients the models were fitted on"]
    df = _table(cohort_copy)
    df["patient_id"] = "EXT-" + df["patient_id"]
    df.to_csv(cohort_copy / "cohort.csv", index=False)
    assert check_compatible(development, load_cohort(cohort_copy / "manifest.yaml", check_images="none")) == []
    doc = yaml.safe_load((cohort_copy / "manifest.yaml").read_text())
    edit_manifest(cohort_copy / "manifest.yaml", labs=[c for c in doc["labs"] if c != "ggt"],
                  units={**doc["units"], "albumin": "g/L"}, images={"ct": "ct_path"},
                  endpoint={**doc["endpoint"], "horizon_months": 24})
    _edit_table(lambda d: d.assign(albumin=(d["albumin"].astype(float) * 10).round(1).astype(str)))(cohort_copy)
    text = "\n".join(map(str, check_compatible(development, load_cohort(cohort_copy / "manifest.yaml",
                                                                           check_images="none"))))
    assert "the endpoint is PFS at 24 months, the development cohort's is PFS at 12 months" in text
    assert "column 'ggt'" in text and "column 'albumin'" in text and "unit 'g/L' differs from the development cohort's 'g/dL'" in text
    assert "column 'images.pet'" in text and "column 'images.mask'" in text


def test_an_invalid_manifest_lists_its_warnings_too(cohort_copy, capsys):
    """One pass fixes everything: the errors first, then the warnings, with their counts."""
    _cells(ggt={2: "high"}, chromogranin_a={5: "NA"})(cohort_copy)
    assert main(["validate", str(cohort_copy / "manifest.yaml"), "--check-images", "none"]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s) (1 error(s), 1 warning(s))" in err
    lines = [ln for ln in err.splitlines() if ln.startswith("  - ")]
    assert "'high' is not a number" in lines[0] and lines[1].startswith("  - warning: column 'chromogranin_a'")


def test_a_full_check_reads_each_image_header_once(small_cohort_dir, monkeypatch):
    """The full check reads every file's header once, for the header checks, and then the image with its values."""
    from prrt.data import image_checks
    from prrt.imaging import io

    read = []
    real = io.read_header
    monkeypatch.setattr(io, "read_header", lambda path, *a, **k: read.append(str(path)) or real(path, *a, **k))
    monkeypatch.setattr(image_checks, "read_header", io.read_header)
    cohort = load_cohort(small_cohort_dir / "manifest.yaml", check_images="full", profile="demo")
    files = [cohort.image_path(p, m) for p in cohort.data.index for m in cohort.modalities]
    assert sorted(read) == sorted(str(f) for f in files if f is not None) and len(read) == len(set(read)) > 50


def test_the_images_are_checked_on_threads_with_the_problems_of_a_loop_in_its_order(cohort_copy, monkeypatch):
    """Problems of several patients and modalities (a missing CT, a CT that is no image, a mask with a negative label,
    another with a fractional one): on threads, one patient per thread, the same problems in the order of the
    modalities and rows as on one thread."""
    from prrt.imaging import threads

    df = _table(cohort_copy)
    (cohort_copy / df.loc[3, "ct_path"]).unlink()
    (cohort_copy / df.loc[1, "ct_path"]).write_bytes(b"not a NIfTI file")
    _image(5, "lesion_mask_path", lambda a, f: (np.where(a > 0, -1, 0).astype(np.int16), f))(cohort_copy)
    _image(0, "lesion_mask_path", lambda a, f: (((a > 0) * 0.5).astype(np.float32), f))(cohort_copy)
    threaded = problems_of(cohort_copy / "manifest.yaml", check_images="full", profile="demo")
    monkeypatch.setattr(threads, "default_workers", lambda: 1)
    assert problems_of(cohort_copy / "manifest.yaml", check_images="full", profile="demo") == threaded
    ids = list(df["patient_id"])
    assert [(p.patient, p.column) for p in threaded] == [(ids[1], "ct_path"), (ids[3], "ct_path"),
                                                         (ids[0], "lesion_mask_path"), (ids[5], "lesion_mask_path")]
