"""Helpers that every chapter's notebook uses: load the run's inputs and show what this run is, the run's
shared splits, fitting a chapter's models into the run's summary, and the median risk groups of a model.

Papermill injects the run's parameters as a cell that the book hides; :func:`start` shows them as a
small table instead, and a warning box at the top of the page when the data is synthetic.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import Cohort, load_cohort
from ..evaluation import (
    ensure_splits,
    mean_probability,
    risk_groups_logrank,
    update_summary,
)
from ..learn import ENV, engine_from, one_blas_thread, run_models
from ..profiles import Profile, get_profile

SYNTHETIC_NOTE = (
    "Every number and image on this page comes from a <b>synthetic cohort</b> made by "
    "<code>prrt demo-data</code>, not from patients. It mirrors the study's design (116 patients, "
    "42 with PFS at or under 12 months) so that the analysis can be run and checked by anyone; its "
    "results say nothing about PRRT. Point the <code>manifest</code> parameter at your own data "
    "to analyse a real cohort."
)


@dataclass
class Context:
    """What a notebook works with: the cohort, the profile, the seed and where outputs go."""

    cohort: Cohort
    profile: Profile
    seed: int
    run_dir: Path
    cache_dir: Path

    @cached_property
    def engine(self):
        """Where the model fits run (:mod:`prrt.learn.engines`): what ``prrt run --engine`` named, else the
        profile's ``engine``; ``None`` means in this process, one after another. Started on first use."""
        return engine_from(os.environ.get(ENV) or self.profile.engine)

    @cached_property
    def splits(self) -> pd.DataFrame:
        """The run's shared splits (``splits.csv``: patient, repeat, fold): read back when a chapter of this run
        made them already, else made from the profile and the seed (and saved) on first use."""
        return ensure_splits(self.cohort, self.profile, self.seed, self.run_dir)

    def path(self, *parts: str) -> Path:
        """A path inside the run directory; its folder is created."""
        p = self.run_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def default_cache_dir(run_dir) -> Path:
    """Preprocessed images are shared by all runs beside ``run_dir`` (keyed by content)."""
    return Path(run_dir).resolve().parent / ".prrt-cache"


def start(manifest, run_dir, profile: str, seed: int, cache_dir=None, show: bool = True) -> Context:
    """Load the manifest and profile, prepare the run directory and show the run's parameters (numpy and scipy
    on one BLAS thread from here on, :func:`prrt.learn.one_blas_thread`)."""
    one_blas_thread()
    cohort = load_cohort(manifest, check_images="exists")
    prof = get_profile(profile)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(cohort, prof, int(seed), run_dir,
                  Path(cache_dir).resolve() if cache_dir else default_cache_dir(run_dir))
    if show:
        from IPython.display import HTML, display

        # run-specific words that the pages' prose uses ({glue:md}`horizon`), never typed into it;
        # glued as Markdown so that a string shows without quotes
        glue_texts({"horizon": horizon_text(cohort)})
        if cohort.synthetic:
            display(HTML(synthetic_banner_html()))
        display(parameters_view(ctx))
    return ctx


def glue_texts(texts: dict[str, str]) -> None:
    """Glue each text under its key for the page's prose (``{glue:md}`key```), as Markdown so that a string shows
    without quotes, and show nothing here."""
    from IPython.display import Markdown
    from myst_nb import glue

    for key, text in texts.items():
        glue(key, Markdown(text), display=False)


def horizon_text(cohort: Cohort) -> str:
    """The PFS horizon of the cohort in words (``"12 months"``), or where its label comes from."""
    h = cohort.horizon_months
    return f"{h:g} months" if h is not None else "set by the manifest's own label"


def endpoint_note(cohort: Cohort) -> str | None:
    """For a ready binary label: a sentence saying what "short PFS" and "long PFS" stand for in the book."""
    if cohort.horizon_months is not None:
        return None
    one, zero = cohort.group_names
    return (f"This cohort's endpoint is the manifest's own label: wherever this book says \"short PFS\" it means "
            f"{one}, and \"long PFS\" means {zero}.")


def synthetic_banner_html() -> str:
    return ('<div class="admonition warning"><p class="admonition-title">Synthetic data</p>'
            f"<p>{SYNTHETIC_NOTE}</p></div>")


def parameters_table(ctx: Context) -> pd.DataFrame:
    """The parameters of this run, as a small table (no paths that could name a patient)."""
    c, p = ctx.cohort, ctx.profile
    rows = [
        ("cohort", f"{c.name}" + (" (synthetic)" if c.synthetic else "")),
        ("manifest", c.manifest_path.name),
        ("patients", f"{c.n_patients} ({len(c.labelled)} labelled)"),
        ("profile", f"{p.name}: {p.description}"),
        ("network input", network_input_text(p)),
        ("input size (voxels)", " × ".join(str(s) for s in p.input_size_voxels)),
        ("voxel spacing (mm)", " × ".join(f"{s:g}" for s in p.voxel_spacing_mm) + ", every patient"),
        ("cross-validation", f"{p.n_repeats} × repeated stratified {p.n_folds}-fold"),
        ("seed", str(ctx.seed)),
    ]
    return pd.DataFrame(rows, columns=["parameter", "value"]).set_index("parameter")


