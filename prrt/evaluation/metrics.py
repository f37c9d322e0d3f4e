"""Metrics of out-of-fold predictions: the prediction format, AUROC, AUPRC and Brier score per repeat,
bootstrap confidence intervals, Harrell's C-index, and the numbers of ``summary.csv``.

Predictions
-----------
Every model writes ``predictions/<model>.csv`` with columns ``patient, repeat, fold, probability,
label`` (:data:`PRED_COLUMNS`, put together by :func:`assemble_predictions`): one row per labelled patient
and repeat (the probability of short PFS given by the model that did *not* see that patient), plus rows
with ``fold = -1`` and an empty label for patients censored before the horizon (the mean prediction of the
k models of that repeat, none of which trained on them), so that survival analyses can use every patient.

Conventions
-----------
* **AUROC and AUPRC per repeat** (:func:`per_repeat_metrics`): computed on all out-of-fold predictions of
  one repeat; reported as mean ± SD across repeats, as the study did.
* **95 % confidence interval** of the mean AUROC (AUPRC) (:func:`bootstrap_ci`): percentile bootstrap over
  patients, stratified by label; each bootstrap sample recomputes the metric for every repeat and averages.
* **Per-patient score** for survival, calibration and decision curves (:func:`mean_probability`): the mean
  out-of-fold probability across repeats; :func:`summarise` gives its C-index against PFS (:func:`c_index`).
* **Prior correction** (:func:`prior_correction`): the probabilities of a model trained as if both classes
  were equally frequent, moved back to the class share of its training part.

Paired tests of two models are in :mod:`prrt.evaluation.comparison`, calibration and decision curves in
:mod:`prrt.evaluation.calibration`, Kaplan–Meier summaries and log-rank tests in
:mod:`prrt.evaluation.survival`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.tools.sm_exceptions import PerfectSeparationError, PerfectSeparationWarning
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from .calibration import calibration_intercept_slope

PRED_COLUMNS = ["patient", "repeat", "fold", "probability", "label"]


def assemble_predictions(test_parts: list[pd.DataFrame], unlabelled: list[str], extra: dict) -> pd.DataFrame:
    """Out-of-fold predictions of a cross-validated model in the format above.

    ``test_parts``: one frame per (repeat, fold) with the test patients' rows; ``extra``: for each
    repeat, the probabilities that each fold model gave the ``unlabelled`` patients (averaged here).
    """
    parts = list(test_parts)
    for repeat, probs in extra.items():
        parts.append(pd.DataFrame({"patient": unlabelled, "repeat": repeat, "fold": -1,
                                   "probability": np.mean(probs, axis=0), "label": np.nan}))
    return pd.concat(parts, ignore_index=True).sort_values(["repeat", "fold", "patient"], ignore_index=True)


def fold_test_rows(fold, probability, y: pd.Series) -> pd.DataFrame:
    """The rows of one fold's test patients (``fold`` is a :class:`prrt.evaluation.Fold`)."""
    return pd.DataFrame({"patient": fold.test, "repeat": fold.repeat, "fold": fold.fold, "probability": probability,
                         "label": y.loc[fold.test].astype(int).to_numpy()})


def prior_correction(probability, prevalence: float) -> np.ndarray:
    """Undo class balancing: turn probabilities of a model trained as if both classes were equally
    frequent into probabilities for a class share of ``prevalence`` (the training part's).

    A model fitted with balanced class weights (or a ``pos_weight`` of n_negative / n_positive)
    estimates odds multiplied by ``(1 - prevalence) / prevalence``; dividing them back gives
    ``p' = p π / (p π + (1 - p)(1 - π))``. The transformation is monotone, so it leaves the ranking
    (AUROC) of one model's predictions unchanged and moves the probabilities to the right level for
    calibration plots and decision curves.
    """
    p = np.asarray(probability, float)  # p = 0 or 1 stays 0 or 1: the denominator is > 0 for 0 < π < 1
    pi = float(prevalence)
    if not 0 < pi < 1:
        raise ValueError(f"prevalence must lie strictly between 0 and 1, not {pi}")
    return p * pi / (p * pi + (1 - p) * (1 - pi))


