"""The importance of the table's columns inside a model that has no importance of its own (the fusion).

:func:`permutation_importance`: the drop in AUROC on each held-out fold when one table column is
shuffled among that fold's test patients (the mean over ``repeats`` shuffles), for the fold models of a
run: the same definition as the Random Forest's permutation importance (scikit-learn's).
:func:`importance_comparison` puts the fusion's importance of the laboratory values beside the Random
Forest's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..evaluation import fold_tests
from ..learn import fold_seed, importance_summary
from ..timing import phase


def permutation_importance(models: dict, data, splits: pd.DataFrame, columns: list[str], repeats: int,
                           seed: int) -> pd.DataFrame:
    """Drop in AUROC on each held-out fold when one table column is shuffled among that fold's test
    patients (``repeats`` shuffles, mean kept), for fold models ``{(repeat, fold): model}``: the same
    definition as the Random Forest's importance of chapter 02 (scikit-learn's)."""
    with phase("importance"):
        return _importance(models, data, fold_tests(splits), columns, repeats, seed)


def _importance(models: dict, data, tests: dict, columns: list[str], repeats: int, seed: int) -> pd.DataFrame:
    from dataclasses import replace

    from sklearn.metrics import roc_auc_score

    rows = []
    for (r, f), model in models.items():
        test = tests[(r, f)]
        y = data.y.loc[test].astype(int).to_numpy()
        base = roc_auc_score(y, model.predict(data, test))
        rng = np.random.default_rng(fold_seed(seed, r, f))
        for col in columns:
            drops = []
            for _ in range(repeats):
                table = data.table.copy()
                table.loc[test, col] = rng.permutation(table.loc[test, col].to_numpy())
                drops.append(base - roc_auc_score(y, model.predict(replace(data, table=table), test)))
            rows.append({"repeat": r, "fold": f, "feature": col, "importance": float(np.mean(drops))})
    return pd.DataFrame(rows, columns=["repeat", "fold", "feature", "importance"])


def leaders(mean: pd.Series, low: pd.Series, high: pd.Series) -> list[str]:
    """The entries that the intervals set apart at the top: the smallest group of the highest means whose every lower
    bound lies above every upper bound of the rest (empty when no such group leaves anything out, or without
    intervals). Within the group nothing is ordered."""
    order = mean.sort_values(ascending=False).index
    if low.isna().any() or high.isna().any():
        return []
    for k in range(1, len(order)):
        top, rest = order[:k], order[k:]
        if low[top].min() > high[rest].max():
            return list(top)
    return []


def importance_comparison(fusion: pd.DataFrame, forest: pd.DataFrame | None) -> pd.DataFrame:
    """The laboratory values' importance in the fusion beside the Random Forest's (mean ± SD over
    repeats and folds, the 95 % interval across repeats of :func:`prrt.learn.importance_summary`, and the rank of the
    means in each), ordered by the fusion's importance."""
    out = importance_summary(fusion).rename(columns={"mean": "fusion: mean drop in AUROC", "sd": "fusion: SD",
                                                     "ci_low": "fusion: CI low", "ci_high": "fusion: CI high"})
    out["fusion: rank"] = np.arange(1, len(out) + 1)
    if forest is not None and not forest.empty:
        rf = importance_summary(forest[forest["feature"].isin(out.index)])
        out["Random Forest: mean drop in AUROC"] = rf["mean"]
        out["Random Forest: SD"] = rf["sd"]
        out["Random Forest: CI low"], out["Random Forest: CI high"] = rf["ci_low"], rf["ci_high"]
        out["Random Forest: rank"] = rf["mean"].rank(ascending=False, method="min").reindex(out.index)
    out.index.name = "laboratory value"
    return out
