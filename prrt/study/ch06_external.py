"""External validation: the models fitted on one cohort, frozen, predict a second cohort once.

``prrt run --manifest A.yaml --validate-on B.yaml`` answers the question a second hospital asks: does the
model developed there work on our patients? Chapters 02-04 cross-validate every model inside the
development cohort A. Chapter 06 fits each of those models once more on *all* labelled patients of A
(with the same profile and seed; early stopping and every other inner choice use A's patients only; an inner
validation part of A is held out only where it chooses the kept epoch, so with the last epoch kept every labelled
patient of A fits the model, and the results record how many did: ``n_development_fit``), and predicts every
patient of B with it, once. Nothing of B is seen before that prediction: no scaling,
imputation, feature selection or epoch choice.

How it reuses the one model loop (:mod:`prrt.learn`): both cohorts become one :class:`Cohort`
(:func:`merge_cohorts`, B's patients under their own pseudonyms ``E001``, …), and the run's *external
design* (:func:`external_splits`) is a splits table with a single test fold, B's labelled patients, while
A's labelled patients are :data:`prrt.evaluation.splits.TRAINING_ONLY`. Every model then runs through
:func:`prrt.learn.run_models` exactly as in the chapters, into ``<run>/external/``.

What is reported for B (:func:`external_metrics`): AUROC and AUPRC with stratified bootstrap CIs, Harrell's
C-index against PFS with a bootstrap CI (every patient of B with a PFS time, those censored before the
horizon included), calibration-in-the-large and calibration slope with Wald CIs
(:func:`prrt.evaluation.calibration.calibration_intercept_slope`), and the change from A's cross-validated numbers
(:func:`comparison_table`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from ..data import Cohort, load_cohort, merge_cohorts
from ..evaluation import (
    calibration_bins,
    comparison_table,
    external_metrics,
    external_splits,
    iter_folds,
    labelled,
    net_benefit,
    save_splits,
)
from ..imaging import cohort_features
from ..learn import (
    ModelData,
    config_from_profile,
    ct_encoder_state,
    feature_table,
    folds_of,
    image_data,
    run_models,
)
from .ch02_labs import lab_chapter_specs, saved_pet_features
from .ch03_images import image_specs
from .ch04_fusion import chapter_specs, write_cross_fitted_scores
from .names import HEADLINE
from .notebook import DECISION_THRESHOLDS, RiskGroups, median_risk_groups


def features_of(cohort: Cohort, patients: list[str], known: pd.DataFrame | None = None,
                progress: bool = True) -> pd.DataFrame | None:
    """SR-PET lesion features of ``patients`` (``known``: those already computed, e.g. by chapter 02 for the
    development cohort; only the others are computed). None when the cohort has no PET."""
    if "pet" not in cohort.modalities:
        return None
    known = known if known is not None else pd.DataFrame()
    todo = [p for p in patients if p not in known.index]
    parts = [known.loc[[p for p in patients if p in known.index]]]
    if todo:
        parts.append(cohort_features(replace(cohort, data=cohort.data.loc[todo]), progress=progress))
    out = pd.concat(parts)
    out.index.name = "patient"
    return out


def format_external(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`external_metrics` rows (with ``model``) for the book: each number with its 95 % CI in brackets."""
    def num(v):
        text = f"{v:.2f}"
        return "0.00" if text == "-0.00" else text

    def ci(r, key):
        v, lo, hi = r[key], r[f"{key}_ci_low"], r[f"{key}_ci_high"]
        return "–" if pd.isna(v) else f"{num(v)} ({num(lo)}, {num(hi)})"

    columns = {"AUROC": "auroc", "AUPRC": "auprc", "C-index": "c_index",
               "calibration-in-the-large": "calibration_in_the_large", "calibration slope": "calibration_slope"}
    return pd.DataFrame({name: [ci(r, key) for _, r in table.iterrows()] for name, key in columns.items()},
                        index=pd.Index(table["model"], name="model (95 % CI)"))


