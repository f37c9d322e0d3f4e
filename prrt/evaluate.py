"""Evaluation of out-of-fold predictions: metrics, confidence intervals, paired tests, survival.

Predictions
-----------
Every model writes ``predictions/<model>.csv`` with columns ``patient, repeat, fold, probability,
label``: one row per labelled patient and repeat (the probability of short PFS given by the model
that did *not* see that patient), plus rows with ``fold = -1`` and an empty label for patients
censored before the horizon (the mean prediction of the k models of that repeat, none of which
trained on them), so that survival analyses can use every patient.

Conventions
-----------
* **AUROC and AUPRC per repeat**: computed on all out-of-fold predictions of one repeat; reported as
  mean ± SD across repeats, as the study did.
* **95 % confidence interval** of the mean AUROC (AUPRC): percentile bootstrap over patients,
  stratified by label; each bootstrap sample recomputes the metric for every repeat and averages.
* **Paired comparison of two models** on the same splits:
  - the corrected resampled t-test of Nadeau & Bengio (2003) on the per-fold AUROC differences of
    all repeats and folds, which inflates the variance by ``n_test / n_train`` to account for the
    overlap of training sets: this is the p-value the book quotes;
  - DeLong's test for two correlated AUROCs (DeLong et al. 1988, fast algorithm of Sun & Xu 2014)
    on each patient's mean out-of-fold probability across repeats, as a secondary view (it ignores
    the variability from re-splitting).
* **Per-patient score** for survival, calibration and decision curves: the mean out-of-fold
  probability across repeats.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

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
    """The rows of one fold's test patients (``fold`` is a :class:`prrt.splits.Fold`)."""
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
    is how we read the study's AUPRC of 0.80 (see :data:`prrt.results.STUDY_REPORTED`).
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


