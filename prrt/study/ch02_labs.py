"""Chapter 02: tabular models (laboratory values, PET features) on the run's shared splits, and what the chapter
shows of them (odds ratios, importances, paired comparisons, risk groups, calibration).

Every model is a scikit-learn ``Pipeline``, so that imputation (and anything else that learns from
data) is fitted on the training part of each fold only. :class:`TableModel` puts a pipeline behind
the model interface of :mod:`prrt.learn`, whose loop fits one per repeat and fold of ``splits.csv``
(permutation importance is computed on the held-out fold).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd

from ..evaluation import (
    calibration_bins,
    display_table1,
    format_p,
    format_summary,
    holm,
    labelled,
    net_benefit,
    odds_ratio_table,
    pairwise_table,
    splits_table,
    table_by_group,
)
from ..imaging import FEATURES, cohort_features
from ..learn import ModelData, feature_table, importance_summary, make_model, table_spec
from .names import RISK_GROUP_MODELS
from .notebook import DECISION_THRESHOLDS, RiskGroups, fit_models, median_risk_groups
from .reported import comparison_tables

#: Where chapter 02 writes the SR-PET lesion features of every patient for the later chapters (in the run folder)
PET_FEATURES_FILE = "features/pet_features.csv"

#: The sensitivity model with the number of PRRT cycles (a consequence of early progression): never a main model.
SENSITIVITY = "lab_rf_with_cycles"
#: The reference of the chapter's paired comparisons.
REFERENCE = "lab_rf"
#: The models whose importances the chapter shows (their permutation importance is computed; chapter 05 reads
#: the laboratory Random Forest's).
IMPORTANCE_MODELS = ("lab_rf", "lab_pet_features_rf")


def lab_chapter_specs(cohort, pet: pd.DataFrame | None, profile, chapter: str = "02") -> list:
    """The models of chapter 02 (:class:`prrt.learn.ModelSpec`), each with the reason it is skipped
    when its inputs are missing. Permutation importance is computed for two of them (it is costly)."""
    labs = list(cohort.labs)
    has_cycles = "prrt_cycles" in cohort.clinical and "prrt_cycles" not in cohort.categorical
    no_labs = "the manifest lists no laboratory values"
    no_pet = "the manifest names no PET images"
    rf = lambda seed: make_model("rf", seed, profile)  # noqa: E731
    logreg = lambda seed: make_model("logreg", seed, profile)  # noqa: E731
    perm = profile.permutation_repeats
    return [
        table_spec("lab_rf", chapter, "laboratory values", labs or None, rf, no_labs, bound="lab",
                   permutation_repeats=perm),
        table_spec("lab_rf_with_cycles", chapter, "laboratory values + PRRT cycles (sensitivity analysis)",
                   labs + ["prrt_cycles"] if labs and has_cycles else None, rf,
                   no_labs if not labs else "the manifest has no numeric clinical column 'prrt_cycles'"),
        table_spec("lab_logreg", chapter, "laboratory values, logistic regression", labs or None, logreg, no_labs,
                   bound="lab"),
        table_spec("pet_features_rf", chapter, "SR-PET quantitative features", FEATURES if pet is not None else None,
                   rf, no_pet, bound="pet_features"),
        table_spec("pet_features_logreg", chapter, "SR-PET quantitative features, logistic regression",
                   FEATURES if pet is not None else None, logreg, no_pet, bound="pet_features"),
        table_spec("lab_pet_features_rf", chapter, "laboratory values + SR-PET features",
                   labs + FEATURES if (labs and pet is not None) else None, rf, no_labs if not labs else no_pet,
                   bound="lab_pet_features", permutation_repeats=perm),
    ]


def risk_group_model(results: dict) -> str | None:
    """The model whose risk groups chapter 02 shows: the first of :data:`RISK_GROUP_MODELS` that ran.

    Chosen by name, never a sensitivity analysis (the number of PRRT cycles is a consequence of
    early progression and would leak the outcome into the risk groups); ``None`` if none ran.
    """
    return next((name for name in RISK_GROUP_MODELS if name in results), None)


def format_odds_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """The odds-ratio table as the book shows it."""
    def ci(r):
        return "–" if pd.isna(r["odds_ratio"]) else f"{r['odds_ratio']:.2f} ({r['ci_low']:.2f}–{r['ci_high']:.2f})"

    out = pd.DataFrame({"odds ratio (95 % CI)": [ci(r) for _, r in table.iterrows()], "scale": table["scale"],
                        "p": [("–" if pd.isna(p) else format_p(p)) for p in table["p"]]}, index=table.index)
    if "p (Holm)" in table:
        out["p (Holm)"] = [("–" if pd.isna(p) else format_p(p)) for p in table["p (Holm)"]]
    out["patients"] = table["n"]
    return out


# ---- what chapter 02 shows ---------------------------------------------------------------------------
def protocol_table(ctx) -> pd.DataFrame:
    """The test part of each fold of the run's shared splits (made here, from the run's seed, when no chapter of
    the run made them before): one column per repeat and fold, with its patients and short-PFS count."""
    return splits_table(ctx.splits, ctx.cohort)


def pet_features_of_run(ctx) -> pd.DataFrame | None:
    """The SR-PET lesion features of every patient (one row per patient, with where its lesions came from),
    written to ``features/pet_features.csv`` for the later chapters; ``None`` when the manifest names no PET."""
    if "pet" not in ctx.cohort.modalities:
        return None
    pet = cohort_features(ctx.cohort)
    pet.to_csv(ctx.path(PET_FEATURES_FILE))
    return pet


def saved_pet_features(run_dir) -> pd.DataFrame | None:
    """The lesion features chapter 02 of the run in ``run_dir`` wrote (``None`` if it wrote none), read back to the
    bit: pandas' default parser may change a float's last digit, and then a later chapter's models differed
    between a run that read the file and one that computed the features itself."""
    path = Path(run_dir) / PET_FEATURES_FILE
    if not path.is_file():
        return None
    pet = pd.read_csv(path, index_col=0, float_precision="round_trip")
    pet.index = pet.index.astype(str)
    return pet


def lesion_sources(pet: pd.DataFrame) -> str:
    """Where the patients' lesions came from, in words: each segmentation with its number of patients."""
    return ", ".join(f"{k} ({v} patients)" for k, v in pet["segmentation"].value_counts().items())