def format_comparison(table: pd.DataFrame, metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`comparison_table` for the book (three decimals, signed changes); with ``metrics`` (B's numbers, with
    their CIs) what each AUROC change reads as (:func:`change_word`)."""
    f = lambda v: "–" if pd.isna(v) else f"{v:.3f}"  # noqa: E731
    d = lambda v: "–" if pd.isna(v) else f"{v:+.3f}"  # noqa: E731
    ci = metrics.set_index("model")[["auroc_ci_low", "auroc_ci_high"]] if metrics is not None else None
    return pd.DataFrame({
        "inputs": table["inputs"].to_list(),
        "AUROC, development (CV)": table["auroc_development"].map(f).to_list(),
        "AUROC, external": table["auroc_external"].map(f).to_list(),
        "AUROC change": table["auroc_change"].map(d).to_list(),
        **({"reads as": [change_word(dev, *ci.loc[m]) for m, dev in zip(table["model"], table["auroc_development"])]}
           if ci is not None else {}),
        "AUPRC, development (CV)": table["auprc_development"].map(f).to_list(),
        "AUPRC, external": table["auprc_external"].map(f).to_list(),
        "C-index, development (CV)": table["c_index_development"].map(f).to_list(),
        "C-index, external": table["c_index_external"].map(f).to_list(),
    }, index=pd.Index(table["model"], name="model"))


def cohorts_table(development: Cohort, external: Cohort) -> pd.DataFrame:
    """The two cohorts side by side: patients, labels, PFS, modalities, missing laboratory values."""
    def column(c: Cohort) -> dict:
        s = c.summary()
        one, zero = c.group_names
        out = {"patients": s["patients"], "labelled": s["labelled"], one: s["short_pfs"], zero: s["long_pfs"],
               "censored before the horizon (no label)": s["excluded_censored_before_horizon"]}
        if c.has_survival:
            out["median PFS, months (events only)"] = round(float(c.data.loc[c.data["event"] == 1, "pfs_months"].median()), 1)
        for m, n in s["modalities"].items():
            out[f"with {m} image"] = n
        if c.labs:
            cells = c.data[c.labs]
            out["laboratory values missing"] = f"{int(cells.isna().sum().sum())} of {cells.size}"
        return out

    return pd.DataFrame({f"development: {development.name}": column(development),
                         f"external: {external.name}": column(external)}).astype(object)


# ---- the chapter's work ----------------------------------------------------------------------------------
#: Where a run keeps its external validation (checkpoints, predictions, the design's splits).
EXTERNAL_DIR = "external"

#: The file of B's numbers, one row per model, in the run's ``results/``.
RESULTS_FILE = "06_external_validation.csv"


@dataclass
class ExternalValidation:
    """What :func:`validate_externally` did: the cohorts, the design, the frozen models' results and B's numbers."""

    development: Cohort
    external_cohort: Cohort
    cohort: Cohort  # both, as one (B under pseudonyms E001, ...)
    external: list[str]  # B's pseudonyms in ``cohort``
    splits: pd.DataFrame
    results: dict  # model -> prrt.learn.loop.CVResult (predictions of every patient of B)
    metrics: pd.DataFrame  # external_metrics, one row per model (with model, inputs)
    comparison: pd.DataFrame  # comparison_table
    ct_pretraining: str = ""

    def predictions(self, model: str) -> pd.DataFrame:
        """The model's predictions of B's patients."""
        pred = self.results[model].predictions
        return pred[pred["patient"].isin(set(self.external))]


def validate_externally(ctx, validate_on, ct_weights: str = "", ct_weights_prefix=(), progress: bool = True):
    """Fit every model that ran in chapters 02-04 of this run on all labelled patients of the development
    cohort and predict the external cohort ``validate_on`` (a manifest) once; ``ctx``: the notebook's
    :class:`prrt.study.notebook.Context`. Writes ``external/`` (splits, checkpoints, predictions) and
    ``results/06_external_validation.csv``; returns an :class:`ExternalValidation`."""

    development = ctx.cohort
    external_cohort = load_cohort(validate_on, check_images="exists")
    cohort, ext = merge_cohorts(development, external_cohort)
    out_dir = ctx.run_dir / EXTERNAL_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = external_splits(cohort, ext)
    save_splits(splits, out_dir)
    summary_file = ctx.run_dir / "results" / "summary.csv"
    if not summary_file.is_file():
        raise FileNotFoundError(f"{summary_file} does not exist: run chapters 02-04 first (prrt run does)")
    summary = pd.read_csv(summary_file)
    ran = set(summary.loc[summary["status"] == "ran", "model"])

    known = saved_pet_features(ctx.run_dir)  # chapter 02's features of the development cohort
    pet = features_of(cohort, list(cohort.data.index), known=known, progress=progress)
    table = feature_table(cohort, pet)
    prefixes = [p for p in ct_weights_prefix if p]
    ct_state, _, how = (ct_encoder_state(cohort, ctx.profile, ctx.cache_dir, ctx.seed, ct_weights, prefixes,
                                         progress=progress) if "ct" in cohort.modalities else (None, {}, ""))
    if {"ct", "pet"} & set(cohort.modalities):
        data = image_data(cohort, ctx.profile, ctx.cache_dir, progress=progress, table=table)
    else:
        data = ModelData(cohort.data["label"], table=table)
    specs = (lab_chapter_specs(cohort, pet, ctx.profile) + image_specs(cohort, ctx.profile)
             + chapter_specs(cohort, ctx.profile, ct_state, run_dir=out_dir))
    specs = external_specs(specs, ran, ctx.profile)
    # cross-fitted image branches: the development patients' scores from CNNs fitted on the other two thirds of them
    write_cross_fitted_scores(ctx, specs, data, splits=splits, run_dir=out_dir)
    results, _ = run_models(specs, data, cohort, splits, ctx.profile, ctx.seed, out_dir, progress=progress,
                            engine=ctx.engine)
    rows = []
    for spec in specs:
        rows.append({"model": spec.name, "inputs": spec.inputs,
                     "n_development_fit": development_fit(spec, data, splits, results[spec.name]),
                     **external_metrics(results[spec.name].predictions, cohort, ext, n_boot=ctx.profile.n_bootstrap,
                                        seed=ctx.seed)})
    metrics = pd.DataFrame(rows)
    metrics.to_csv(ctx.path("results", RESULTS_FILE), index=False)
    comparison = comparison_table(summary, metrics) if len(metrics) else pd.DataFrame()
    return ExternalValidation(development, external_cohort, cohort, ext, splits, results, metrics, comparison, how)


def external_specs(specs: list, ran: set[str], profile) -> list:
    """The models of the external design: those of ``specs`` that ran in this run (a profile's subset of chapter 04
    included), without permutation importances (the chapters' business). An inner validation part of A is drawn
    only where it chooses something (the kept epoch, the profile's ``selection = "val_loss"``); otherwise every
    labelled patient of A fits the model."""
    hold_out = config_from_profile(profile).selection == "val_loss"
    return [replace(s, permutation_repeats=0, val_fraction=s.val_fraction if hold_out else 0.0)
            for s in specs if s.name in ran and s.build is not None]


def development_fit(spec, data, splits: pd.DataFrame, result) -> int:
    """How many development patients fitted the model of the external design: A's labelled patients with the model's
    inputs, less an inner validation part if one was drawn."""
    fold = folds_of(spec, data, list(iter_folds(splits)))[0]
    return len(fold.train) - len(result.inner_validation.get((fold.repeat, fold.fold), []))


def change_word(auroc_development: float, low: float, high: float) -> str:
    """``drop`` when A's cross-validated AUROC lies above B's 95 % CI, ``gain`` when below it, ``within noise``
    when inside it."""
    return "drop" if auroc_development > high else "gain" if auroc_development < low else "within noise"


def change_reading(auroc_development: float, low: float, high: float) -> str:
    """What the external AUROC's interval says about the change from the development cohort (:func:`change_word`),
    in words."""
    word = change_word(auroc_development, low, high)
    where = {"drop": "above", "gain": "below", "within noise": "inside"}[word]
    return (f"{'within noise' if word == 'within noise' else 'a ' + word}: the development AUROC "
            f"({auroc_development:.2f}) lies {where} the external 95 % CI ({low:.2f} to {high:.2f})"
            + (", so this cohort cannot tell the two apart" if word == "within noise" else ""))


def headline_model(metrics: pd.DataFrame) -> str | None:
    """The model the chapter's sentence is about: chapter 04's headline fusion if it ran, else the first."""
    names = list(metrics["model"]) if len(metrics) else []
    return HEADLINE if HEADLINE in names else (names[0] if names else None)


def headline_text(ev: ExternalValidation | None) -> str:
    """A sentence on the headline model's numbers on B against its cross-validation in A (Markdown); without an
    external cohort (``ev`` is ``None``), :data:`NO_EXTERNAL`."""
    if ev is None:
        return NO_EXTERNAL
    name = headline_model(ev.metrics)
    if name is None:
        return "No model ran, so nothing was validated."
    e = ev.metrics.set_index("model").loc[name]
    c = ev.comparison.set_index("model").loc[name]
    fitted = (f", fitted on {int(e['n_development_fit'])} development patients,"
              if pd.notna(e.get("n_development_fit", float("nan"))) else "")
    return (f"`{name}`{fitted} reached an AUROC of {e['auroc']:.2f} (95 % CI {e['auroc_ci_low']:.2f} to "
            f"{e['auroc_ci_high']:.2f}) on the {e['n_patients']} labelled patients of the external cohort, against "
            f"{c['auroc_development']:.2f} in cross-validation inside the development cohort (change "
            f"{c['auroc_change']:+.2f}: {change_reading(c['auroc_development'], e['auroc_ci_low'], e['auroc_ci_high'])}); "
            f"its calibration-in-the-large was {e['calibration_in_the_large']:+.2f} "
            f"({e['calibration_in_the_large_ci_low']:+.2f} to {e['calibration_in_the_large_ci_high']:+.2f}) and its "
            f"calibration slope {e['calibration_slope']:.2f} ({e['calibration_slope_ci_low']:.2f} to "
            f"{e['calibration_slope_ci_high']:.2f}).")


#: What chapter 06 says in a run without a second cohort.
NO_EXTERNAL = ("This run has no external cohort, so this chapter has nothing to validate: run "
               "`prrt run --manifest A.yaml --validate-on B.yaml` to test the models of chapters 2 to 4 on a second "
               "cohort.")


# ---- what chapter 06 shows -------------------------------------------------------------------------------
def validated(ev: ExternalValidation | None) -> bool:
    """Whether the run validated a model on an external cohort."""
    return ev is not None and len(ev.metrics) > 0


def comparison_of_run(ctx, ev: ExternalValidation | None) -> pd.DataFrame | None:
    """The change from cross-validation in A to B (:func:`format_comparison`), its numbers written to
    ``results/06_external_vs_development.csv``; ``None`` without an external cohort or a validated model."""
    if ev is None or not len(ev.comparison):
        return None
    ev.comparison.to_csv(ctx.path("results", "06_external_vs_development.csv"), index=False)
    return format_comparison(ev.comparison, ev.metrics)


def external_predictions(ev: ExternalValidation) -> dict[str, pd.DataFrame]:
    """Each validated model's predictions of B's patients."""
    return {m: ev.predictions(m) for m in ev.metrics["model"]}


def calibration_curves(ev: ExternalValidation) -> tuple[dict, dict]:
    """Calibration (quantile bins) and decision curves of each validated model on B's labelled patients:
    ``({model: calibration}, {model: net benefit at DECISION_THRESHOLDS})``."""
    curves, decision = {}, {}
    for m, pred in external_predictions(ev).items():
        lab = labelled(pred)
        curves[m] = calibration_bins(lab["label"], lab["probability"])
        decision[m] = net_benefit(lab["label"], lab["probability"], DECISION_THRESHOLDS)
    return curves, decision


def risk_groups(ev: ExternalValidation | None) -> RiskGroups | None:
    """B's patients split at the median of the headline model's predicted risk; ``None`` without an external
    cohort, a validated model or PFS times."""
    name = headline_model(ev.metrics) if ev is not None else None
    if name is None or not ev.cohort.has_survival:
        return None
    return median_risk_groups(ev.cohort, name, ev.predictions(name))
