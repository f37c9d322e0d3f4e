"""Tabular models (laboratory values, PET features) on the run's shared splits.

Every model is a scikit-learn ``Pipeline``, so that imputation (and anything else that learns from
data) is fitted on the training part of each fold only. :func:`cross_validate` fits one pipeline per
repeat and fold of ``splits.csv`` and returns out-of-fold predictions in the format of
:mod:`prrt.evaluate`, with permutation importance computed on the held-out fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline

from .evaluate import assemble_predictions, fold_test_rows
from .splits import iter_folds


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


@dataclass
class CVResult:
    """Out-of-fold predictions and importances of one model."""

    name: str
    features: list[str]
    predictions: pd.DataFrame
    permutation: pd.DataFrame  # repeat, fold, feature, importance (AUROC drop on the held-out fold)
    impurity: pd.DataFrame  # repeat, fold, feature, importance (mean decrease in impurity, training data)
    models: dict = field(default_factory=dict, repr=False)


def cross_validate(name: str, X: pd.DataFrame, y: pd.Series, splits: pd.DataFrame, make_model, seed: int,
                   permutation_repeats: int = 10, keep_models: bool = False, progress: bool = True) -> CVResult:
    """Fit ``make_model()`` on every training part of ``splits`` and predict its test part.

    Parameters
    ----------
    X:
        Features, one row per patient (index = pseudonym), for all patients: those without a label
        are predicted by every fold model (they are in no training part).
    y:
        Label per patient (1 = short PFS), NaN for unlabelled patients.
    make_model:
        Callable returning a fresh, unfitted estimator with ``predict_proba``.
    """
    from tqdm.auto import tqdm

    unlabelled = [p for p in X.index if p not in set(splits["patient"])]
    folds = list(iter_folds(splits))
    preds, perm, imp, models = [], [], [], {}
    extra = {}
    for f in tqdm(folds, desc=name, unit="fold", disable=not progress):
        model = clone(make_model())
        model.fit(X.loc[f.train], y.loc[f.train].astype(int))
        _single_threaded_prediction(model)
        preds.append(fold_test_rows(f, model.predict_proba(X.loc[f.test])[:, 1], y))
        if unlabelled:
            extra.setdefault(f.repeat, []).append(model.predict_proba(X.loc[unlabelled])[:, 1])
        if permutation_repeats:
            pi = permutation_importance(model, X.loc[f.test], y.loc[f.test].astype(int), scoring="roc_auc",
                                        n_repeats=permutation_repeats, random_state=seed + 1000 * f.repeat + f.fold)
            perm.append(pd.DataFrame({"repeat": f.repeat, "fold": f.fold, "feature": X.columns,
                                      "importance": pi.importances_mean}))
        est = model[-1] if isinstance(model, Pipeline) else model
        if hasattr(est, "feature_importances_"):
            imp.append(pd.DataFrame({"repeat": f.repeat, "fold": f.fold, "feature": X.columns,
                                     "importance": est.feature_importances_}))
        if keep_models:
            models[(f.repeat, f.fold)] = model
    return CVResult(name, list(X.columns), assemble_predictions(preds, unlabelled, extra),
                    pd.concat(perm, ignore_index=True) if perm else pd.DataFrame(),
                    pd.concat(imp, ignore_index=True) if imp else pd.DataFrame(), models)


def importance_summary(imp: pd.DataFrame) -> pd.DataFrame:
    """Mean and SD of an importance across repeats and folds, most important first."""
    g = imp.groupby("feature")["importance"]
    return pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1)}).sort_values("mean", ascending=False)


# ---- the models of the laboratory / PET-features chapter ------------------------------------------
@dataclass
class TabularSpec:
    """A tabular model: its name, what it sees, and why it is skipped when it cannot run."""

    name: str
    description: str
    features: list[str] | None
    reason: str = ""
    oracle: str | None = None  # which oracle AUROC of a synthetic cohort bounds it
    importance: bool = False  # compute permutation importance (costly: shown for some models only)
    kind: str = "rf"  # see MODEL_KINDS

    @property
    def inputs(self) -> str:
        return self.description


def feature_table(cohort, pet: pd.DataFrame | None = None) -> pd.DataFrame:
    """Model inputs for every patient: laboratory values, numeric clinical variables, PET features."""
    numeric_clinical = [c for c in cohort.clinical if c not in cohort.categorical]
    X = cohort.data[cohort.labs + numeric_clinical].astype(float)
    if pet is not None:
        from .pet_features import FEATURES

        X = X.join(pet[FEATURES].astype(float), how="left")
    return X


def lab_chapter_specs(cohort, pet: pd.DataFrame | None) -> list[TabularSpec]:
    """The models of chapter 02, each with the reason it is skipped when its inputs are missing."""
    from .pet_features import FEATURES

    labs = list(cohort.labs)
    has_cycles = "prrt_cycles" in cohort.clinical and "prrt_cycles" not in cohort.categorical
    no_labs = "the manifest lists no laboratory values"
    no_pet = "the manifest names no PET images"
    return [
        TabularSpec("lab_rf", "laboratory values", labs or None, no_labs, oracle="lab", importance=True),
        TabularSpec("lab_rf_with_cycles", "laboratory values + PRRT cycles (sensitivity analysis)",
                    labs + ["prrt_cycles"] if labs and has_cycles else None,
                    no_labs if not labs else "the manifest has no numeric clinical column 'prrt_cycles'"),
        TabularSpec("lab_logreg", "laboratory values, logistic regression", labs or None, no_labs, oracle="lab",
                    kind="logreg"),
        TabularSpec("pet_features_rf", "SR-PET quantitative features", FEATURES if pet is not None else None, no_pet,
                    oracle="pet"),
        TabularSpec("pet_features_logreg", "SR-PET quantitative features, logistic regression",
                    FEATURES if pet is not None else None, no_pet, oracle="pet", kind="logreg"),
        TabularSpec("lab_pet_features_rf", "laboratory values + SR-PET features",
                    labs + FEATURES if (labs and pet is not None) else None,
                    no_labs if not labs else no_pet, oracle="all", importance=True),
    ]


#: Models for the survival view of chapter 02, in order of preference: baseline predictors only.
RISK_GROUP_MODELS = ("lab_pet_features_rf", "lab_rf", "pet_features_rf")


def risk_group_model(results: dict) -> str | None:
    """The model whose risk groups chapter 02 shows: the first of :data:`RISK_GROUP_MODELS` that ran.

    Chosen by name, never a sensitivity analysis (the number of PRRT cycles is a consequence of
    early progression and would leak the outcome into the risk groups); ``None`` if none ran.
    """
    return next((name for name in RISK_GROUP_MODELS if name in results), None)


def run_specs(specs: list[TabularSpec], X: pd.DataFrame, cohort, splits: pd.DataFrame, profile, seed: int,
              run_dir, chapter: str, progress: bool = True):
    """Cross-validate every runnable spec, write its predictions, and return results and summary rows."""
    from .evaluate import summarise
    from .results import skipped, write_predictions

    results, rows = {}, []
    for spec in specs:
        if spec.features is None:
            rows.append(skipped(spec.name, chapter, spec.inputs, spec.reason))
            continue
        res = cross_validate(spec.name, X[spec.features], cohort.data["label"], splits,
                             lambda: make_model(spec.kind, seed, profile), seed,
                             permutation_repeats=profile.permutation_repeats if spec.importance else 0,
                             progress=progress)
        write_predictions(run_dir, spec.name, res.predictions)
        results[spec.name] = res
        rows.append({"model": spec.name, "chapter": chapter, "inputs": spec.inputs, "status": "ran",
                     **summarise(res.predictions, cohort, n_boot=profile.n_bootstrap, seed=seed)})
    return results, rows


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
