"""The run's result files: ``predictions/<model>.csv`` and ``results/summary.csv``.

:func:`write_predictions` and :func:`read_predictions` write and read one model's out-of-fold predictions
(the columns of :data:`prrt.evaluation.metrics.PRED_COLUMNS`).

``summary.csv`` (:data:`SUMMARY_COLUMNS`) has one row per model, written by the chapter that trains it
(:func:`update_summary`); a chapter that runs again replaces its own rows. A model that could not run (its
inputs are not in the manifest) has ``status = skipped: <reason>`` and no numbers (:func:`skipped`).
:func:`format_summary` shows the table as the book does: mean ± SD [95 % CI].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import PRED_COLUMNS

SUMMARY_COLUMNS = ["model", "chapter", "inputs", "status", "auroc_mean", "auroc_sd", "auroc_ci_low", "auroc_ci_high",
                   "auprc_mean", "auprc_sd", "auprc_ci_low", "auprc_ci_high", "auprc_long_mean", "auprc_long_sd",
                   "brier_mean", "brier_sd", "calibration_slope", "calibration_in_the_large", "c_index",
                   "n_patients", "n_patients_survival", "n_repeats"]


def num(value, digits: int) -> str:
    """A number as the book's tables show it: ``digits`` decimals, "–" for none."""
    return "–" if pd.isna(value) else f"{value:.{digits}f}"


def mean_sd(mean, sd) -> str:
    return "–" if pd.isna(mean) else f"{mean:.2f} ± {sd:.2f}"


def write_predictions(run_dir, name: str, pred: pd.DataFrame) -> Path:
    path = Path(run_dir) / "predictions" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pred[PRED_COLUMNS].to_csv(path, index=False)
    return path


def read_predictions(run_dir, name: str) -> pd.DataFrame:
    path = Path(run_dir) / "predictions" / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no predictions for model {name!r} in this run ({path})")
    return pd.read_csv(path, dtype={"patient": str})


def update_summary(run_dir, rows: list[dict]) -> pd.DataFrame:
    """Add or replace the rows of these models in ``results/summary.csv``; returns the whole table."""
    path = Path(run_dir) / "results" / "summary.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
    if path.is_file():
        # the chapter reads back as text ("02", not 2), like the rows that chapters add
        old = pd.read_csv(path, dtype={c: str for c in ("model", "chapter", "inputs", "status")})
        old = old[~old["model"].isin(new["model"])]
        new = pd.concat([old, new], ignore_index=True) if len(old) else new
    new.to_csv(path, index=False)
    return new


def skipped(model: str, chapter: str, inputs: str, reason: str) -> dict:
    return {"model": model, "chapter": chapter, "inputs": inputs, "status": f"skipped: {reason}"}


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as the book shows it: mean ± SD [95 % CI], the mean Brier score and calibration slope (a
    summary written before the slope was recorded shows "–" for it)."""
    def column(name):
        return summary[name] if name in summary else pd.Series(np.nan, index=summary.index)

    def fmt(row, m):
        if pd.isna(row.get(f"{m}_mean")):
            return "–"
        return (f"{row[f'{m}_mean']:.2f} ± {row[f'{m}_sd']:.2f} "
                f"[{row[f'{m}_ci_low']:.2f}–{row[f'{m}_ci_high']:.2f}]")

    out = pd.DataFrame({
        "model": summary["model"],
        "inputs": summary["inputs"],
        "status": summary["status"],
        "AUROC mean ± SD [95 % CI]": [fmt(r, "auroc") for _, r in summary.iterrows()],
        "AUPRC, short PFS positive: mean ± SD [95 % CI]": [fmt(r, "auprc") for _, r in summary.iterrows()],
        "AUPRC, long PFS positive": [mean_sd(m, s) for m, s in zip(summary["auprc_long_mean"],
                                                                    summary["auprc_long_sd"])],
        "Brier": [num(b, 3) for b in column("brier_mean")],
        "calibration slope": [num(b, 2) for b in column("calibration_slope")],
        "C-index": [num(c, 2) for c in summary["c_index"]],
    })
    return out.set_index("model")
