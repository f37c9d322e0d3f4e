"""Validation of a data manifest: a sequence of small named checks.

:func:`validate` reads a manifest and runs the checks of :data:`CHECKS` in order, the way
scikit-learn's ``check_array`` family or a pandera schema read: each check looks at one thing
(schema, table, IDs, endpoint, values, images, geometry, privacy, feasibility), returns the
problems it found and records what later checks need on a :class:`Draft`. Every problem names the
table's own patient ID and row, the column and/or the file, so that a data manager can fix a table
in one pass. A problem is an **error** (``prrt run`` would fail, give a wrong answer or publish
what it must not) or a **warning** (probably a mistake, but the run can go on: ``prrt validate
--strict`` treats warnings as errors).

The checks that the rest depends on (schema, table) stop the sequence when they find an error; the
others all run, so that every problem is reported at once.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .manifest import MODALITIES, Cohort, ManifestError, Problem, _read_yaml, _schema_problems, pfs_label, \
    pseudonymise

ERROR, WARNING = "error", "warning"
#: Text that people put in a cell to say "no value"; read as missing, with a warning.
NA_TEXT = frozenset({"na", "n/a", "nan", "null", "none", "missing", "-", "--", "–", ".", "?", "#n/a", "nil",
                     "not available", "not done"})
#: Plausibility limits of the study's laboratory values and clinical numbers: (unit, low, high). A value
#: outside is physiologically impossible or a unit mix-up. A manifest may set its own under ``ranges``;
#: with another unit than the one here and no range of its own, a column is not range-checked (a warning).
DEFAULT_RANGES: dict[str, tuple[str, float, float]] = {
    "chromogranin_a": ("ng/mL", 0, 1e6),
    "ggt": ("U/L", 0, 5000),
    "alkaline_phosphatase": ("U/L", 0, 5000),
    "ast": ("U/L", 0, 10000),
    "alt": ("U/L", 0, 10000),
    "bilirubin": ("mg/dL", 0, 50),
    "albumin": ("g/dL", 0.5, 7),
    "creatinine": ("mg/dL", 0.05, 30),
    "haemoglobin": ("g/dL", 2, 25),
    "hemoglobin": ("g/dL", 2, 25),
    "leukocytes": ("10^9/L", 0, 500),
    "platelets": ("10^9/L", 0, 2500),
    "ldh": ("U/L", 0, 20000),
    "age": ("years", 0, 120),
    "ki67_percent": ("%", 0, 100),
    "prrt_cycles": ("cycles", 0, 20),
}
#: Median PFS above this many "months" suggests the column holds days.
PFS_MONTHS_PLAUSIBLE_MEDIAN = 100.0
#: A level of a text column seen in fewer patients than this is never published (Table 1 pools it).
RARE_LEVEL = 5
#: Folds of the inner cross-validation of the logistic regressions (prrt.tabular).
INNER_CV_FOLDS = 3


@dataclass
class Draft:
    """What the checks know about a manifest so far (filled in by the checks, in order)."""

    path: Path
    check_images: str
    profile: object | None
    doc: dict = field(default_factory=dict)
    table_path: Path | None = None
    image_root: Path | None = None
    df: pd.DataFrame | None = None
    ids: list[str] = field(default_factory=list)        # the table's own IDs ("row N" when empty)
    time: pd.Series | None = None
    event: pd.Series | None = None
    label: pd.Series | None = None
    values: dict[str, pd.Series] = field(default_factory=dict)   # labs and clinical, converted
    categorical: list[str] = field(default_factory=list)
    image_paths: dict[str, list] = field(default_factory=dict)
    headers: dict[tuple[int, str], dict] = field(default_factory=dict)
    #: per row, from the lesion mask read in "full" mode: its bounds in mm (None if empty) and, per scan,
    #: (lesion voxels inside the scan's field of view, all lesion voxels); not the mask itself (memory)
    lesions: dict[int, dict] = field(default_factory=dict)
    pretraining: dict = field(default_factory=dict)

    # ---- what the manifest names ---------------------------------------------------------------
    @property
    def endpoint(self) -> dict:
        return self.doc["endpoint"]

    @property
    def image_columns(self) -> dict:
        return self.doc.get("images", {}) or {}

    @property
    def labs(self) -> list[str]:
        return list(self.doc.get("labs", []) or [])

    @property
    def clinical(self) -> list[str]:
        return list(self.doc.get("clinical", []) or [])

    @property
    def tfile(self) -> str:
        return str(self.table_path)

    def problem(self, message, i=None, column=None, file=None, severity=ERROR) -> Problem:
        """A problem of table row ``i`` (0-based; named by the table's ID and its line in the CSV)."""
        return Problem(message, patient=None if i is None else self.ids[i], column=column,
                       file=self.tfile if file is None else file, severity=severity,
                       row=None if i is None else i + 2)

    def rows_text(self, rows, limit: int = 5) -> str:
        """``'A' (row 2), 'B' (row 7) and 3 more``: patients of a warning that covers several rows."""
        rows = list(rows)
        shown = ", ".join(f"{self.ids[i]!r} (row {i + 2})" for i in rows[:limit])
        return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


@dataclass
class Validation:
    """The outcome of :func:`validate`: every problem found, and the cohort when there is no error."""

    manifest: Path
    problems: list[Problem]
    cohort: Cohort | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def raise_for_errors(self, strict: bool = False) -> None:
        """Raise :class:`ManifestError` when there is an error (with ``strict``, also when there is only a
        warning); it lists every problem, errors first, so that one pass fixes them all."""
        if self.errors or (strict and self.problems):
            raise ManifestError(self.manifest, self.errors + self.warnings)


# ---- the checks --------------------------------------------------------------------------------------
def check_schema(d: Draft) -> list[Problem]:
    """The manifest is YAML and follows ``data_manifest/schema.json``."""
    d.doc = _read_yaml(d.path)
    return _schema_problems(d.doc, d.path)


def check_table(d: Draft) -> list[Problem]:
    """The table can be read, has patients, and has every column the manifest names, each in one role."""
    base = d.path.parent
    d.table_path = (base / d.doc["table"]).resolve()
    d.image_root = (base / d.doc.get("image_root", ".")).resolve()
    if not d.table_path.is_file():
        return [Problem("table file not found (field 'table')", file=d.tfile)]
    try:
        # every cell as text, nothing turned into NaN behind the user's back: only an empty cell is missing
        df = pd.read_csv(d.table_path, dtype=str, keep_default_na=False, na_values=[""], skipinitialspace=True)
    except Exception as exc:  # pandas raises several types for malformed CSV
        return [Problem(f"cannot read the CSV table: {exc}", file=d.tfile)]
    df.columns = [str(c).strip() for c in df.columns]
    d.df = df
    problems = []
    named = {"id": d.doc["id"]}
    named.update({f"endpoint.{k}": v for k, v in d.endpoint.items() if k != "horizon_months"})
    named.update({f"images.{k}": v for k, v in d.image_columns.items()})
    named.update({f"labs[{i}]": v for i, v in enumerate(d.labs)})
    named.update({f"clinical[{i}]": v for i, v in enumerate(d.clinical)})
    for fname, col in named.items():
        if col not in df.columns:
            problems.append(Problem(f"column named by manifest field {fname!r} is not in the table "
                                    f"(columns are: {', '.join(df.columns)})", column=col, file=d.tfile))
    mfile = str(d.path)
    for col in d.doc.get("categorical", []) or []:
        if col not in d.clinical:
            problems.append(Problem("listed under 'categorical' but not under 'clinical'", column=col, file=mfile))
    for col in sorted(set(d.labs) & set(d.clinical)):
        problems.append(Problem("listed both under 'labs' and 'clinical'", column=col, file=mfile))
    roles = {d.doc["id"]: "the patient ID"}
    roles.update({v: f"the endpoint ({k})" for k, v in d.endpoint.items() if k != "horizon_months"})
    roles.update({v: f"an image path ({k})" for k, v in d.image_columns.items()})
    for col in d.labs + d.clinical:
        if col in roles:
            kind = "a laboratory input" if col in d.labs else "a clinical variable"
            problems.append(Problem(f"is {roles[col]} and is also listed as {kind}: the model would see the "
                                    "answer, or Table 1 would publish it; list it in one role only",
                                    column=col, file=mfile))
    for col in d.doc.get("ranges", {}) or {}:
        if col not in d.labs + d.clinical:
            problems.append(Problem("has a plausibility range under 'ranges' but is neither a lab nor a clinical "
                                    "column", column=col, file=mfile))
    if not problems and len(df) == 0:
        problems.append(Problem("the table has no patients", file=d.tfile))
    return problems


def _normal_id(s: str) -> str:
    return unicodedata.normalize("NFC", s).casefold()


def check_ids(d: Draft) -> list[Problem]:
    """Every patient has an ID; IDs are unique, also after case folding and Unicode normalisation."""
    col = d.doc["id"]
    raw = d.df[col]
    empty = [pd.isna(v) or str(v).strip() == "" for v in raw]
    d.ids = [f"row {i + 2}" if e else str(v).strip() for i, (v, e) in enumerate(zip(raw, empty))]
    problems = [d.problem("patient ID is empty", i, col) for i, e in enumerate(empty) if e]
    groups: dict[str, list[int]] = {}
    for i, pid in enumerate(d.ids):
        if not empty[i]:
            groups.setdefault(_normal_id(pid), []).append(i)
    for rows in groups.values():
        if len(rows) < 2:
            continue
        spellings = sorted({d.ids[i] for i in rows})
        if len(spellings) == 1:
            problems.append(d.problem(f"patient ID appears {len(rows)} times (rows "
                                      f"{', '.join(str(i + 2) for i in rows)}); IDs must be unique", rows[0], col))
        else:
            problems.append(d.problem(
                f"patient IDs {', '.join(map(repr, spellings))} (rows {', '.join(str(i + 2) for i in rows)}) differ "
                "only in letter case or Unicode form: probably one person entered twice; make them one row or "
                "distinct IDs", rows[0], col))
    return problems


def _cells(d: Draft, col: str) -> tuple[pd.Series, pd.Series]:
    """Column ``col``'s cells without surrounding blanks, and which of them are text meaning "no value"."""
    text = d.df[col].map(lambda v: v.strip() if isinstance(v, str) else v)
    return text, text.map(lambda v: isinstance(v, str) and v.lower() in NA_TEXT)


def _na_warning(d: Draft, col: str, text: pd.Series, rows: list[int]) -> Problem:
    return Problem(f"text meaning 'no value' ({', '.join(sorted({repr(text.iloc[i]) for i in rows}))}) in "
                   f"{len(rows)} row(s), read as missing: {d.rows_text(rows)}. Leave such cells empty",
                   column=col, file=d.tfile, severity=WARNING)


def _numeric(d: Draft, col: str, *, allow_missing: bool, problems: list) -> pd.Series:
    """Column ``col`` as float. Text is an error, NA-like text is missing (a warning), inf is an error."""
    text, na_like = _cells(d, col)
    out = pd.to_numeric(text.where(~na_like), errors="coerce").astype(float)
    missing_rows = []
    for i in range(len(text)):
        v = text.iloc[i]
        if pd.isna(v) or na_like.iloc[i]:
            if not allow_missing:
                problems.append(d.problem("value is missing" if pd.isna(v) else f"value is missing ({v!r})", i, col))
            elif na_like.iloc[i]:
                missing_rows.append(i)
        elif np.isnan(out.iloc[i]):
            problems.append(d.problem(f"{v!r} is not a number", i, col))
        elif not math.isfinite(out.iloc[i]):
            problems.append(d.problem(f"{v!r} is not a finite number", i, col))
            out.iloc[i] = np.nan
    if missing_rows:
        problems.append(_na_warning(d, col, text, missing_rows))
    return out


def check_endpoint(d: Draft) -> list[Problem]:
    """PFS time (months, >= 0) and event (0/1), or a 0/1 label; a PFS column that looks like days."""
    problems: list[Problem] = []
    n, ep = len(d.df), d.endpoint
    d.time = pd.Series(np.nan, index=range(n))
    d.event = pd.Series(np.nan, index=range(n))
    d.label = pd.Series(np.nan, index=range(n))
    if "time" in ep:
        d.time = _numeric(d, ep["time"], allow_missing=False, problems=problems)
        for i in np.flatnonzero((d.time < 0).to_numpy()):
            problems.append(d.problem(f"PFS time {d.time.iloc[i]:g} is negative; it must be >= 0 months", i, ep["time"]))
        d.event = _numeric(d, ep["event"], allow_missing=False, problems=problems)
        for i in np.flatnonzero((d.event.notna() & ~d.event.isin([0, 1])).to_numpy()):
            problems.append(d.problem(f"event is {d.event.iloc[i]:g}; it must be 1 (progression or death) or 0 "
                                      "(censored)", i, ep["event"]))
        median = float(d.time.median()) if d.time.notna().any() else float("nan")
        if median > PFS_MONTHS_PLAUSIBLE_MEDIAN:
            problems.append(Problem(
                f"median PFS is {median:g}, which as months is over {PFS_MONTHS_PLAUSIBLE_MEDIAN:g}: is PFS recorded "
                "in days? The endpoint needs months (days / 30.44)", column=ep["time"], file=d.tfile,
                severity=WARNING))
    if "label" in ep:
        d.label = _numeric(d, ep["label"], allow_missing=True, problems=problems)
        for i in np.flatnonzero((d.label.notna() & ~d.label.isin([0, 1])).to_numpy()):
            problems.append(d.problem(f"label is {d.label.iloc[i]:g}; it must be 1 or 0", i, ep["label"]))
    elif ep.get("horizon_months") is not None:
        d.label = pd.Series(pfs_label(d.time, d.event, ep["horizon_months"]), index=range(n))
    return problems


def plausible_range(doc: dict, column: str) -> tuple[float, float, str] | None:
    """(low, high, unit) that ``column``'s values must lie in, or None when none applies."""
    unit = (doc.get("units", {}) or {}).get(column)
    own = (doc.get("ranges", {}) or {}).get(column)
    if own is not None:
        return float(own[0]), float(own[1]), unit or ""
    if column in DEFAULT_RANGES:
        d_unit, lo, hi = DEFAULT_RANGES[column]
        if unit is None or unit == d_unit:
            return lo, hi, d_unit
    return None


def check_values(d: Draft) -> list[Problem]:
    """Labs are numbers (missing allowed), within their plausibility range; clinical numbers likewise."""
    problems: list[Problem] = []
    d.categorical = list(d.doc.get("categorical", []) or [])
    for col in d.labs:
        s = _numeric(d, col, allow_missing=True, problems=problems)
        if s.isna().all():
            problems.append(Problem("laboratory column has no values at all", column=col, file=d.tfile))
        for i in np.flatnonzero((s < 0).to_numpy()):
            problems.append(d.problem(f"laboratory value {s.iloc[i]:g} is negative", i, col))
        d.values[col] = s
    for col in d.clinical:
        raw, na_like = _cells(d, col)
        present = raw[raw.notna() & ~na_like]
        numeric = pd.to_numeric(present, errors="coerce")
        if col not in d.categorical and len(present) and numeric.notna().all():
            d.values[col] = _numeric(d, col, allow_missing=True, problems=problems)
        else:
            if na_like.any():
                problems.append(_na_warning(d, col, raw, list(np.flatnonzero(na_like.to_numpy()))))
            d.values[col] = raw.where(~na_like)
            if col not in d.categorical:
                d.categorical.append(col)
    for col in d.labs + d.clinical:
        if col in d.categorical:
            continue
        rng = plausible_range(d.doc, col)
        s = d.values[col]
        if rng is None:
            if col in DEFAULT_RANGES:
                problems.append(Problem(
                    f"unit {d.doc['units'][col]!r} is not the {DEFAULT_RANGES[col][0]!r} whose plausible range is "
                    "known, so its values are not range-checked; give one under 'ranges'", column=col,
                    file=str(d.path), severity=WARNING))
            continue
        lo, hi, unit = rng
        for i in np.flatnonzero(((s < lo) | (s > hi)).to_numpy()):
            problems.append(d.problem(
                f"{s.iloc[i]:g} is outside the plausible range {lo:g}-{hi:g}{' ' + unit if unit else ''}: a typo or "
                f"another unit? (if the value is right, set 'ranges: {{{col}: [low, high]}}' in the manifest)", i, col))
    return problems


def _header_problem(d: Draft, i: int, modality: str, col: str, path: Path) -> Problem | None:
    from . import imaging

    try:
        d.headers[i, modality] = imaging.read_header(path, modality=modality, patient=d.ids[i])
        if d.check_images == "full":
            image = imaging.read_image(path, modality=modality, patient=d.ids[i])
            if modality == "mask":  # the scans' headers are read already (MODALITIES puts them first)
                bounds = imaging.lesion_bounds_mm(image)
                d.lesions[i] = {"bounds": bounds, "inside": {} if bounds is None else {
                    m: imaging.voxels_inside(image, d.headers[i, m]) for m in ("pet", "ct") if (i, m) in d.headers}}
    except imaging.ImageError as exc:
        return d.problem(exc.reason, i, col, file=str(path))
    return None


def check_images(d: Draft) -> list[Problem]:
    """Image files exist and read as 3D volumes in the right units; every patient has a CT or a PET."""
    problems: list[Problem] = []
    for modality in MODALITIES:
        col = d.image_columns.get(modality)
        if col is None:
            continue
        paths, blank = [], []
        for i, v in enumerate(d.df[col]):
            if pd.isna(v) or str(v).strip() == "":
                paths.append(None)
                blank.append(i)
                continue
            p = (d.image_root / str(v).strip()).resolve()
            paths.append(str(p))
            if d.check_images == "none":
                continue
            if not p.is_file():
                problems.append(d.problem(f"{modality} image file not found", i, col, file=str(p)))
            elif d.check_images in ("header", "full"):
                problem = _header_problem(d, i, modality, col, p)
                if problem is not None:
                    problems.append(problem)
        d.image_paths[modality] = paths
        if modality in ("ct", "pet"):
            # every model is fitted and tested on the same splits of all labelled patients: a scan's model
            # cannot leave a patient out
            problems += [d.problem(f"has no {modality.upper()} (empty cell), but the manifest names {modality.upper()} "
                                   f"images: every patient needs one, as all models share one set of splits. Add "
                                   f"it, leave the patient out of the table, or leave '{modality}' out of 'images'",
                                   i, col) for i in blank]
        elif blank:
            effect = {"mask": "their input box is placed around a PET threshold segmentation instead",
                      "organs": "no tumour-to-liver or tumour-to-spleen ratio"}[modality]
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
    from . import imaging

    problems: list[Problem] = []
    for i in range(len(d.df)):
        boxes = {m: imaging.field_of_view_bounds_mm(h) for (row, m), h in d.headers.items() if row == i}
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


def check_privacy(d: Draft) -> list[Problem]:
    """No identifier-like clinical column: text with a different value for every patient, or numbers that are all
    different whole numbers of 6 or more digits (record numbers, dates written as yyyymmdd)."""
    problems = []
    for col in d.clinical:
        if col in d.categorical:
            continue
        s = d.values[col].dropna()
        if len(s) >= RARE_LEVEL and s.nunique() == len(s) and (s == s.round()).all() and (s.abs() >= 1e5).all():
            problems.append(Problem(
                "holds a different whole number of 6 or more digits for every patient: it looks like a record number "
                "or a date, and Table 1 would publish its median and quartiles. Remove it from 'clinical'",
                column=col, file=str(d.path)))
    for col in d.categorical:
        s = d.values[col].dropna().astype(str)
        if len(s) >= RARE_LEVEL and s.nunique() == len(s):
            problems.append(Problem(
                f"has a different value for every patient ({len(s)} values): it looks like an identifier (a name, "
                "a date, a record number), and Table 1 would have nothing to summarise. Remove it from 'clinical'",
                column=col, file=str(d.path)))
    return problems


def min_patients_per_class(profile) -> int:
    """The fewest patients per class with which every (outer and inner) split of ``profile`` can be made.

    Stratified k-fold needs k patients per class; every fold's training part then needs, per class,
    as many as the inner cross-validations have folds (the logistic regressions' 3, the late fusion's
    ``late_inner_folds``), and at least 2 for the stratified fitting/validation split of the networks.
    """
    k = int(profile.n_folds)
    inner = max(INNER_CV_FOLDS, int(getattr(profile, "late_inner_folds", 0)), 2)
    n = k
    while n - math.ceil(n / k) < inner:
        n += 1
    return n


def group_names(doc: dict) -> tuple[str, str]:
    """Names of the two classes: short/long PFS for a PFS horizon; the label column = 1/0 otherwise."""
    ep = doc["endpoint"]
    if "label" in ep:
        return f"{ep['label']} = 1", f"{ep['label']} = 0"
    return "short PFS", "long PFS"


def check_feasibility(d: Draft) -> list[Problem]:
    """Both classes are present, with enough patients each for the profile's cross-validation (only when a
    profile is given: a CT collection for pretraining, say, needs no classes)."""
    if d.profile is None:
        return []
    counts = {1: int((d.label == 1).sum()), 0: int((d.label == 0).sum())}
    names = group_names(d.doc)
    col = d.endpoint.get("label") or d.endpoint.get("event")
    said = f"{names[0]}: {counts[1]}, {names[1]}: {counts[0]}"
    if min(counts.values()) == 0:
        return [Problem(f"every labelled patient is in one class ({said}): there is nothing to predict",
                        column=col, file=d.tfile)]
    need = min_patients_per_class(d.profile)
    if min(counts.values()) < need:
        return [Problem(
            f"too few patients per class for the {d.profile.name} profile's repeated stratified "
            f"{d.profile.n_folds}-fold cross-validation and its inner splits: it needs at least {need} in each class, "
            f"the table has {said}", column=col, file=d.tfile)]
    return []


#: The checks, in the order they run: (name, function, whether an error stops the sequence).
CHECKS: list[tuple[str, Callable[[Draft], list[Problem]], bool]] = [
    ("schema", check_schema, True),
    ("table", check_table, True),
    ("ids", check_ids, False),
    ("endpoint", check_endpoint, False),
    ("values", check_values, False),
    ("images", check_images, False),
    ("geometry", check_geometry, False),
    ("privacy", check_privacy, False),
    ("feasibility", check_feasibility, False),
]


def validate(path, *, check_images: str = "header", profile=None) -> Validation:
    """Run :data:`CHECKS` on a manifest; the cohort is built when no check found an error.

    ``check_images``: ``"none"``, ``"exists"``, ``"header"`` (open every image and read its header: the
    geometry checks) or ``"full"`` (also read every voxel: units, empty masks, masks outside the scans).
    ``profile``: a :class:`prrt.profiles.Profile` (or its name) whose cross-validation must be
    feasible (both classes, enough patients in each); None skips that check.
    """
    if isinstance(profile, str):
        from .profiles import get_profile

        profile = get_profile(profile)
    d = Draft(Path(path).resolve(), check_images, profile)
    problems: list[Problem] = []
    for _name, check, stops in CHECKS:
        try:
            found = check(d)
        except ManifestError as exc:  # a manifest that cannot even be read
            return Validation(d.path, exc.problems)
        problems += found
        if stops and any(p.severity == ERROR for p in found):
            return Validation(d.path, problems)
    result = Validation(d.path, problems)
    if not result.errors:
        result.cohort = _assemble(d, [p for p in problems if p.severity == WARNING])
    return result


def _assemble(d: Draft, warnings: list[Problem]) -> Cohort:
    """The :class:`Cohort` of a manifest without errors: indexed by pseudonym, IDs kept privately."""
    mapping = pseudonymise(d.ids, d.doc["name"])
    data = pd.DataFrame({"pfs_months": d.time.to_numpy(), "event": d.event.to_numpy(), "label": d.label.to_numpy()},
                        index=pd.Index([mapping[i] for i in d.ids], name="patient"))
    for c in d.labs + d.clinical:
        data[c] = d.values[c].to_numpy()
    for modality, paths in d.image_paths.items():
        data[f"{modality}_path"] = paths
    data = data.sort_index()
    files = [d.path, d.table_path] + sorted({Path(p) for paths in d.image_paths.values() for p in paths if p})
    return Cohort(
        name=d.doc["name"], synthetic=bool(d.doc.get("synthetic", False)), description=d.doc.get("description", ""),
        manifest_path=d.path, data=data, labs=d.labs, clinical=d.clinical, categorical=d.categorical,
        units=dict(d.doc.get("units", {}) or {}), horizon_months=d.endpoint.get("horizon_months"),
        modalities=[m for m in MODALITIES if m in d.image_paths], input_files=files, ct_pretraining=d.pretraining,
        group_names=group_names(d.doc), warnings=warnings,
        _id_of_pseudonym={mapping[i]: i for i in d.ids},
    )


def identifier_tokens(cohort: Cohort) -> dict[str, str]:
    """Strings a published book must never contain, with what each is (for the guard's message).

    The patient IDs; the levels of declared text columns seen in fewer than :data:`RARE_LEVEL`
    patients (Table 1 pools them); the image paths as written in the table and each of their folder
    or file names that belongs to fewer than :data:`RARE_LEVEL` patients; the manifest's folder.
    """
    tokens: dict[str, str] = {}
    for pid, pseudo in cohort.pseudonym_of_id().items():
        tokens[pid] = f"the patient ID of {pseudo}"
    for col in cohort.categorical:
        counts = cohort.data[col].dropna().astype(str).value_counts()
        for level, n in counts.items():
            if n < RARE_LEVEL:
                tokens.setdefault(level, f"a rare value of column {col!r}")
    parts: dict[str, set] = {}
    for m in cohort.modalities:
        for pid, p in cohort.data[f"{m}_path"].dropna().items():
            tokens.setdefault(str(p), f"an image path ({m})")
            for part in Path(p).parts[1:]:
                parts.setdefault(part, set()).add(pid)
    for part, who in parts.items():
        if len(who) < RARE_LEVEL:
            tokens.setdefault(part, "a folder or file name of an image path")
    tokens.setdefault(str(cohort.manifest_path.parent), "the manifest's folder")
    return tokens



# ---- a second cohort (external validation) ------------------------------------------------------------
#: Numeric clinical columns that a model of the book reads (chapter 02's sensitivity analysis).
MODEL_CLINICAL = ("prrt_cycles",)


def incompatible(development: Cohort, external: Cohort, problems: list[Problem]) -> ManifestError:
    """The error for an external cohort that does not fit the development cohort's models."""
    return ManifestError(external.manifest_path, problems,
                         title=f"The external cohort {external.manifest_path} does not fit the models of "
                               f"{development.manifest_path}")


def check_compatible(development: Cohort, external: Cohort) -> list[Problem]:
    """Problems that keep models fitted on ``development`` from predicting ``external`` as they are.

    The endpoint must be of the same kind (the same PFS horizon, or both a ready label), with labelled
    patients of both classes in the external cohort; every laboratory value, numeric clinical column
    (:data:`MODEL_CLINICAL`) and image modality the development cohort's models read must be in the external
    cohort, each value in the same unit; and no patient may be in both (compared after case folding and Unicode normalisation:
    a shared patient would be predicted by a model that was fitted on them).
    """
    where = str(external.manifest_path)
    problems = []
    if development.horizon_months != external.horizon_months:
        def kind(c):
            return f"PFS at {c.horizon_months:g} months" if c.horizon_months is not None else "a ready label"
        problems.append(Problem(f"the endpoint is {kind(external)}, the development cohort's is {kind(development)}: "
                                "predictions of one cannot be judged against the other", file=where))
    read = [(col, "laboratory value", "labs") for col in development.labs]
    numeric_clinical = [c for c in development.clinical if c not in development.categorical]
    read += [(col, "numeric clinical variable", "clinical") for col in MODEL_CLINICAL if col in numeric_clinical]
    for col, what, section in read:
        there = external.labs if section == "labs" else [c for c in external.clinical if c not in external.categorical]
        if col not in there:
            problems.append(Problem(f"a {what} the development cohort's models use is not among this cohort's "
                                    f"{section}", column=col, file=where))
            continue
        unit_d, unit_e = development.units.get(col), external.units.get(col)
        if unit_d != unit_e:
            problems.append(Problem(f"unit {unit_e!r} differs from the development cohort's {unit_d!r}: convert the "
                                    "values (a model reads numbers, not units)", column=col, file=where))
    for modality in development.modalities:
        if modality not in external.modalities:
            problems.append(Problem(f"the development cohort's models use {modality} images, which this cohort's "
                                    "manifest does not name", column=f"images.{modality}", file=where))
    labels = external.data["label"].dropna()
    if labels.nunique() < 2:
        problems.append(Problem(f"its {len(labels)} labelled patient(s) are not of both classes ({external.group_names[0]}, "
                                f"{external.group_names[1]}): AUROC and calibration need both", column="endpoint",
                                file=where))
    shared = {_normal_id(i) for i in development.pseudonym_of_id()} & {_normal_id(i) for i in external.pseudonym_of_id()}
    if shared:
        problems.append(Problem(f"{len(shared)} patient ID(s) are in both cohorts: an external cohort must not hold "
                                "patients the models were fitted on", column="id", file=where))
    return problems
