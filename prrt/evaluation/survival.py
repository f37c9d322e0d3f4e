"""Survival views of PFS (lifelines): Kaplan–Meier summaries, and log-rank tests of groups of a risk score.

* :func:`km_summary`: the median PFS and the PFS rate at the horizon, each with its 95 % CI;
* :func:`risk_groups_logrank`: patients split at a threshold of the risk (default: its median), the two
  groups' PFS compared with the log-rank test;
* :func:`risk_tertiles`: patients in thirds of the risk (``low``, ``middle``, ``high``), compared with the
  log-rank test over the three groups.

A model's risk score is each patient's mean out-of-fold probability across repeats
(:func:`prrt.evaluation.metrics.mean_probability`), which the patients censored before the horizon have too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


# ---- survival, calibration, decision curves --------------------------------------------------------
def risk_groups_logrank(time, event, risk, threshold=None) -> dict:
    """Split patients at ``threshold`` (default: the median risk) and compare PFS with the log-rank test."""
    from lifelines.statistics import logrank_test

    time, event, risk = (np.asarray(v, float) for v in (time, event, risk))
    thr = float(np.median(risk)) if threshold is None else float(threshold)
    high = risk > thr
    res = logrank_test(time[high], time[~high], event[high], event[~high])
    return {"threshold": thr, "high": high, "p": float(res.p_value), "statistic": float(res.test_statistic)}


def km_summary(time, event, horizon_months: float) -> dict:
    """Kaplan–Meier estimate (lifelines): median PFS and PFS rate at the horizon, with 95 % CIs."""
    from lifelines import KaplanMeierFitter
    from lifelines.utils import median_survival_times

    km = KaplanMeierFitter().fit(np.asarray(time, float), np.asarray(event, int))
    ci = km.confidence_interval_survival_function_
    rate = float(km.survival_function_at_times(horizon_months).iloc[0])
    idx = ci.index[ci.index <= horizon_months].max()
    med_ci = median_survival_times(km.confidence_interval_)
    return {
        "median_pfs_months": float(km.median_survival_time_),
        "median_pfs_ci": (float(med_ci.iloc[0, 0]), float(med_ci.iloc[0, 1])),
        "pfs_rate_at_horizon": rate,
        "pfs_rate_ci": (float(ci.loc[idx].iloc[0]), float(ci.loc[idx].iloc[1])),
    }


# ---- risk groups ------------------------------------------------------------------------------------
def risk_tertiles(time, event, risk) -> dict:
    """Patients in thirds of the predicted risk (``low``, ``middle``, ``high``), compared with the
    log-rank test over the three groups (lifelines)."""
    from lifelines.statistics import multivariate_logrank_test

    risk = pd.Series(np.asarray(risk, float))
    group = pd.qcut(risk.rank(method="first"), 3, labels=["low", "middle", "high"]).astype(str).to_numpy()
    res = multivariate_logrank_test(np.asarray(time, float), group, np.asarray(event, int))
    return {"group": group, "p": float(res.p_value), "statistic": float(res.test_statistic)}