def labelled(pred: pd.DataFrame) -> pd.DataFrame:
    return pred[pred["fold"] >= 0]


def per_repeat_metrics(pred: pd.DataFrame) -> pd.DataFrame:
    """AUROC, AUPRC and Brier score of each repeat.

    ``auprc`` takes short PFS as the positive class (its chance level is the share of short PFS);
    ``auprc_long`` takes long PFS as the positive class (chance level: the share of long PFS), which
    is how we read the study's AUPRC of 0.80 (see :data:`prrt.study.reported.STUDY_REPORTED`).
    """
    rows = []
    for r, g in labelled(pred).groupby("repeat"):
        y, p = g["label"].to_numpy(int), g["probability"].to_numpy(float)
        rows.append({"repeat": int(r), "auroc": roc_auc_score(y, p), "auprc": average_precision_score(y, p),
                     "auprc_long": average_precision_score(1 - y, 1 - p), "brier": brier_score_loss(y, p)})
    return pd.DataFrame(rows)


def per_fold_auroc(pred: pd.DataFrame) -> pd.Series:
    """AUROC of each (repeat, fold) test part."""
    return labelled(pred).groupby(["repeat", "fold"]).apply(
        lambda g: roc_auc_score(g["label"].astype(int), g["probability"]), include_groups=False)


def mean_probability(pred: pd.DataFrame) -> pd.Series:
    """Each patient's mean out-of-fold probability across repeats (all patients, labelled or not)."""
    return pred.groupby("patient")["probability"].mean()


def _matrix(pred: pd.DataFrame):
    lab = labelled(pred)
    wide = lab.pivot(index="patient", columns="repeat", values="probability").sort_index()
    y = lab.groupby("patient")["label"].first().loc[wide.index].to_numpy(int)
    return wide.to_numpy(float), y


