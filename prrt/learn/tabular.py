"""Tabular models (laboratory values, numeric clinical variables, PET features) on the run's shared splits.

Every model is a scikit-learn ``Pipeline``, so that imputation (and anything else that learns from
data) is fitted on the training part of each fold only: :func:`random_forest` (median imputation, a
class-balanced Random Forest whose probabilities are prior-corrected, :class:`PriorCorrected`) and
:func:`logistic_regression` (median imputation, Yeo-Johnson transformation and standardisation, an
L2-penalised logistic regression whose penalty an inner 3-fold cross-validation picks); :func:`make_model`
makes either by name. :class:`TableModel` puts a pipeline behind the model interface
(:class:`prrt.learn.base.Model`), and :func:`table_spec` makes its spec; the loop (:mod:`prrt.learn.loop`)
fits one per repeat and fold of ``splits.csv`` (permutation importance is computed on the held-out fold).
:func:`feature_table` gathers the inputs of every patient.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline

from ..evaluation import prior_correction
from ..imaging import FEATURES
from .base import ModelSpec


class PriorCorrected(ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """A classifier trained with balanced class weights whose probabilities are prior-corrected.

    ``fit`` records the share of positives in the training data; ``predict_proba`` applies
    :func:`prrt.evaluation.prior_correction` with it, so the probabilities are risks at the training
    prevalence rather than at the 50 % that the class weights pretend. Nothing from outside the
    training part is used.
    """

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y):
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.classes_ = self.estimator_.classes_
        self.prevalence_ = float(np.mean(np.asarray(y) == self.classes_[1]))
        return self

    def predict_proba(self, X):
        q = prior_correction(self.estimator_.predict_proba(X)[:, 1], self.prevalence_)
        return np.column_stack([1 - q, q])

    def predict(self, X):
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]

    @property
    def feature_importances_(self):
        return self.estimator_.feature_importances_


def random_forest(seed: int, n_trees: int = 500) -> Pipeline:
    """Median imputation + Random Forest with class weights that balance the two outcome groups,
    its probabilities prior-corrected to the training prevalence (:class:`PriorCorrected`).

    ``min_samples_leaf=3`` keeps the leaves from memorising single patients of a ~77-patient
    training fold; ``max_features="sqrt"`` is scikit-learn's default for classification.
    """
    return Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("forest", PriorCorrected(RandomForestClassifier(n_estimators=n_trees, class_weight="balanced",
                                                         min_samples_leaf=3, max_features="sqrt", random_state=seed,
                                                         n_jobs=-1))),
    ])


def logistic_regression(seed: int) -> Pipeline:
    """Median imputation + Yeo-Johnson transformation and standardisation + L2-penalised logistic regression.

    Every step is fitted on the training part of a fold only: the imputer's medians, the
    transformation that makes skewed laboratory values (chromogranin A, gamma-GT, …) roughly
    normal (scikit-learn's ``PowerTransformer``, which estimates one exponent per feature from the
    training data, instead of a log chosen by hand), and the penalty strength, picked from ten
    values by an inner stratified 3-fold cross-validation of the training part (log-loss). No class
    weights: the predicted probabilities keep the training prevalence.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import PowerTransformer

    return Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("transform", PowerTransformer(method="yeo-johnson", standardize=True)),
        ("logistic", LogisticRegressionCV(Cs=10, cv=StratifiedKFold(3, shuffle=True, random_state=seed % 2**32),
                                          scoring="neg_log_loss", max_iter=5000, l1_ratios=(0.0,),
                                          use_legacy_attributes=False)),
    ])


MODEL_KINDS = {"rf": "Random Forest", "logreg": "logistic regression"}


