"""Tabular models (laboratory values, PET features) on the run's shared splits.

Every model is a scikit-learn ``Pipeline``, so that imputation (and anything else that learns from
data) is fitted on the training part of each fold only. :class:`TableModel` puts a pipeline behind
the model interface of :mod:`prrt.models`, whose loop fits one per repeat and fold of ``splits.csv``
(permutation importance is computed on the held-out fold).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline



class PriorCorrected(ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """A classifier trained with balanced class weights whose probabilities are prior-corrected.

    ``fit`` records the share of positives in the training data; ``predict_proba`` applies
    :func:`prrt.evaluate.prior_correction` with it, so the probabilities are risks at the training
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
        from .evaluate import prior_correction

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
    """A scikit-learn pipeline on some columns of the table: the tabular side of :mod:`prrt.models`.

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
               oracle: str | None = None, permutation_repeats: int = 0):
    """A :class:`prrt.models.ModelSpec` of a scikit-learn model: ``make(seed)`` returns the unfitted estimator.

    ``columns=None`` means the manifest lacks the inputs (the spec is skipped with ``reason``).
    """
    from .models import ModelSpec

    build = (lambda seed: TableModel(make(seed), columns)) if columns else None
    return ModelSpec(name, chapter, inputs, build, reason=reason, oracle=oracle,
                     permutation_repeats=permutation_repeats, columns=columns)


def importance_summary(imp: pd.DataFrame) -> pd.DataFrame:
    """Mean and SD of an importance across repeats and folds, most important first."""
    g = imp.groupby("feature")["importance"]
    return pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1)}).sort_values("mean", ascending=False)


# ---- the models of the laboratory / PET-features chapter ------------------------------------------
def feature_table(cohort, pet: pd.DataFrame | None = None) -> pd.DataFrame:
    """Model inputs for every patient: laboratory values, numeric clinical variables, PET features."""
    numeric_clinical = [c for c in cohort.clinical if c not in cohort.categorical]
    X = cohort.data[cohort.labs + numeric_clinical].astype(float)
    if pet is not None:
        from .pet_features import FEATURES

        X = X.join(pet[FEATURES].astype(float), how="left")
    return X


def lab_chapter_specs(cohort, pet: pd.DataFrame | None, profile, chapter: str = "02") -> list:
    """The models of chapter 02 (:class:`prrt.models.ModelSpec`), each with the reason it is skipped
    when its inputs are missing. Permutation importance is computed for two of them (it is costly)."""
    from .pet_features import FEATURES

    labs = list(cohort.labs)
    has_cycles = "prrt_cycles" in cohort.clinical and "prrt_cycles" not in cohort.categorical
    no_labs = "the manifest lists no laboratory values"
    no_pet = "the manifest names no PET images"
    rf = lambda seed: make_model("rf", seed, profile)  # noqa: E731
    logreg = lambda seed: make_model("logreg", seed, profile)  # noqa: E731
    perm = profile.permutation_repeats
    return [
        table_spec("lab_rf", chapter, "laboratory values", labs or None, rf, no_labs, oracle="lab",
                   permutation_repeats=perm),
        table_spec("lab_rf_with_cycles", chapter, "laboratory values + PRRT cycles (sensitivity analysis)",
                   labs + ["prrt_cycles"] if labs and has_cycles else None, rf,
                   no_labs if not labs else "the manifest has no numeric clinical column 'prrt_cycles'"),
        table_spec("lab_logreg", chapter, "laboratory values, logistic regression", labs or None, logreg, no_labs,
                   oracle="lab"),
        table_spec("pet_features_rf", chapter, "SR-PET quantitative features", FEATURES if pet is not None else None,
                   rf, no_pet, oracle="pet"),
        table_spec("pet_features_logreg", chapter, "SR-PET quantitative features, logistic regression",
                   FEATURES if pet is not None else None, logreg, no_pet, oracle="pet"),
        table_spec("lab_pet_features_rf", chapter, "laboratory values + SR-PET features",
                   labs + FEATURES if (labs and pet is not None) else None, rf, no_labs if not labs else no_pet,
                   oracle="all", permutation_repeats=perm),
    ]


#: Models for the survival view of chapter 02, in order of preference: baseline predictors only.
RISK_GROUP_MODELS = ("lab_pet_features_rf", "lab_rf", "pet_features_rf")


def risk_group_model(results: dict) -> str | None:
    """The model whose risk groups chapter 02 shows: the first of :data:`RISK_GROUP_MODELS` that ran.

    Chosen by name, never a sensitivity analysis (the number of PRRT cycles is a consequence of
    early progression and would leak the outcome into the risk groups); ``None`` if none ran.
    """
    return next((name for name in RISK_GROUP_MODELS if name in results), None)


def odds_ratio_table(data: pd.DataFrame, features: list[str], label: str = "label") -> pd.DataFrame:
    """Univariable logistic regressions (statsmodels ``Logit``) on all labelled patients: descriptive.

    One model per feature, on the patients with a value. A feature whose values are all positive and
    right-skewed (sample skewness above 1) enters as log2, and its odds ratio is per doubling;
    any other per standard deviation. Returns odds ratio, 95 % CI (Wald), p-value and patients, one
    row per feature. These are associations in the whole cohort, not a validated model: nothing is
    held out.
    """
    import statsmodels.api as sm
    from scipy.stats import skew

    rows = []
    d = data[data[label].notna()]
    for feat in features:
        x = d[feat].astype(float)
        ok = x.notna()
        x, y = x[ok], d.loc[ok, label].astype(int)
        if len(x) < 10 or y.nunique() < 2 or x.nunique() < 2:
            rows.append({"feature": feat, "scale": "–", "odds_ratio": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                         "p": np.nan, "n": int(len(x))})
            continue
        if (x > 0).all() and skew(x) > 1:
            z, scale = np.log2(x), "per doubling"
        else:
            z, scale = (x - x.mean()) / x.std(ddof=1), "per SD"
        fit = sm.Logit(y.to_numpy(), sm.add_constant(z.to_numpy())).fit(disp=0)
        lo, hi = fit.conf_int()[1]
        rows.append({"feature": feat, "scale": scale, "odds_ratio": float(np.exp(fit.params[1])),
                     "ci_low": float(np.exp(lo)), "ci_high": float(np.exp(hi)), "p": float(fit.pvalues[1]),
                     "n": int(len(x))})
    return pd.DataFrame(rows).set_index("feature")


def format_odds_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """The odds-ratio table as the book shows it."""
    from .cohort import format_p

    def ci(r):
        return "–" if pd.isna(r["odds_ratio"]) else f"{r['odds_ratio']:.2f} ({r['ci_low']:.2f}–{r['ci_high']:.2f})"

    out = pd.DataFrame({"odds ratio (95 % CI)": [ci(r) for _, r in table.iterrows()], "scale": table["scale"],
                        "p": [("–" if pd.isna(p) else format_p(p)) for p in table["p"]]}, index=table.index)
    if "p (Holm)" in table:
        out["p (Holm)"] = [("–" if pd.isna(p) else format_p(p)) for p in table["p (Holm)"]]
    out["patients"] = table["n"]
    return out
