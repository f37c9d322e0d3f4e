"""External validation's numbers: how the models fitted on cohort A do on cohort B, which they predict once.

``prrt run --manifest A.yaml --validate-on B.yaml`` answers the question a second hospital asks: does the
model developed there work on our patients? Chapters 02-04 cross-validate every model inside the
development cohort A. Chapter 06 fits each of those models once more on *all* labelled patients of A
(with the same profile and seed; early stopping and every other inner choice use A's patients only),
and predicts every patient of B with it, once. Nothing of B is seen before that prediction: no scaling,
imputation, feature selection or epoch choice. Both cohorts become one (:func:`prrt.data.merge_cohorts`),
whose design has a single test fold, B's labelled patients (:func:`prrt.evaluation.external_splits`); chapter
06 runs it (:mod:`prrt.study.ch06_external`).

What is reported for B (:func:`external_metrics`): AUROC and AUPRC with stratified bootstrap CIs, Harrell's
C-index against PFS with a bootstrap CI (:func:`c_index_ci`; every patient of B with a PFS time, those
censored before the horizon included), calibration-in-the-large and calibration slope with Wald CIs
(:func:`prrt.evaluation.calibration.calibration_intercept_slope`), and the change from A's cross-validated
numbers (:func:`comparison_table`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .calibration import calibration_intercept_slope
from .metrics import (
    bootstrap_ci,
    c_index,
    labelled,
    mean_probability,
    per_repeat_metrics,
)


def c_index_ci(time, event, risk, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of Harrell's C-index (patients resampled with replacement)."""
    time, event, risk = (np.asarray(v, float) for v in (time, event, risk))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(time), len(time))
        if event[idx].sum() == 0:  # no event: the C-index is undefined for this sample
            continue
        try:
            values.append(c_index(time[idx], event[idx], risk[idx]))
        except ZeroDivisionError:  # no comparable pair
            continue
    if not values:
        return (np.nan, np.nan)
    a = (1 - level) / 2
    return tuple(float(q) for q in np.quantile(values, [a, 1 - a]))


def external_metrics(pred: pd.DataFrame, cohort, external: list[str], n_boot: int = 1000,
                     seed: int = 0) -> dict:
    """B's numbers for one model from its predictions (:mod:`prrt.evaluation.metrics` format, one repeat).

    AUROC and AUPRC with stratified bootstrap CIs on B's labelled patients; C-index with a bootstrap CI on
    every patient of B with a PFS time; calibration-in-the-large and slope with Wald CIs.
    """
    p = pred[pred["patient"].isin(set(external))]
    lab = labelled(p)
    if lab["label"].nunique() < 2:
        raise ValueError("the external cohort's labelled patients are all of one class")
    m = per_repeat_metrics(p).iloc[0]
    ci = bootstrap_ci(p, n_boot=n_boot, seed=seed)
    cal = calibration_intercept_slope(lab["label"], lab["probability"])
    out = {"auroc": m["auroc"], "auroc_ci_low": ci["auroc_ci"][0], "auroc_ci_high": ci["auroc_ci"][1],
           "auprc": m["auprc"], "auprc_ci_low": ci["auprc_ci"][0], "auprc_ci_high": ci["auprc_ci"][1],
           "brier": m["brier"], "n_patients": int(len(lab)), "n_short": int(lab["label"].sum()),
           "c_index": np.nan, "c_index_ci_low": np.nan, "c_index_ci_high": np.nan, "n_patients_survival": 0,
           "calibration_in_the_large": cal["calibration_in_the_large"],
           "calibration_in_the_large_ci_low": cal["calibration_in_the_large_ci"][0],
           "calibration_in_the_large_ci_high": cal["calibration_in_the_large_ci"][1],
           "calibration_slope": cal["calibration_slope"],
           "calibration_slope_ci_low": cal["calibration_slope_ci"][0],
           "calibration_slope_ci_high": cal["calibration_slope_ci"][1]}
    if cohort.has_survival:
        risk = mean_probability(p)
        d = cohort.data.loc[risk.index]
        ok = d["pfs_months"].notna() & d["event"].notna()
        if ok.any() and d.loc[ok, "event"].sum() > 0:
            t, e, r = d.loc[ok, "pfs_months"], d.loc[ok, "event"], risk[ok]
            out["c_index"] = c_index(t, e, r)
            out["c_index_ci_low"], out["c_index_ci_high"] = c_index_ci(t, e, r, n_boot=n_boot, seed=seed)
            out["n_patients_survival"] = int(ok.sum())
    return out


def comparison_table(development: pd.DataFrame, external: pd.DataFrame) -> pd.DataFrame:
    """One row per model: A's cross-validated AUROC, AUPRC and C-index (``summary.csv`` rows), B's, and the
    change (B − A). ``external``: :func:`external_metrics` rows with a ``model`` column."""
    dev = development.set_index("model")
    rows = []
    for _, e in external.iterrows():
        a = dev.loc[e["model"]]
        rows.append({"model": e["model"], "inputs": a["inputs"],
                     "auroc_development": a["auroc_mean"], "auroc_external": e["auroc"],
                     "auroc_change": e["auroc"] - a["auroc_mean"],
                     "auprc_development": a["auprc_mean"], "auprc_external": e["auprc"],
                     "auprc_change": e["auprc"] - a["auprc_mean"],
                     "c_index_development": a.get("c_index", np.nan), "c_index_external": e["c_index"]})
    return pd.DataFrame(rows)
