"""The one door to a cohort: :func:`load_cohort` validates a manifest and returns the cohort it describes.

Validation is a sequence of small named checks (:data:`CHECKS`), the way scikit-learn's ``check_array``
family or a pandera schema read: each check looks at one thing (schema, table, IDs, endpoint, values,
images, geometry, privacy, feasibility), returns the problems it found and records what later checks
need on a :class:`prrt.data.checks.Draft`. Every problem names the table's own patient ID and row, the
column and/or the file, so that a data manager can fix a table in one pass. A problem is an **error**
(``prrt run`` would fail, give a wrong answer or publish what it must not) or a **warning** (probably a
mistake, but the run can go on: ``prrt validate --strict`` treats warnings as errors).

The checks that the rest depends on (schema, table) stop the sequence when they find an error; the
others all run, so that every problem is reported at once. Without an error, the :class:`Cohort` is
assembled: indexed by pseudonyms (:func:`prrt.data.privacy.pseudonymise`), the table's own IDs kept
privately in it.

The checks themselves are in :mod:`prrt.data.checks`, :mod:`prrt.data.image_checks` (images, geometry)
and :mod:`prrt.data.privacy` (privacy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from ..profiles import get_profile
from .checks import (
    ERROR,
    WARNING,
    Draft,
    check_endpoint,
    check_feasibility,
    check_ids,
    check_schema,
    check_table,
    check_values,
    group_names,
)
from .cohort import Cohort
from .image_checks import check_geometry, check_images
from .manifest import MODALITIES, ManifestError, Problem
from .privacy import check_privacy, pseudonymise


def load_cohort(path: str | Path, *, check_images: str = "header", profile=None, strict: bool = False) -> Cohort:
    """The one door to a cohort: validate a manifest (every check of :data:`CHECKS`) and return the cohort it
    describes, or raise one error that lists every problem. ``prrt validate`` is this function, printing the
    report.

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
    strict:
        Treat warnings as errors (``prrt validate --strict``).

    Raises
    ------
    ManifestError
        listing every error found (then the warnings), each naming the patient (the table's ID and row),
        the column and/or the file. Warnings do not raise unless ``strict``; they are kept in
        ``Cohort.warnings``.
    """
    result = _validate(path, check_images=check_images, profile=profile)
    result.raise_for_errors(strict=strict)
    return result.cohort


@dataclass
class Validation:
    """The outcome of :func:`_validate`: every problem found, and the cohort when there is no error."""

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


def _validate(path, *, check_images: str = "header", profile=None) -> Validation:
    """Run :data:`CHECKS` on a manifest; the cohort is built when no check found an error.

    ``check_images``: ``"none"``, ``"exists"``, ``"header"`` (open every image and read its header: the
    geometry checks) or ``"full"`` (also read every voxel: units, empty masks, masks outside the scans).
    ``profile``: a :class:`prrt.profiles.Profile` (or its name) whose cross-validation must be
    feasible (both classes, enough patients in each); None skips that check.
    """
    if isinstance(profile, str):
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
