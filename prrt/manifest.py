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
    severity: str = "error"
    #: The patient's line in the CSV table (the header is line 1).
    row: int | None = None

    def __str__(self) -> str:
        where = []
        if self.patient is not None:
            where.append(f"patient {self.patient!r}" + (f" (row {self.row})" if self.row is not None
                                                        and not self.patient.startswith("row ") else ""))
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if self.file is not None:
            where.append(f"file {self.file}")
        text = (", ".join(where) + ": " if where else "") + self.message
        return f"warning: {text}" if self.severity == "warning" else text


class ManifestError(ValueError):
    """Raised for an invalid manifest; ``problems`` lists every problem found."""

    def __init__(self, manifest: Path | str, problems: list[Problem], title: str | None = None):
        self.manifest = str(manifest)
        self.problems = list(problems)
        n_err = sum(p.severity == "error" for p in problems)
        counts = f"{n_err} error(s)" + (f", {len(problems) - n_err} warning(s)" if len(problems) > n_err else "")
        lines = [f"{title or f'Invalid manifest {self.manifest}'}: {len(problems)} problem(s) ({counts})"]
        lines += [f"  - {p}" for p in problems[:MAX_LISTED_PROBLEMS]]
        if len(problems) > MAX_LISTED_PROBLEMS:
            lines.append(f"  … and {len(problems) - MAX_LISTED_PROBLEMS} more")
        super().__init__("\n".join(lines))


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


#: Pseudonym prefixes, in order of preference: the first whose pseudonyms equal no patient ID is used.
PSEUDONYM_PREFIXES = ("P", "PS", "PX", "Q", "QX")


def pseudonymise(ids: list[str], cohort_name: str, prefixes=PSEUDONYM_PREFIXES, taken=()) -> dict[str, str]:
    """Map each patient ID to a pseudonym ``P001``, ``P002``, ….

    The order is that of a SHA-256 hash of the cohort name and the ID, so it is stable for a
    cohort, independent of the row order of the table, and reveals nothing of the ID itself. When
    a hospital's own IDs look like pseudonyms (``P001``), another prefix is used (``PS001``), so
    that no pseudonym in the book can be read as somebody's ID. ``prefixes``: the prefixes to try, in
    order; ``taken``: further strings no pseudonym may equal (another cohort's IDs and pseudonyms).
    """
    width = max(3, len(str(len(ids))))
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{cohort_name}:{i}".encode()).hexdigest())
    taken = {str(i).casefold() for i in [*ids, *taken]}
    for prefix in prefixes:
        mapping = {pid: f"{prefix}{k + 1:0{width}d}" for k, pid in enumerate(order)}
        if not {v.casefold() for v in mapping.values()} & taken:
            return mapping
    raise ValueError("every pseudonym prefix collides with the patient IDs; rename the IDs")


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
    #: Names of the classes 1 and 0: short/long PFS, or ``<label column> = 1`` / ``= 0`` for a ready label.
    group_names: tuple[str, str] = ("short PFS", "long PFS")
    #: What validation warned about (:class:`Problem` with severity "warning"); the run went on.
    warnings: list = field(default_factory=list)
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
            "group_names": list(self.group_names),
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


def load_manifest(path: str | Path, *, check_images: str = "header", profile=None) -> Cohort:
    """Validate a manifest and return the cohort it describes (:func:`prrt.validation.validate`).

    Parameters
    ----------
    path:
        The manifest YAML file.
    check_images:
        ``"header"`` (default) opens every image file and reads its header (fast; checks that the
        scans overlap in space); ``"full"`` also reads every voxel and checks the values and the
        masks (slow); ``"exists"`` only checks that each file exists; ``"none"`` skips image checks.
    profile:
        A profile (or its name) whose cross-validation the cohort must allow; None skips that check.

    Raises
    ------
    ManifestError
        listing every error found, each naming the patient (the table's ID and row), the column
        and/or the file. Warnings do not raise; they are kept in ``Cohort.warnings``.
    """
    from .validation import validate

    result = validate(path, check_images=check_images, profile=profile)
    result.raise_for_errors()
    return result.cohort
