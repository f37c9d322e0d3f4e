"""The checks of a manifest and its table: each takes the :class:`Draft` and returns the problems it found.

:func:`prrt.data.load_cohort` runs them in order (:data:`prrt.data.load.CHECKS`). Here: the schema
(:func:`check_schema`); the table and the role of each column (:func:`check_table`); the patient IDs
(:func:`check_ids`: present, and unique also after case folding and Unicode normalisation); the endpoint
(:func:`check_endpoint`: PFS time in months and a 0/1 event, or a 0/1 label); the values
(:func:`check_values`: numbers where numbers are expected, within the plausible range of
:data:`DEFAULT_RANGES` or of the manifest's own ``ranges``); the feasibility of the profile's
cross-validation (:func:`check_feasibility`, :func:`min_patients_per_class`). A :class:`Draft` carries
what each check learnt to the later ones (the manifest, the table, the IDs, the converted values, image
headers). A problem is an error (``ERROR``) or a warning (``WARNING``: text meaning "no value", a PFS
column that looks like days, a unit whose plausible range is unknown).

The image and geometry checks are in :mod:`prrt.data.image_checks`, the privacy check in
:mod:`prrt.data.privacy`.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cohort import pfs_label
from .manifest import Problem, read_yaml, schema_problems

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

#: Folds of the inner cross-validation of the logistic regressions (prrt.learn.tabular).
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


# ---- the checks --------------------------------------------------------------------------------------
def check_schema(d: Draft) -> list[Problem]:
    """The manifest is YAML and follows ``data_manifest/schema.json``."""
    d.doc = read_yaml(d.path)
    return schema_problems(d.doc, d.path)


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


def normal_id(s: str) -> str:
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
            groups.setdefault(normal_id(pid), []).append(i)
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