def summarise(pred: pd.DataFrame, cohort=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """The numbers of one model for ``summary.csv``."""
    m = per_repeat_metrics(pred)
    ci = bootstrap_ci(pred, n_boot=n_boot, seed=seed)
    out = {
        "auroc_mean": m["auroc"].mean(), "auroc_sd": m["auroc"].std(ddof=1) if len(m) > 1 else 0.0,
        "auroc_ci_low": ci["auroc_ci"][0], "auroc_ci_high": ci["auroc_ci"][1],
        "auprc_mean": m["auprc"].mean(), "auprc_sd": m["auprc"].std(ddof=1) if len(m) > 1 else 0.0,
        "auprc_ci_low": ci["auprc_ci"][0], "auprc_ci_high": ci["auprc_ci"][1],
        "auprc_long_mean": m["auprc_long"].mean(),
        "auprc_long_sd": m["auprc_long"].std(ddof=1) if len(m) > 1 else 0.0,
        "brier_mean": m["brier"].mean(),
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


# ---- paired tests ---------------------------------------------------------------------------------
def corrected_resampled_ttest(diffs, n_train: int, n_test: int) -> dict:
    """Nadeau & Bengio's corrected resampled t-test of per-fold score differences.

    ``diffs``: one difference (model A − model B) per (repeat, fold), J values in all. The variance
    of the mean is ``(1/J + n_test/n_train) * s²`` instead of ``s²/J``; t has J − 1 degrees of freedom.
    """
    d = np.asarray(diffs, float)
    J = len(d)
    if J < 2:
        raise ValueError("need at least two folds for a t-test")
    var = d.var(ddof=1)
    mean = d.mean()
    if var == 0:
        return {"mean_difference": mean, "t": np.inf if mean else 0.0, "df": J - 1, "p": 0.0 if mean else 1.0}
    t = mean / np.sqrt((1 / J + n_test / n_train) * var)
    return {"mean_difference": mean, "t": float(t), "df": J - 1, "p": float(2 * stats.t.sf(abs(t), J - 1))}


def _midrank(x):
    return stats.rankdata(x, method="average")


def delong_test(y, score_a, score_b) -> dict:
    """DeLong's test for the difference of two correlated AUROCs on the same patients.

    Fast algorithm of Sun & Xu (2014). Returns both AUROCs, their difference, its standard error,
    z and the two-sided p-value.
    """
    y = np.asarray(y, int)
    scores = np.vstack([np.asarray(score_a, float), np.asarray(score_b, float)])
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError("DeLong's test needs at least two patients of each class")
    tx = np.vstack([_midrank(p) for p in pos])
    ty = np.vstack([_midrank(q) for q in neg])
    tz = np.vstack([_midrank(s) for s in np.hstack([pos, neg])])
    auc = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v01 = (tz[:, :m] - tx) / n  # structural components of the positives
    v10 = 1 - (tz[:, m:] - ty) / m  # ... of the negatives
    s = np.cov(v01) / m + np.cov(v10) / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    diff = auc[0] - auc[1]
    if var <= 0:
        z, p = (0.0, 1.0) if diff == 0 else (np.inf, 0.0)
    else:
        z = diff / np.sqrt(var)
        p = 2 * stats.norm.sf(abs(z))
    return {"auroc_a": float(auc[0]), "auroc_b": float(auc[1]), "difference": float(diff),
            "se": float(np.sqrt(max(var, 0))), "z": float(z), "p": float(p), "covariance": s}


def compare_models(pred_a: pd.DataFrame, pred_b: pd.DataFrame, splits: pd.DataFrame) -> dict:
    """Paired comparison of two models evaluated on the same splits (see module docstring)."""
    fa, fb = per_fold_auroc(pred_a), per_fold_auroc(pred_b)
    if not fa.index.equals(fb.index):
        raise ValueError("the two models were not evaluated on the same repeats and folds")
    sizes = splits.groupby(["repeat", "fold"]).size()
    n_total = splits.groupby("repeat").size().iloc[0]
    n_test = float(sizes.mean())
    nb = corrected_resampled_ttest((fa - fb).to_numpy(), n_train=n_total - n_test, n_test=n_test)
    ma, mb = mean_probability(labelled(pred_a)), mean_probability(labelled(pred_b))
    y = labelled(pred_a).groupby("patient")["label"].first().loc[ma.index]
    dl = delong_test(y.to_numpy(int), ma.to_numpy(), mb.loc[ma.index].to_numpy())
    return {"auroc_difference": float(nb["mean_difference"]), "p_corrected_t": nb["p"], "t": nb["t"],
            "df": nb["df"], "p_delong": dl["p"], "delong_difference": dl["difference"]}


# ---- survival, calibration, decision curves --------------------------------------------------------
def risk_groups_logrank(time, event, risk, threshold=None) -> dict:
    """Split patients at ``threshold`` (default: the median risk) and compare PFS with the log-rank test."""
    from lifelines.statistics import logrank_test

    time, event, risk = (np.asarray(v, float) for v in (time, event, risk))
    thr = float(np.median(risk)) if threshold is None else float(threshold)
    high = risk > thr
    res = logrank_test(time[high], time[~high], event[high], event[~high])
    return {"threshold": thr, "high": high, "p": float(res.p_value), "statistic": float(res.test_statistic)}


def calibration(y, p, n_bins: int = 5) -> pd.DataFrame:
    """Calibration curve (scikit-learn, quantile bins): mean predicted vs observed frequency."""
    from sklearn.calibration import calibration_curve

    obs, predicted = calibration_curve(np.asarray(y, int), np.asarray(p, float), n_bins=n_bins, strategy="quantile")
    return pd.DataFrame({"predicted": predicted, "observed": obs})


def calibration_intercept_slope(y, p, eps: float = 1e-6) -> dict:
    """Calibration-in-the-large and calibration slope of predicted probabilities ``p`` for outcomes ``y``
    (logistic recalibration, statsmodels GLM), each with its 95 % Wald CI.

    The slope is the coefficient of logit(p) in ``logit P(y=1) = a + b logit(p)``: 1 when the predictions
    spread as much as the outcomes do, below 1 when they are too extreme (the usual sign of overfitting,
    or of a model taken to another site). Calibration-in-the-large is the intercept with logit(p) as an
    offset (slope fixed at 1): 0 when the mean risk is right, negative when the model predicts too high.
    """
    import statsmodels.api as sm

    y = np.asarray(y, float)
    lp = np.asarray(p, float)
    ok = ~(np.isnan(y) | np.isnan(lp))
    y, lp = y[ok], np.clip(lp[ok], eps, 1 - eps)
    lp = np.log(lp / (1 - lp))
    family = sm.families.Binomial()
    large = sm.GLM(y, np.ones((len(y), 1)), family=family, offset=lp).fit()
    slope = sm.GLM(y, sm.add_constant(lp), family=family).fit()
    (a_lo, a_hi), (b_lo, b_hi) = large.conf_int()[0], slope.conf_int()[1]
    return {"calibration_in_the_large": float(large.params[0]), "calibration_in_the_large_ci": (float(a_lo), float(a_hi)),
            "calibration_slope": float(slope.params[1]), "calibration_slope_ci": (float(b_lo), float(b_hi)),
            "n": int(len(y))}


def net_benefit(y, p, thresholds) -> pd.DataFrame:
    """Decision curve: net benefit of treating patients with ``p >= t``, of treating all, and none.

    Net benefit = TP/n − FP/n × t/(1 − t) (Vickers & Elkin 2006).
    """
    y = np.asarray(y, int)
    p = np.asarray(p, float)
    n = len(y)
    prev = y.mean()
    rows = []
    for t in thresholds:
        treat = p >= t
        tp = np.sum(treat & (y == 1))
        fp = np.sum(treat & (y == 0))
        w = t / (1 - t)
        rows.append({"threshold": t, "model": tp / n - fp / n * w, "treat_all": prev - (1 - prev) * w,
                     "treat_none": 0.0})
    return pd.DataFrame(rows)


def _fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_phrase(p) -> str:
    """A p-value as prose puts it after "p": ``"<0.001"`` or ``"= 0.215"`` (``p`` a number or :func:`_fmt_p`'s text)."""
    text = p if isinstance(p, str) else _fmt_p(p)
    return text if text.startswith("<") else f"= {text}"


def pairwise_table(predictions: dict, splits: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each model against ``reference``: AUROC difference, corrected t-test p (quoted) and DeLong p."""
    rows = []
    for name, pred in predictions.items():
        if name == reference:
            continue
        c = compare_models(pred, predictions[reference], splits)
        rows.append({"model": name, "versus": reference,
                     "AUROC difference (mean over folds)": f"{c['auroc_difference']:+.3f}",
                     "p, corrected resampled t-test (quoted)": _fmt_p(c["p_corrected_t"]),
                     "p, DeLong": _fmt_p(c["p_delong"])})
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()
