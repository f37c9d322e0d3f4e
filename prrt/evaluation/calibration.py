"""Calibration and decision curves of predicted probabilities ``p`` (of short PFS) against outcomes ``y``
(1 = short PFS).

* :func:`calibration`: the calibration curve (scikit-learn, quantile bins): mean predicted probability
  against observed frequency in each bin;
* :func:`calibration_intercept_slope`: calibration-in-the-large and calibration slope (logistic
  recalibration, statsmodels GLM), each with its 95 % Wald CI;
* :func:`net_benefit`: the decision curve (Vickers & Elkin 2006): the net benefit of treating the patients
  with ``p`` at or above each threshold, of treating all, and of treating none.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


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