def auroc_fast(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each column of ``scores`` (Mann–Whitney with mid-ranks; equals roc_auc_score)."""
    y = np.asarray(y, bool)
    ranks = stats.rankdata(scores, axis=0, method="average")
    n1, n0 = y.sum(), (~y).sum()
    return (ranks[y].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)


def average_precision_fast(y: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one score vector, as scikit-learn defines it (ties form one threshold)."""
    y = np.asarray(y, int)
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], y[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(t)[last_of_tie]
    fp = np.cumsum(1 - t)[last_of_tie]
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def bootstrap_ci(pred: pd.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap CIs of the repeat-mean AUROC and AUPRC (patients resampled within class)."""
    P, y = _matrix(pred)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    auroc, auprc = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        yb = y[idx]
        auroc[b] = auroc_fast(yb, P[idx]).mean()
        auprc[b] = np.mean([average_precision_fast(yb, P[idx, r]) for r in range(P.shape[1])])
    a = (1 - level) / 2
    return {"auroc_ci": tuple(np.quantile(auroc, [a, 1 - a])), "auprc_ci": tuple(np.quantile(auprc, [a, 1 - a]))}


def c_index(time, event, risk) -> float:
    """Harrell's C-index of a risk score (higher = earlier progression) against PFS (lifelines)."""
    from lifelines.utils import concordance_index

    time, event, risk = (np.asarray(v, float) for v in (time, event, risk))
    ok = ~(np.isnan(time) | np.isnan(event) | np.isnan(risk))
    return float(concordance_index(time[ok], -risk[ok], event[ok]))


def per_repeat_calibration(pred: pd.DataFrame) -> pd.DataFrame:
    """Calibration slope (with its 95 % Wald interval) and calibration-in-the-large of each repeat's out-of-fold
    probabilities (:func:`prrt.evaluation.calibration.calibration_intercept_slope`); NaN for a repeat whose probabilities
    are all the same (no slope to fit) or separate the two classes perfectly (no finite slope)."""
    rows = []
    for r, g in labelled(pred).groupby("repeat"):
        row = {"repeat": int(r), "calibration_slope": np.nan, "calibration_slope_ci_low": np.nan,
               "calibration_slope_ci_high": np.nan, "calibration_in_the_large": np.nan}
        if g["probability"].nunique() > 1:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", PerfectSeparationWarning)
                    cal = calibration_intercept_slope(g["label"], g["probability"])
            except (PerfectSeparationWarning, PerfectSeparationError):
                pass  # the predictions separate the classes: the slope is not identified
            else:
                row.update(calibration_slope=cal["calibration_slope"],
                           calibration_slope_ci_low=cal["calibration_slope_ci"][0],
                           calibration_slope_ci_high=cal["calibration_slope_ci"][1],
                           calibration_in_the_large=cal["calibration_in_the_large"])
        rows.append(row)
    return pd.DataFrame(rows, columns=["repeat", "calibration_slope", "calibration_slope_ci_low",
                                       "calibration_slope_ci_high", "calibration_in_the_large"])


def summarise(pred: pd.DataFrame, cohort=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """The numbers of one model for ``summary.csv``: AUROC and AUPRC (mean, SD over repeats, bootstrap CI), the
    Brier score (mean, SD), the calibration slope and calibration-in-the-large (means over repeats,
    :func:`per_repeat_calibration`), the C-index."""
    m = per_repeat_metrics(pred)
    cal = per_repeat_calibration(pred)
    ci = bootstrap_ci(pred, n_boot=n_boot, seed=seed)
    out = {
        "auroc_mean": m["auroc"].mean(), "auroc_sd": m["auroc"].std(ddof=1) if len(m) > 1 else 0.0,
        "auroc_ci_low": ci["auroc_ci"][0], "auroc_ci_high": ci["auroc_ci"][1],
        "auprc_mean": m["auprc"].mean(), "auprc_sd": m["auprc"].std(ddof=1) if len(m) > 1 else 0.0,
        "auprc_ci_low": ci["auprc_ci"][0], "auprc_ci_high": ci["auprc_ci"][1],
        "auprc_long_mean": m["auprc_long"].mean(),
        "auprc_long_sd": m["auprc_long"].std(ddof=1) if len(m) > 1 else 0.0,
        "brier_mean": m["brier"].mean(), "brier_sd": m["brier"].std(ddof=1) if len(m) > 1 else 0.0,
        "calibration_slope": cal["calibration_slope"].mean(),
        "calibration_in_the_large": cal["calibration_in_the_large"].mean(),
        "n_patients": int(labelled(pred)["patient"].nunique()),
        "n_repeats": int(len(m)),
        "c_index": np.nan, "n_patients_survival": 0,
    }
    if cohort is not None and cohort.has_survival:
        risk = mean_probability(pred)
        d = cohort.data.loc[risk.index]
        out["c_index"] = c_index(d["pfs_months"], d["event"], risk)
        out["n_patients_survival"] = int(len(risk))
    return out


def binormal_auprc(auroc: float, prevalence: float, n_thresholds: int = 4001) -> float:
    """The AUPRC that goes with an AUROC at a share ``prevalence`` of positives under the binormal model.

    Scores of positives and negatives normal with equal variance, separated by ``d = √2 Φ⁻¹(AUROC)``; the
    area under precision against recall over thresholds. A reading aid for a reported pair of AUROC and
    AUPRC (which class was positive?), not a metric of a model: it is ``prevalence`` at an AUROC of 0.5.
    """
    if not 0.0 < prevalence < 1.0 or not 0.0 < auroc < 1.0:
        raise ValueError(f"auroc and prevalence must lie strictly between 0 and 1, not {auroc!r} and {prevalence!r}")
    d = float(np.sqrt(2.0) * stats.norm.ppf(auroc))
    thresholds = np.linspace(max(d, 0.0) + 9.0, min(d, 0.0) - 9.0, n_thresholds)
    recall, fpr = stats.norm.sf(thresholds - d), stats.norm.sf(thresholds)
    precision = prevalence * recall / (prevalence * recall + (1 - prevalence) * fpr)
    return float(np.trapezoid(precision, recall))
