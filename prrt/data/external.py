"""A second cohort for external validation: whether it fits the development cohort's models, and both
cohorts as one.

:func:`check_compatible` lists what keeps the models fitted on the development cohort A from predicting
the external cohort B as they are: another endpoint (another PFS horizon, or a ready label against a
horizon); a laboratory value or numeric clinical column (:data:`MODEL_CLINICAL`) that the models read
and B lacks or gives in another unit; an image modality they read that B lacks; labelled patients of one
class only; a patient in both cohorts. :func:`incompatible` makes them one
:class:`prrt.data.ManifestError`. :func:`merge_cohorts` makes one :class:`prrt.data.Cohort` of A's and
B's patients, B's under pseudonyms of their own (``E001``, …; :data:`EXTERNAL_PREFIXES`), so that the one
model loop can fit on A and predict B (the design: :func:`prrt.evaluation.external_splits`; B's numbers:
:mod:`prrt.evaluation.external`).
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from .checks import normal_id
from .cohort import Cohort
from .manifest import ManifestError, Problem
from .privacy import pseudonymise

#: Pseudonym prefixes of the external cohort's patients, in order of preference.
EXTERNAL_PREFIXES = ("E", "EX", "EV", "EZ")

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
    shared = {normal_id(i) for i in development.pseudonym_of_id()} & {normal_id(i) for i in external.pseudonym_of_id()}
    if shared:
        problems.append(Problem(f"{len(shared)} patient ID(s) are in both cohorts: an external cohort must not hold "
                                "patients the models were fitted on", column="id", file=where))
    return problems


def merge_cohorts(development: Cohort, external: Cohort) -> tuple[Cohort, list[str]]:
    """One cohort of A's and B's patients, and the pseudonyms of B's patients in it.

    The result keeps A's definitions (name of each column, units, endpoint, modalities, CT pretraining):
    the models are A's. B's patients get pseudonyms of their own (``E001``, …, equal to no ID or
    pseudonym of either cohort); columns of A that B lacks and no model reads (a clinical text column)
    are empty for them. Raises :class:`prrt.data.ManifestError` when B cannot be predicted by A's models
    (:func:`check_compatible`).
    """
    problems = check_compatible(development, external)
    if problems:
        raise incompatible(development, external, problems)
    ext_ids = external.pseudonym_of_id()  # ID -> B's own pseudonym
    taken = [*development.pseudonym_of_id(), *development.data.index, *external.data.index]
    mapping = pseudonymise(list(ext_ids), external.name, prefixes=EXTERNAL_PREFIXES, taken=taken)
    rename = {ps: mapping[pid] for pid, ps in ext_ids.items()}
    b = external.data.reindex(columns=development.data.columns).rename(index=rename)
    data = pd.concat([development.data, b.sort_index()])
    data.index.name = development.data.index.name
    ids = {**development._id_of_pseudonym, **{rename[ps]: pid for pid, ps in ext_ids.items()}}
    merged = replace(development, name=f"{development.name} + {external.name}",
                     synthetic=development.synthetic or external.synthetic, data=data,
                     input_files=[*development.input_files, *external.input_files], warnings=[],
                     _id_of_pseudonym=ids)
    return merged, sorted(rename.values())