def parameters_view(ctx: Context):
    """:func:`parameters_table` as the pages show it: a Styler (which shows every value whole, where a DataFrame's
    HTML cuts long cells at 50 characters) with one header row, "parameter" and "value"."""
    return parameters_table(ctx).reset_index().style.hide(axis="index")


def compact_view(table: pd.DataFrame):
    """A table that must fit the text column as it is (chapter 04's opening table): a Styler with the index as the
    first column, one header row, small type and no line break inside a cell (the ``prrt-compact`` class of the
    book's stylesheet)."""
    return table.reset_index().style.hide(axis="index").set_table_attributes('class="prrt-compact"')


def network_input_text(p: Profile) -> str:
    """The image networks' input in words: region of interest and channels."""
    extent = " × ".join(f"{s * p.roi_spacing_mm:g}" for s in p.input_size_voxels) + " mm"
    where = {"liver": f"{extent} centred on the liver", "lesions": f"{extent} centred on the lesions"}.get(
        p.roi, "whole body, " + " × ".join(f"{f:g}" for f in p.field_of_view_mm) + " mm")
    second = "lesion mask and liver" if p.liver_in_mask_channel else "lesion mask"
    return where + (f", {second} as a second channel" if p.mask_channel else "")


def synthetic_report(cohort: Cohort) -> dict | None:
    """The generator's report (achievable AUROCs) when the cohort is synthetic and the report is there."""
    if not cohort.synthetic:
        return None
    f = cohort.input_files[1].parent / "synthetic_report.json"
    return json.loads(f.read_text()) if f.is_file() else None


def table_from_dict(values: dict, name: str = "setting") -> pd.DataFrame:
    """A small two-column table of settings."""
    return pd.DataFrame([(k, str(v)) for k, v in values.items()], columns=[name, "value"]).set_index(name)


# ---- what several chapters do ------------------------------------------------------------------------
#: The threshold probabilities of the decision curves (5 % to 80 % in steps of 5 %).
DECISION_THRESHOLDS = [t / 100 for t in range(5, 81, 5)]


def fit_models(ctx: Context, specs: list, data, keep_models: bool = False) -> tuple[dict, pd.DataFrame]:
    """Cross-validate ``specs`` (:class:`prrt.learn.ModelSpec`) on ``data`` over the run's shared splits, write
    their predictions, and add their rows to ``results/summary.csv`` (replacing earlier rows of the same models).

    Returns the results (``{model: CVResult}``, the models that ran) and the whole summary of the run.
    ``keep_models``: keep each fold's fitted model in its result (for chapters that look inside them).
    """
    results, rows = run_models(specs, data, ctx.cohort, ctx.splits, ctx.profile, ctx.seed, ctx.run_dir,
                               keep_models=keep_models, engine=ctx.engine)
    return results, update_summary(ctx.run_dir, rows)


def read_summary(ctx: Context) -> pd.DataFrame:
    """The run's ``results/summary.csv`` as the chapters before this one left it."""
    return pd.read_csv(ctx.path("results", "summary.csv"))


def models_that_ran(summary: pd.DataFrame) -> set[str]:
    """The models of ``summary`` whose status is ``ran`` (not skipped)."""
    return set(summary.loc[summary["status"] == "ran", "model"])


def prevalence(cohort: Cohort) -> float:
    """The share of short PFS among the labelled patients (the chance level of a precision–recall curve)."""
    return cohort.labelled["label"].mean()


@dataclass
class RiskGroups:
    """Patients split at the median of a model's mean out-of-fold risk, and their PFS."""

    model: str
    time: pd.Series  # PFS, months, of the predicted patients
    event: pd.Series  # 1 = progression or death
    high: np.ndarray  # True: risk above the median
    p_value: float  # log-rank test of the two groups


def median_risk_groups(cohort: Cohort, model: str, predictions: pd.DataFrame) -> RiskGroups:
    """:class:`RiskGroups` of ``model`` from its ``predictions`` (every predicted patient, labelled or not, at
    their mean probability over the repeats), compared with the log-rank test."""
    risk = mean_probability(predictions)
    d = cohort.data.loc[risk.index]
    groups = risk_groups_logrank(d["pfs_months"], d["event"], risk)
    return RiskGroups(model, d["pfs_months"], d["event"], groups["high"], groups["p"])
