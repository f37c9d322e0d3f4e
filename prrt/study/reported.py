"""What the study reported, and the tables that set a chapter's numbers (from ``results/summary.csv``) beside it.

``summary.csv`` has one row per model, written by the chapter that trains it; a model that could not run
(its inputs are not in the manifest) has ``status = skipped: <reason>`` and no numbers, and no row here.
"""

from __future__ import annotations

import pandas as pd

from ..evaluation import binormal_auprc, mean_sd
from .notebook import synthetic_report

#: The study's cohort: labelled patients and those with short PFS.
STUDY_COHORT = {"patients": 116, "short_pfs": 42}

#: What the study reported (mean ± SD over repeated 3-fold cross-validation), for comparison tables.
#: The study does not say which class its AUPRC takes as positive; under the binormal model its fusion's
#: AUROC goes with its AUPRC only with long PFS as the positive class (:func:`auprc_reading`), so our
#: tables compare it with ``auprc_long``.
STUDY_REPORTED = pd.DataFrame([
    ("Random Forest, laboratory biomarkers", "0.59 ± 0.02", "–"),
    ("3D CNN, SR-PET", "0.42 ± 0.03", "–"),
    ("3D CNN, CT", "0.54 ± 0.01", "–"),
    ("fusion of laboratory + SR-PET + CT, CT branch pretrained", "0.72 ± 0.01", "0.80 ± 0.01"),
], columns=["study model", "AUROC", "AUPRC (long PFS positive, our reading)"])


def study_numbers() -> dict[str, str]:
    """The study's reported figures (:data:`STUDY_REPORTED`, mean ± SD) that the chapters' prose quotes, as text to
    glue, so that no number of the study is typed into a page: its laboratory Random Forest's AUROC, its fusion's
    AUROC and AUPRC, and the reading of that AUPRC (:func:`auprc_reading`)."""
    t = STUDY_REPORTED.set_index("study model")
    fusion = t.iloc[-1]
    return {"study_lab_rf": t.loc["Random Forest, laboratory biomarkers", "AUROC"],
            "study_fusion_auroc_sd": fusion["AUROC"], "study_fusion_auprc_sd": fusion[t.columns[1]], **auprc_reading()}


def auprc_reading() -> dict[str, str]:
    """Which class the study's AUPRC takes as positive: its fusion's AUROC and AUPRC, the shares of short and
    long PFS in its cohort (where an AUPRC starts), and the AUPRC that the binormal model gives at that AUROC
    with either class positive (:func:`prrt.evaluation.binormal_auprc`), as text to glue."""
    fusion = STUDY_REPORTED.iloc[-1]
    auroc, auprc = (float(str(fusion[c]).split("±")[0]) for c in ("AUROC", STUDY_REPORTED.columns[2]))
    short = STUDY_COHORT["short_pfs"] / STUDY_COHORT["patients"]
    return {"study_fusion_auroc": f"{auroc:.2f}", "study_fusion_auprc": f"{auprc:.2f}",
            "study_short_share": f"{short:.2f}", "study_long_share": f"{1 - short:.2f}",
            "binormal_auprc_short": f"{binormal_auprc(auroc, short):.2f}",
            "binormal_auprc_long": f"{binormal_auprc(auroc, 1 - short):.2f}"}


def comparison_with_study(summary: pd.DataFrame, synthetic: bool, bound: dict | None = None,
                          bound_keys: dict | None = None) -> pd.DataFrame:
    """Our models' AUROC / AUPRC (mean ± SD) with, for a synthetic cohort, the achievable AUROC of their inputs beside them."""
    ran = summary[summary["status"] == "ran"]
    out = pd.DataFrame({
        "model": ran["model"],
        "inputs": ran["inputs"],
        "AUROC": [f"{m:.2f} ± {s:.2f}" for m, s in zip(ran["auroc_mean"], ran["auroc_sd"])],
        "AUPRC, short PFS positive": [mean_sd(m, s) for m, s in zip(ran["auprc_mean"], ran["auprc_sd"])],
        "AUPRC, long PFS positive (as the study's)": [mean_sd(m, s) for m, s in
                                                      zip(ran["auprc_long_mean"], ran["auprc_long_sd"])],
    })
    if bound and bound_keys:
        out["achievable AUROC"] = [f"{bound[bound_keys[m]]:.2f}" if bound_keys.get(m) else "–" for m in ran["model"]]
    out["comparable with the study"] = "not comparable: synthetic data" if synthetic else "same protocol, another cohort"
    return out.set_index("model")


def comparison_tables(cohort, summary: pd.DataFrame, bound_keys: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a chapter shows beside the study: its ``summary`` rows as :func:`comparison_with_study` (with the
    achievable AUROC of a synthetic cohort, ``bound_keys``: model -> input set of the generator's report) and the study's
    own numbers (:data:`STUDY_REPORTED`, one row per study model)."""
    report = synthetic_report(cohort)
    ours = comparison_with_study(summary, cohort.synthetic, report["achievable_auroc"] if report else None, bound_keys)
    return ours, STUDY_REPORTED.set_index("study model")
