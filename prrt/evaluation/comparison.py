"""Paired comparison of two models evaluated on the same splits, and p-values as the book writes them.

* :func:`corrected_resampled_ttest`: the corrected resampled t-test of Nadeau & Bengio (2003) on the
  per-fold AUROC differences of all repeats and folds, which inflates the variance by ``n_test / n_train``
  to account for the overlap of training sets: this is the p-value the book quotes;
* :func:`delong_test`: DeLong's test for two correlated AUROCs (DeLong et al. 1988, fast algorithm of
  Sun & Xu 2014) on each patient's mean out-of-fold probability across repeats, as a secondary view (it
  ignores the variability from re-splitting).

:func:`compare_models` computes both for the predictions of two models (the format of
:mod:`prrt.evaluation.metrics`); :func:`pairwise_table` compares every model with a reference;
:func:`holm` adjusts a family of p-values for multiplicity (Holm's step-down method).
:func:`format_p` writes a p-value as a table shows it (``<0.001``, ``0.215``), :func:`p_phrase` as prose
puts it after "p" (``<0.001``, ``= 0.215``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .metrics import labelled, mean_probability, per_fold_auroc


# ---- paired tests ---------------------------------------------------------------------------------
def corrected_resampled_ttest(diffs, n_train: int, n_test: int) -> dict:
    """Nadeau & Bengio's corrected resampled t-test of per-fold score differences.

    ``diffs``: one difference (model A − model B) per (repeat, fold), J values in all. The variance
    of the mean is ``(1/J + n_test/n_train) * s²`` instead of ``s²/J``; t has J − 1 degrees of freedom.
    ``ci_low``, ``ci_high``: the 95 % interval of the mean difference on that t distribution.
    """
    d = np.asarray(diffs, float)
    J = len(d)
    if J < 2:
        raise ValueError("need at least two folds for a t-test")
    var = d.var(ddof=1)
    mean = d.mean()
    if var == 0:
        return {"mean_difference": mean, "t": np.inf if mean else 0.0, "df": J - 1, "p": 0.0 if mean else 1.0,
                "ci_low": mean, "ci_high": mean}
    se = np.sqrt((1 / J + n_test / n_train) * var)
    half = stats.t.ppf(0.975, J - 1) * se
    return {"mean_difference": mean, "t": float(mean / se), "df": J - 1,
            "p": float(2 * stats.t.sf(abs(mean / se), J - 1)),
            "ci_low": float(mean - half), "ci_high": float(mean + half)}


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
    """Paired comparison of two models evaluated on the same splits (see module docstring), on the labelled
    patients both predicted (a model of one image scores only the patients with that image)."""
    both = set(labelled(pred_a)["patient"]) & set(labelled(pred_b)["patient"])
    pred_a, pred_b = pred_a[pred_a["patient"].isin(both)], pred_b[pred_b["patient"].isin(both)]
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
            "df": nb["df"], "ci_low": float(nb["ci_low"]), "ci_high": float(nb["ci_high"]),
            "p_delong": dl["p"], "delong_difference": dl["difference"]}


def holm(p_values: pd.Series) -> pd.Series:
    """Holm-adjusted p-values (statsmodels ``multipletests``) of the non-missing entries; NaN elsewhere.

    Holm's step-down method controls the family-wise error rate over all the tests of the family,
    without assuming that the tests are independent.
    """
    from statsmodels.stats.multitest import multipletests

    out = pd.Series(np.nan, index=p_values.index)
    ok = p_values.notna()
    if ok.any():
        out[ok] = multipletests(p_values[ok].to_numpy(float), method="holm")[1]
    return out


def p_phrase(p) -> str:
    """A p-value as prose puts it after "p": ``"<0.001"`` or ``"= 0.215"`` (``p`` a number or :func:`format_p`'s text)."""
    text = p if isinstance(p, str) else format_p(p)
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
                     "p, corrected resampled t-test (quoted)": format_p(c["p_corrected_t"]),
                     "p, DeLong": format_p(c["p_delong"])})
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


def format_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
