"""Modality ablation: the fusion's fold models with every modality, and with each source masked.

:func:`modality_ablation` predicts every test fold with the fusion's fold models as they are, and with
each source (laboratory values, SR-PET with its lesion features, CT; :data:`prrt.learn.SOURCE`) masked
at inference as if the patients lacked it (the missing-modality path; nothing is refitted).
:func:`ablation_table` gives each setting's AUROC (mean ± SD over repeats, percentile-bootstrap 95 % CI)
and its difference from the fusion with every modality, with the splits also the interval and the p-value of that
difference (corrected resampled t-test, :func:`prrt.evaluation.compare_models`), Holm-adjusted over the settings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..evaluation import (
    Fold,
    bootstrap_ci,
    compare_models,
    fold_test_rows,
    fold_tests,
    holm,
    per_repeat_metrics,
)
from ..learn import SOURCE
from ..timing import phase


def modality_ablation(models: dict, data, splits: pd.DataFrame, source_names: dict[str, str]) -> dict[str, pd.DataFrame]:
    """Out-of-fold predictions of the fusion fold models with every modality, and with each source
    (laboratory values, SR-PET with its lesion features, CT) masked at inference as if the patients
    lacked it: ``{setting: predictions}`` in the format of :mod:`prrt.evaluation`. ``source_names``: how
    a setting names each source it hides (``{"labs": "laboratory values", ...}``: ``"without laboratory
    values"``), in the order of the settings."""
    tests = fold_tests(splits)
    first = next(iter(models.values()))
    settings = {"all modalities": ()}
    for source, name in source_names.items():
        branches = tuple(m for m in first.modalities if SOURCE[m] == source)
        if branches:
            settings[f"without {name}"] = branches
    out = {}
    for setting, without in settings.items():
        parts = []
        for (r, f), model in models.items():
            test = tests[(r, f)]
            with phase("prediction"):
                p = model.predict(data, test, without=without)
            parts.append(fold_test_rows(Fold(r, f, [], test), p, data.y))
        out[setting] = pd.concat(parts, ignore_index=True)
    return out


def ablation_table(predictions: dict[str, pd.DataFrame], n_boot: int = 1000, seed: int = 0,
                   splits: pd.DataFrame | None = None) -> pd.DataFrame:
    """AUROC (mean ± SD over repeats, percentile-bootstrap 95 % CI) of each ablation setting, and its
    difference from the fusion with every modality (with ``splits`` the mean of the per-fold differences, the centre of
    its interval; without, the difference of the mean AUROCs); with ``splits``, the 95 % interval and the p-value of that
    difference (corrected resampled t-test over the same repeats and folds, :func:`prrt.evaluation.compare_models`),
    and the p-values Holm-adjusted over the settings (one family: ``p (Holm)``)."""
    rows = []
    full = predictions["all modalities"]
    for setting, pred in predictions.items():
        m = per_repeat_metrics(pred)
        lo, hi = bootstrap_ci(pred, n_boot, seed)["auroc_ci"]
        row = {"setting": setting, "auroc_mean": m["auroc"].mean(), "auroc_sd": m["auroc"].std(ddof=1),
               "ci_low": lo, "ci_high": hi}
        if splits is not None:
            c = compare_models(pred, full, splits) if setting != "all modalities" else {}
            row.update({"difference": c.get("auroc_difference", 0.0), "difference CI low": c.get("ci_low", np.nan),
                        "difference CI high": c.get("ci_high", np.nan),
                        "p, corrected t-test": c.get("p_corrected_t", np.nan)})
        rows.append(row)
    out = pd.DataFrame(rows).set_index("setting")
    # with the splits, the difference is the mean of the per-fold differences (the centre of its interval, as in
    # chapter 04's paired tests); without them, the difference of the mean AUROCs
    diff = out.pop("difference") if "difference" in out else out["auroc_mean"] - out.loc["all modalities", "auroc_mean"]
    out.insert(4, "difference from all modalities", diff)
    if splits is not None:
        out["p (Holm)"] = holm(out["p, corrected t-test"])
    return out