def one_blas_thread() -> None:
    """Let numpy and scipy's BLAS (OpenBLAS) use one thread in this process from now on.

    The matrices of this project's scikit-learn and statsmodels work are a few hundred patients by a few dozen
    columns: a second BLAS thread only adds waiting. With two, a logistic regression of :func:`logistic_regression`
    took 1.6 to 7 times as long on the 2-core machine, beside other work (``benchmarks/DESIGN.md``;
    ``benchmarks/training_cost.py`` repeats it). torch keeps its own threads
    (:func:`prrt.learn.training.threads_for`). Every chapter calls this first (:func:`prrt.study.notebook.start`);
    the Dask workers start with one BLAS thread anyway.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def make_model(kind: str, seed: int, profile) -> Pipeline:
    """A fresh pipeline of ``kind`` (``rf`` or ``logreg``)."""
    if kind == "rf":
        return random_forest(seed, profile.rf_trees)
    if kind == "logreg":
        return logistic_regression(seed)
    raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")


def _single_threaded_prediction(model) -> None:
    """Fit in parallel, predict in one thread: for ~40 patients a thread pool costs more than it saves."""
    est = model[-1] if isinstance(model, Pipeline) else model
    est = getattr(est, "estimator_", est)
    if "n_jobs" in est.get_params():
        est.set_params(n_jobs=1)


class TableModel:
    """A scikit-learn pipeline on some columns of the table: the tabular side of :mod:`prrt.learn.base`.

    It fits on the whole training part of a fold (imputation and everything else that learns is
    inside the pipeline, so it sees training patients only) and needs no inner validation part.
    """

    def __init__(self, estimator, columns: list[str]):
        self.estimator, self.columns = estimator, list(columns)

    def _x(self, data, patients):
        return data.table.loc[patients, self.columns]

    def fit(self, data, part, seed: int, progress: bool = True, desc: str = ""):
        train = part.all
        self.estimator_ = clone(self.estimator).fit(self._x(data, train), data.y.loc[train].astype(int))
        _single_threaded_prediction(self.estimator_)
        return None

    def predict(self, data, patients: list[str]) -> np.ndarray:
        return self.estimator_.predict_proba(self._x(data, patients))[:, 1]

    def restore(self, data, part, checkpoint: dict):
        raise NotImplementedError("a scikit-learn model leaves no checkpoint (its fit is quick and deterministic): "
                                  "fit it again on the same training part instead of restoring it")

    def features(self, data, patients: list[str]) -> dict[str, np.ndarray]:
        """The inputs as the last step sees them (imputed, transformed with the training part's statistics)."""
        x = self._x(data, patients)
        steps = self.estimator_[:-1] if isinstance(self.estimator_, Pipeline) else None
        return {"table": np.asarray(steps.transform(x) if steps is not None and len(steps) else x, float)}

    def permutation_importance(self, data, patients: list[str], repeats: int, seed: int) -> pd.DataFrame:
        """Drop in AUROC on ``patients`` (a held-out fold) when one column is shuffled (scikit-learn)."""
        pi = permutation_importance(self.estimator_, self._x(data, patients), data.y.loc[patients].astype(int),
                                    scoring="roc_auc", n_repeats=repeats, random_state=seed)
        return pd.DataFrame({"feature": self.columns, "importance": pi.importances_mean})

    def impurity_importance(self) -> pd.DataFrame:
        est = self.estimator_[-1] if isinstance(self.estimator_, Pipeline) else self.estimator_
        if not hasattr(est, "feature_importances_"):
            return pd.DataFrame(columns=["feature", "importance"])
        return pd.DataFrame({"feature": self.columns, "importance": est.feature_importances_})


def table_spec(name: str, chapter: str, inputs: str, columns: list[str] | None, make, reason: str = "",
               bound: str | None = None, permutation_repeats: int = 0):
    """A :class:`prrt.learn.ModelSpec` of a scikit-learn model: ``make(seed)`` returns the unfitted estimator.

    ``columns=None`` means the manifest lacks the inputs (the spec is skipped with ``reason``).
    """
    build = (lambda seed: TableModel(make(seed), columns)) if columns else None
    return ModelSpec(name, chapter, inputs, build, reason=reason, bound=bound,
                     permutation_repeats=permutation_repeats, columns=columns, one_core=True)


def importance_summary(imp: pd.DataFrame) -> pd.DataFrame:
    """Mean and SD of an importance across repeats and folds, most important first, with a 95 % interval of the mean
    across repeats (``ci_low``, ``ci_high``: a t interval of the repeats' means over their folds; NaN with fewer than
    two repeats). The repeats share patients, so the interval is narrower than a fresh cohort's would be: read two
    values as ordered only where their intervals do not overlap."""
    from scipy import stats

    g = imp.groupby("feature")["importance"]
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "ci_low": np.nan, "ci_high": np.nan})
    if "repeat" in imp and imp["repeat"].nunique() > 1:
        per = imp.groupby(["feature", "repeat"])["importance"].mean().groupby("feature")
        n, centre, spread = per.size(), per.mean(), per.std(ddof=1)
        half = stats.t.ppf(0.975, n - 1) * spread / np.sqrt(n)
        out["ci_low"], out["ci_high"] = centre - half, centre + half
    return out.sort_values("mean", ascending=False)


# ---- the models of the laboratory / PET-features chapter ------------------------------------------
def feature_table(cohort, pet: pd.DataFrame | None = None) -> pd.DataFrame:
    """Model inputs for every patient: laboratory values, numeric clinical variables, PET features."""
    numeric_clinical = [c for c in cohort.clinical if c not in cohort.categorical]
    X = cohort.data[cohort.labs + numeric_clinical].astype(float)
    if pet is not None:
        X = X.join(pet[FEATURES].astype(float), how="left")
    return X
