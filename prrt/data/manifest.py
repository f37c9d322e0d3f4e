"""The data manifest as a file: its YAML, its JSON Schema, and the problems found in it.

A manifest is a small YAML file that points at a CSV table (one row per patient) and names its
columns: the patient ID, the endpoint, the image paths, the laboratory values and the clinical
characteristics. ``data_manifest/README.md`` explains how to write one; ``data_manifest/schema.json``
is its JSON Schema (the package holds a copy, :data:`SCHEMA_PATH`).

:func:`read_yaml` reads a manifest and :func:`schema_problems` says where it departs from the schema.
Every problem is a :class:`Problem` that names the patient (the table's ID and row), the column and/or
the file, an error or a warning; :class:`ManifestError` reports all of them at once (the first
:data:`MAX_LISTED_PROBLEMS`, and the count of the rest), so that a data manager can fix a table in one pass.

The one door to a cohort, which runs every check and returns the :class:`prrt.data.Cohort`, is
:func:`prrt.data.load_cohort`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

if "jsonschema" not in sys.modules:
    # jsonschema imports the optional package rfc3987_syntax (installed with Jupyter) for its IRI
    # formats, which the manifest schema does not use; building that package's grammar costs about a
    # second in every process that loads a manifest, i.e. in every notebook kernel.
    sys.modules.setdefault("rfc3987_syntax", None)
import jsonschema  # noqa: E402
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


# ---- loading ----------------------------------------------------------------------------------
def read_yaml(path: Path) -> dict:
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


def schema_problems(doc: dict, path: Path) -> list[Problem]:
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