def pet_features_table(pet: pd.DataFrame, cohort) -> pd.DataFrame:
    """The lesion features by PFS group (median [IQR], Mann–Whitney U), as Table 1 shows variables."""
    return display_table1(table_by_group(pet.join(cohort.data["label"]), "label", FEATURES))


def fit_chapter_models(ctx, pet: pd.DataFrame | None) -> tuple[dict, pd.DataFrame]:
    """Cross-validate the models of :func:`lab_chapter_specs` on the laboratory values and the lesion features
    ``pet``; returns their results and the run's summary (with the chapter's rows)."""
    data = ModelData(ctx.cohort.data["label"], table=feature_table(ctx.cohort, pet))
    return fit_models(ctx, lab_chapter_specs(ctx.cohort, pet, ctx.profile), data)


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The chapter's rows of the run's summary, as the book shows them."""
    return format_summary(summary[summary["chapter"] == "02"])


def odds_ratios(ctx) -> pd.DataFrame:
    """For each laboratory value alone, a logistic regression on all labelled patients: odds ratio for short PFS
    with its 95 % CI and p-value, and the p-value adjusted by Holm's method (``p (Holm)``); written to
    ``results/02_odds_ratios.csv``."""
    odds = odds_ratio_table(ctx.cohort.data, ctx.cohort.labs)
    odds["p (Holm)"] = holm(odds["p"])
    odds.to_csv(ctx.path("results", "02_odds_ratios.csv"))
    return odds


def main_predictions(results: dict) -> dict[str, pd.DataFrame]:
    """The out-of-fold predictions of the chapter's models that ran, the sensitivity analysis left out."""
    return {n: r.predictions for n, r in results.items() if n != SENSITIVITY}


