"""The run's result files: ``predictions/<model>.csv`` and ``results/summary.csv``.

``summary.csv`` has one row per model, written by the chapter that trains it; a chapter that runs
again replaces its own rows. A model that could not run (its inputs are not in the manifest) has
``status = skipped: <reason>`` and no numbers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .evaluate import PRED_COLUMNS

SUMMARY_COLUMNS = ["model", "chapter", "inputs", "status", "auroc_mean", "auroc_sd", "auroc_ci_low", "auroc_ci_high",
                   "auprc_mean", "auprc_sd", "auprc_ci_low", "auprc_ci_high", "auprc_long_mean", "auprc_long_sd",
                   "brier_mean", "c_index",
                   "n_patients", "n_patients_survival", "n_repeats"]

#: What the study reported (mean ± SD over repeated 3-fold cross-validation), for comparison tables.
#: The study does not say which class its AUPRC takes as positive. With short PFS positive
#: (prevalence 0.36) an AUROC of 0.72 goes with an AUPRC of about 0.6; 0.80 fits long PFS as the
#: positive class (prevalence 0.64), so our tables compare it with ``auprc_long``.
STUDY_REPORTED = pd.DataFrame([
    ("Random Forest, laboratory biomarkers", "0.59 ± 0.02", "–"),
    ("3D CNN, SR-PET", "0.42 ± 0.03", "–"),
    ("3D CNN, CT", "0.54 ± 0.01", "–"),
    ("fusion of laboratory + SR-PET + CT, CT branch pretrained", "0.72 ± 0.01", "0.80 ± 0.01"),
], columns=["study model", "AUROC", "AUPRC (long PFS positive, our reading)"])


def _mean_sd(mean, sd) -> str:
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
    """The summary as the book shows it: mean ± SD [95 % CI]."""
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
        "AUPRC, long PFS positive": [_mean_sd(m, s) for m, s in zip(summary["auprc_long_mean"],
                                                                    summary["auprc_long_sd"])],
        "C-index": [("–" if pd.isna(c) else f"{c:.2f}") for c in summary["c_index"]],
    })
    return out.set_index("model")


def comparison_with_study(summary: pd.DataFrame, synthetic: bool, oracle: dict | None = None,
                          oracle_keys: dict | None = None) -> pd.DataFrame:
    """Our models' AUROC / AUPRC (mean ± SD) with, for a synthetic cohort, the oracle AUROC beside them."""
    ran = summary[summary["status"] == "ran"]
    out = pd.DataFrame({
        "model": ran["model"],
        "inputs": ran["inputs"],
        "AUROC": [f"{m:.2f} ± {s:.2f}" for m, s in zip(ran["auroc_mean"], ran["auroc_sd"])],
        "AUPRC, short PFS positive": [_mean_sd(m, s) for m, s in zip(ran["auprc_mean"], ran["auprc_sd"])],
        "AUPRC, long PFS positive (as the study's)": [_mean_sd(m, s) for m, s in
                                                      zip(ran["auprc_long_mean"], ran["auprc_long_sd"])],
    })
    if oracle and oracle_keys:
        out["oracle AUROC"] = [f"{oracle[oracle_keys[m]]:.2f}" if oracle_keys.get(m) else "–" for m in ran["model"]]
    out["comparable with the study"] = "not comparable: synthetic data" if synthetic else "same protocol, another cohort"
    return out.set_index("model")
