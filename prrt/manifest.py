"""Data manifest: validation and loading of a cohort.

A manifest is a small YAML file that points at a CSV table (one row per patient) and names its
columns: the patient ID, the endpoint, the image paths, the laboratory values and the clinical
characteristics. ``data_manifest/README.md`` explains how to write one; ``data_manifest/schema.json``
is its JSON Schema.

:func:`load_manifest` validates everything that can be checked before a model runs and returns a
:class:`Cohort`. Every problem it finds is reported at once, each naming the patient, the column
and/or the file, so that a data manager can fix a table in one pass.

Patient IDs from the table never leave this module in outputs: a :class:`Cohort` is indexed by
pseudonyms (``P001``, ``P002``, …) and keeps the mapping privately.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

if "jsonschema" not in sys.modules:
    # jsonschema imports the optional package rfc3987_syntax (installed with Jupyter) for its IRI
    # formats, which the manifest schema does not use; building that package's grammar costs about a
    # second in every process that loads a manifest, i.e. in every notebook kernel.
    sys.modules.setdefault("rfc3987_syntax", None)
import jsonschema  # noqa: E402
import numpy as np
import pandas as pd
import yaml

SCHEMA_PATH = Path(__file__).with_name("manifest_schema.json")
MODALITIES = ("ct", "pet", "mask", "organs")
#: At most this many problems are listed in one error message (the count of the rest is given).
MAX_LISTED_PROBLEMS = 50


@dataclass(frozen=True)
class Problem:
    """One problem found in a manifest, its table or its files."""

    message: str
    patient: str | None = None
    column: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = []
        if self.patient is not None:
            where.append(f"patient {self.patient!r}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if self.file is not None:
            where.append(f"file {self.file}")
        return (", ".join(where) + ": " if where else "") + self.message


class ManifestError(ValueError):
    """Raised for an invalid manifest; ``problems`` lists every problem found."""

    def __init__(self, manifest: Path | str, problems: list[Problem]):
        self.manifest = str(manifest)
        self.problems = list(problems)
        lines = [f"Invalid manifest {self.manifest}: {len(problems)} problem(s)"]
        lines += [f"  - {p}" for p in problems[:MAX_LISTED_PROBLEMS]]
        if len(problems) > MAX_LISTED_PROBLEMS:
            lines.append(f"  … and {len(problems) - MAX_LISTED_PROBLEMS} more")
        super().__init__("\n".join(lines))


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def pseudonymise(ids: list[str], cohort_name: str) -> dict[str, str]:
    """Map each patient ID to a pseudonym ``P001``, ``P002``, ….

    The order is that of a SHA-256 hash of the cohort name and the ID, so it is stable for a
    cohort, independent of the row order of the table, and reveals nothing of the ID itself.
    """
    width = max(3, len(str(len(ids))))
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{cohort_name}:{i}".encode()).hexdigest())
    return {pid: f"P{k + 1:0{width}d}" for k, pid in enumerate(order)}


def pfs_label(time, event, horizon_months: float) -> np.ndarray:
    """The binary endpoint: 1 = short PFS, 0 = long PFS, NaN = censored before the horizon (no label).

    Short PFS is progression (or death) at or before the horizon; long PFS is follow-up beyond the
    horizon, or censoring exactly at it (progression-free through the horizon).
    """
    time, event = np.asarray(time, float), np.asarray(event, float)
    short = (event == 1) & (time <= horizon_months)
    long_ = (time > horizon_months) | ((event == 0) & (time >= horizon_months))
    return np.where(short, 1.0, np.where(long_, 0.0, np.nan))


@dataclass
class Cohort:
    """A validated cohort.

    Attributes
    ----------
    name, synthetic, description:
        From the manifest.
    manifest_path:
        The manifest file (absolute).
    data:
        One row per patient, indexed by pseudonym (``patient``). Columns: ``pfs_months`` and
        ``event`` (NaN when the manifest gives a label only), ``label`` (1 = short PFS,
        0 = long PFS, NaN = not labelled, i.e. censored before the horizon), one column per lab and
        clinical variable under its manifest name, and ``ct_path``, ``pet_path``, ``mask_path``
        (absolute paths) for the modalities the manifest names.
    labs, clinical, categorical:
        Column names, as in the manifest.
    units:
        Unit per column.
    horizon_months:
        The PFS horizon that defines short PFS (None for a ready label).
    ct_pretraining:
        ``data`` (a CT collection from outside the cohort) and/or ``weights`` (a state-dict file),
        absolute, and ``key_prefixes``: how chapter 04 pretrains its CT encoder (empty: it does not).
    input_files:
        Every input file (manifest, table, images), absolute; hashed into ``run.json``.
    """

    name: str
    synthetic: bool
    description: str
    manifest_path: Path
    data: pd.DataFrame
    labs: list[str]
    clinical: list[str]
    categorical: list[str]
    units: dict[str, str]
    horizon_months: float | None
    modalities: list[str]
    input_files: list[Path]
    ct_pretraining: dict = field(default_factory=dict)
    _id_of_pseudonym: dict[str, str] = field(repr=False, default_factory=dict)

    # ---- views -------------------------------------------------------------------------------
    @property
    def n_patients(self) -> int:
        return len(self.data)

    @property
    def labelled(self) -> pd.DataFrame:
        """Patients with a binary label (those censored before the horizon are excluded)."""
        return self.data[self.data["label"].notna()]

    @property
    def n_excluded_censored(self) -> int:
        """Patients censored before the horizon: excluded from the binary task only."""
        return int(self.data["label"].isna().sum())

    @property
    def has_survival(self) -> bool:
        return bool(self.data["pfs_months"].notna().any())

    def image_path(self, patient: str, modality: str) -> Path | None:
        col = f"{modality}_path"
        if col not in self.data.columns:
            return None
        value = self.data.at[patient, col]
        return None if pd.isna(value) else Path(value)

    def pseudonym_of_id(self) -> dict[str, str]:
        """Patient ID → pseudonym. Private: for checks and for the data manager, never for output."""
        return {pid: ps for ps, pid in self._id_of_pseudonym.items()}

    def private_id_table(self) -> pd.DataFrame:
        """The pseudonym → patient ID key. Keep it private: never publish it."""
        return pd.DataFrame(
            {"patient": list(self._id_of_pseudonym), "patient_id": list(self._id_of_pseudonym.values())}
        )

    def summary(self) -> dict:
        """A summary fit for printing (no patient IDs)."""
        lab = self.data["label"]
        missing = {
            c: int(self.data[c].isna().sum())
            for c in self.labs + self.clinical
            if int(self.data[c].isna().sum()) > 0
        }
        return {
            "name": self.name,
            "synthetic": self.synthetic,
            "patients": self.n_patients,
            "labelled": int(lab.notna().sum()),
            "short_pfs": int((lab == 1).sum()),
            "long_pfs": int((lab == 0).sum()),
            "excluded_censored_before_horizon": self.n_excluded_censored,
            "horizon_months": self.horizon_months,
            "modalities": {m: int(self.data[f"{m}_path"].notna().sum()) for m in self.modalities},
            "labs": len(self.labs),
            "clinical": len(self.clinical),
            "missing_values": missing,
        }


# ---- loading ----------------------------------------------------------------------------------
def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ManifestError(path, [Problem("manifest file not found", file=str(path))])
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ManifestError(
            path, [Problem(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", file=str(path))]
        ) from None
    if not isinstance(doc, dict):
        raise ManifestError(path, [Problem("a manifest must be a YAML mapping (key: value lines)", file=str(path))])
    return doc


def _schema_problems(doc: dict, path: Path) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(load_schema())
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        field_name = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        msg = err.message
        if err.validator == "oneOf" and field_name == "endpoint":
            msg = (
                "endpoint must be either {time, event, horizon_months} or {label} "
                f"(optionally with time and event); got {err.instance!r}"
            )
        problems.append(Problem(f"field {field_name!r}: {msg}", file=str(path)))
    return problems


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _numeric_column(df, col, ids, problems, *, allow_missing, table_path) -> pd.Series:
    """Convert ``col`` to float, recording a problem for each non-numeric (or missing) cell."""
    raw = df[col]
    out = pd.to_numeric(raw, errors="coerce")
    for i in np.flatnonzero(out.isna().to_numpy()):
        value = raw.iloc[i]
        if pd.isna(value) or (isinstance(value, str) and value.strip() == ""):
            if not allow_missing:
                problems.append(Problem("value is missing", patient=ids[i], column=col, file=table_path))
        else:
            problems.append(
                Problem(f"{value!r} is not a number", patient=ids[i], column=col, file=table_path)
            )
    return out.astype(float)


def load_manifest(path: str | Path, *, check_images: str = "header") -> Cohort:
    """Validate a manifest and return the cohort it describes.

    Parameters
    ----------
    path:
        The manifest YAML file.
    check_images:
        ``"header"`` (default) opens every image file and reads its header (fast); ``"full"`` also
        reads every voxel and checks the values (slow); ``"exists"`` only checks that each file
        exists; ``"none"`` skips image checks.

    Raises
    ------
    ManifestError
        listing every problem found, each naming the patient, the column and/or the file.
    """
    path = Path(path).resolve()
    doc = _read_yaml(path)
    problems = _schema_problems(doc, path)
    if problems:
        raise ManifestError(path, problems)

    base = path.parent
    table_path = (base / doc["table"]).resolve()
    image_root = (base / doc.get("image_root", ".")).resolve()
    if not table_path.is_file():
        raise ManifestError(path, [Problem("table file not found (field 'table')", file=str(table_path))])
    try:
        df = pd.read_csv(table_path, dtype=str, keep_default_na=True, skipinitialspace=True)
    except Exception as exc:  # pandas raises several types for malformed CSV
        raise ManifestError(path, [Problem(f"cannot read the CSV table: {exc}", file=str(table_path))]) from None
    df.columns = [c.strip() for c in df.columns]
    tfile = str(table_path)

    endpoint = doc["endpoint"]
    images = doc.get("images", {}) or {}
    labs = list(doc.get("labs", []) or [])
    clinical = list(doc.get("clinical", []) or [])
    categorical = list(doc.get("categorical", []) or [])
    named = {"id": doc["id"]}
    named.update({f"endpoint.{k}": v for k, v in endpoint.items() if k != "horizon_months"})
    named.update({f"images.{k}": v for k, v in images.items()})
    named.update({f"labs[{i}]": v for i, v in enumerate(labs)})
    named.update({f"clinical[{i}]": v for i, v in enumerate(clinical)})
    for fname, col in named.items():
        if col not in df.columns:
            problems.append(
                Problem(f"column named by manifest field {fname!r} is not in the table "
                        f"(columns are: {', '.join(df.columns)})", column=col, file=tfile)
            )
    for col in categorical:
        if col not in clinical:
            problems.append(Problem("listed under 'categorical' but not under 'clinical'", column=col, file=str(path)))
    for col in set(labs) & set(clinical):
        problems.append(Problem("listed both under 'labs' and 'clinical'", column=col, file=str(path)))
    if problems:
        raise ManifestError(path, problems)
    if len(df) == 0:
        raise ManifestError(path, [Problem("the table has no patients", file=tfile)])

    # -- IDs ---------------------------------------------------------------------------------------
    id_col = doc["id"]
    raw_ids = df[id_col]
    ids = [f"row {i + 2}" if pd.isna(v) or str(v).strip() == "" else str(v).strip() for i, v in enumerate(raw_ids)]
    for i, v in enumerate(raw_ids):
        if pd.isna(v) or str(v).strip() == "":
            problems.append(Problem("patient ID is empty", patient=ids[i], column=id_col, file=tfile))
    counts = pd.Series(ids).value_counts()
    for dup, n in counts[counts > 1].items():
        problems.append(Problem(f"patient ID appears {n} times; IDs must be unique", patient=dup, column=id_col, file=tfile))

    # -- endpoint ----------------------------------------------------------------------------------
    n = len(df)
    time = pd.Series(np.nan, index=range(n))
    event = pd.Series(np.nan, index=range(n))
    label = pd.Series(np.nan, index=range(n))
    horizon = endpoint.get("horizon_months")
    if "time" in endpoint:
        time = _numeric_column(df, endpoint["time"], ids, problems, allow_missing=False, table_path=tfile)
        for i in np.flatnonzero((time < 0).to_numpy()):
            problems.append(Problem(f"PFS time {time.iloc[i]:g} is negative; it must be >= 0 months",
                                    patient=ids[i], column=endpoint["time"], file=tfile))
        event = _numeric_column(df, endpoint["event"], ids, problems, allow_missing=False, table_path=tfile)
        for i in np.flatnonzero((event.notna() & ~event.isin([0, 1])).to_numpy()):
            problems.append(Problem(f"event is {event.iloc[i]:g}; it must be 1 (progression or death) or 0 (censored)",
                                    patient=ids[i], column=endpoint["event"], file=tfile))
    if "label" in endpoint:
        label = _numeric_column(df, endpoint["label"], ids, problems, allow_missing=True, table_path=tfile)
        for i in np.flatnonzero((label.notna() & ~label.isin([0, 1])).to_numpy()):
            problems.append(Problem(f"label is {label.iloc[i]:g}; it must be 1 (short PFS) or 0 (long PFS)",
                                    patient=ids[i], column=endpoint["label"], file=tfile))
    elif horizon is not None:
        label = pd.Series(pfs_label(time, event, horizon), index=range(n))

    # -- labs: numeric, missing allowed ---------------------------------------------------------------
    lab_values = {c: _numeric_column(df, c, ids, problems, allow_missing=True, table_path=tfile) for c in labs}
    for c, s in lab_values.items():
        if s.isna().all():
            problems.append(Problem("laboratory column has no values at all", column=c, file=tfile))
        for i in np.flatnonzero((s < 0).to_numpy()):
            problems.append(Problem(f"laboratory value {s.iloc[i]:g} is negative", patient=ids[i], column=c, file=tfile))

    # -- clinical: numeric where it looks numeric, else categorical ------------------------------------
    clin_values = {}
    for c in clinical:
        col = df[c]
        non_missing = col.dropna()
        if c not in categorical and len(non_missing) and non_missing.map(_is_number).all():
            clin_values[c] = pd.to_numeric(col)
        else:
            clin_values[c] = col.map(lambda v: v.strip() if isinstance(v, str) else v)
            if c not in categorical:
                categorical.append(c)

    # -- images --------------------------------------------------------------------------------------
    image_paths: dict[str, list] = {}
    for modality in MODALITIES:
        col = images.get(modality)
        if col is None:
            continue
        paths = []
        for i, v in enumerate(df[col]):
            if pd.isna(v) or str(v).strip() == "":
                paths.append(None)
                continue
            p = (image_root / str(v).strip()).resolve()
            paths.append(str(p))
            if check_images == "none":
                continue
            if not p.is_file():
                problems.append(Problem(f"{modality} image file not found", patient=ids[i], column=col, file=str(p)))
                continue
            if check_images in ("header", "full"):
                from . import imaging

                try:
                    if check_images == "full":
                        imaging.read_image(p, modality=modality, patient=ids[i])
                    else:
                        imaging.read_header(p, modality=modality, patient=ids[i])
                except imaging.ImageError as exc:
                    problems.append(Problem(exc.reason, patient=ids[i], column=col, file=str(p)))
        image_paths[modality] = paths
    pretraining = {}
    for key, value in (doc.get("ct_pretraining") or {}).items():
        if key == "key_prefixes":
            pretraining[key] = list(value)
            continue
        p = (base / value).resolve()
        if not p.exists():
            problems.append(Problem(f"ct_pretraining {key} not found", column=f"ct_pretraining.{key}", file=str(p)))
        pretraining[key] = p
    if problems:
        raise ManifestError(path, problems)

    # -- assemble ------------------------------------------------------------------------------------
    mapping = pseudonymise(ids, doc["name"])
    pseudo = [mapping[i] for i in ids]
    data = pd.DataFrame({"pfs_months": time.to_numpy(), "event": event.to_numpy(), "label": label.to_numpy()},
                        index=pd.Index(pseudo, name="patient"))
    for c, s in lab_values.items():
        data[c] = s.to_numpy()
    for c, s in clin_values.items():
        data[c] = s.to_numpy()
    for modality, paths in image_paths.items():
        data[f"{modality}_path"] = paths
    data = data.sort_index()
    files = [path, table_path] + sorted(
        {Path(p) for paths in image_paths.values() for p in paths if p is not None}
    )
    return Cohort(
        name=doc["name"],
        synthetic=bool(doc.get("synthetic", False)),
        description=doc.get("description", ""),
        manifest_path=path,
        data=data,
        labs=labs,
        clinical=clinical,
        categorical=categorical,
        units=dict(doc.get("units", {}) or {}),
        horizon_months=horizon,
        modalities=[m for m in MODALITIES if m in image_paths],
        input_files=files,
        ct_pretraining=pretraining,
        _id_of_pseudonym={mapping[i]: i for i in ids},
    )