class Importance(NamedTuple):
    """A model's importances as the chapter plots them (mean and SD over repeats and folds, per input)."""

    permutation: pd.DataFrame  # drop in AUROC on the held-out folds
    impurity: pd.DataFrame  # mean decrease in impurity on the training data
    n_features: int  # the model's inputs


def importances(ctx, results: dict) -> dict[str, Importance]:
    """The importances of the models of :data:`IMPORTANCE_MODELS` that ran; each one's permutation importance per
    repeat and fold is written to ``results/02_permutation_<model>.csv`` (chapter 05 reads it)."""
    out = {}
    for name in IMPORTANCE_MODELS:
        if name not in results:
            continue
        r = results[name]
        r.permutation.to_csv(ctx.path("results", f"02_permutation_{name}.csv"), index=False)
        out[name] = Importance(importance_summary(r.permutation), importance_summary(r.impurity), len(r.features))
    return out


def cycles_sensitivity(results: dict, splits: pd.DataFrame) -> pd.DataFrame | None:
    """The laboratory Random Forest against the same forest with the number of PRRT cycles (paired tests on the
    shared splits); ``None`` when either did not run."""
    if not {REFERENCE, SENSITIVITY} <= set(results):
        return None
    return pairwise_table({k: results[k].predictions for k in [REFERENCE, SENSITIVITY]}, splits, reference=REFERENCE)


def paired_comparisons(results: dict, splits: pd.DataFrame) -> pd.DataFrame | None:
    """Each main model (:func:`main_predictions`) against the laboratory Random Forest, on the shared splits;
    ``None`` when the forest did not run or is the only main model."""
    main = main_predictions(results)
    if REFERENCE not in results or len(main) < 2:
        return None
    return pairwise_table(main, splits, reference=REFERENCE)


def risk_groups(cohort, results: dict) -> RiskGroups | None:
    """The median risk groups of :func:`risk_group_model`; ``None`` without PFS times or when no such model ran."""
    best = risk_group_model(results)
    if not cohort.has_survival or best is None:
        return None
    return median_risk_groups(cohort, best, results[best].predictions)


def calibration_curves(cohort, predictions: dict[str, pd.DataFrame]) -> tuple[dict, dict]:
    """Calibration (quantile bins) and decision curves of each model, from the out-of-fold probabilities of every
    repeat pooled (each labelled patient once per repeat, as the summary's calibration slope and Brier score read
    them, repeat by repeat): ``({model: calibration}, {model: net benefit at DECISION_THRESHOLDS})``. (Averaging a
    patient's probabilities over the repeats first would smooth them, and draw a better calibration than any one
    repeat's model has.)"""
    labels = set(cohort.labelled.index)
    curves, decision = {}, {}
    for name, pred in predictions.items():
        rows = labelled(pred)
        rows = rows[rows["patient"].isin(labels)]
        y, p = rows["label"].astype(int), rows["probability"]
        curves[name] = calibration_bins(y, p)
        decision[name] = net_benefit(y, p, thresholds=DECISION_THRESHOLDS)
    return curves, decision


def comparison_with_study(ctx, summary: pd.DataFrame, pet: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The chapter's models beside the study's numbers (:func:`prrt.study.reported.comparison_tables`), with each
    model's achievable AUROC (the generator's bound for its inputs) on a synthetic cohort."""
    keys = {s.name: s.bound for s in lab_chapter_specs(ctx.cohort, pet, ctx.profile)}
    return comparison_tables(ctx.cohort, summary[summary["chapter"] == "02"], keys)
