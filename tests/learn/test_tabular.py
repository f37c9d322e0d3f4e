"""Tabular models on shared splits: no leakage, skipped models, permuted labels give chance AUROC."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import edit_manifest

from prrt.data import synthetic
from prrt.data.load import load_cohort
from prrt.evaluation import metrics as ev
from prrt.evaluation import splits as sp
from prrt.evaluation import table1
from prrt.learn import base, loop, tabular
from prrt.study import ch02_labs


def cv_table(name, X, y, splits, make, seed, permutation_repeats=0, keep_models=False):
    """The shared loop of prrt.learn.loop on a scikit-learn model (``make()``: a fresh estimator)."""
    spec = tabular.table_spec(name, "02", "test table", list(X.columns), lambda _: make(),
                              permutation_repeats=permutation_repeats)
    return loop.cross_validate(spec, base.ModelData(y, table=X), splits, seed, progress=False,
                                 keep_models=keep_models)


@pytest.fixture(scope="module")
def lab_data():
    """The default synthetic 116-patient laboratory table (no images needed)."""
    table, truth = synthetic.exact_parameters(synthetic.DEFAULT_SEED)
    X = table[list(synthetic.LAB_PANEL)].set_axis([f"P{i:03d}" for i in range(1, 117)])
    y = pd.Series(truth["short_pfs"].to_numpy(), index=X.index)
    return X, y


def test_permuted_labels_give_chance_auroc(lab_data):
    X, y = lab_data
    aurocs = []
    for k in range(4):
        yp = pd.Series(np.random.default_rng(100 + k).permutation(y.to_numpy()), index=y.index)
        s = sp.make_splits(yp, 3, 3, seed=k)
        res = cv_table("perm", X, yp, s, lambda: tabular.random_forest(k, 30), k, permutation_repeats=0)
        aurocs += list(ev.per_repeat_metrics(res.predictions)["auroc"])
    assert abs(np.mean(aurocs) - 0.5) < 0.06, aurocs
    # ... while the real labels are learnt (chromogranin A and gamma-GT carry signal)
    s = sp.make_splits(y, 3, 2, seed=0)
    res = cv_table("real", X, y, s, lambda: tabular.random_forest(0, 100), 0, permutation_repeats=0)
    assert ev.per_repeat_metrics(res.predictions)["auroc"].mean() > 0.6


def test_imputation_is_fitted_on_the_training_folds_only(lab_data):
    X, y = lab_data
    X = X.copy()
    X.iloc[:5, 0] = np.nan
    s = sp.make_splits(y, 3, 1, seed=0)
    res = cv_table("imp", X, y, s, lambda: tabular.random_forest(0, 20), 0, permutation_repeats=0, keep_models=True)
    for f in sp.iter_folds(s):
        imputer = res.models[(f.repeat, f.fold)].estimator_.named_steps["impute"]
        np.testing.assert_allclose(imputer.statistics_, X.loc[f.train].median().to_numpy())
        assert not np.allclose(imputer.statistics_, X.median().to_numpy())


def test_every_patient_is_predicted_once_per_repeat_by_a_model_that_did_not_see_it(lab_data):
    X, y = lab_data
    y = y.copy()
    y.iloc[:3] = np.nan  # three patients censored before the horizon
    s = sp.make_splits(y, 3, 2, seed=1)
    res = cv_table("oof", X, y, s, lambda: tabular.random_forest(0, 20), 0, permutation_repeats=0, keep_models=True)
    p = res.predictions
    lab = p[p["fold"] >= 0]
    assert lab.groupby("repeat")["patient"].apply(lambda x: sorted(x) == sorted(y.dropna().index)).all()
    merged = lab.merge(s, on=["patient", "repeat"], suffixes=("", "_split"))
    assert (merged["fold"] == merged["fold_split"]).all()
    unl = p[p["fold"] == -1]
    assert sorted(unl["patient"].unique()) == sorted(y.index[:3]) and unl["label"].isna().all()
    # the unlabelled patients' prediction is the mean of the fold models of the repeat
    r0 = [res.models[(0, f)].estimator_.predict_proba(X.loc[y.index[:3]])[:, 1] for f in range(3)]
    np.testing.assert_allclose(unl[unl["repeat"] == 0].sort_values("patient")["probability"], np.mean(r0, axis=0))


def test_same_seed_same_predictions(lab_data):
    X, y = lab_data
    s = sp.make_splits(y, 3, 1, seed=2)
    a = cv_table("a", X, y, s, lambda: tabular.random_forest(7, 50), 7, permutation_repeats=2)
    b = cv_table("a", X, y, s, lambda: tabular.random_forest(7, 50), 7, permutation_repeats=2)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    pd.testing.assert_frame_equal(a.permutation, b.permutation)


def test_manifest_without_labs_skips_the_lab_models(cohort_copy, tmp_path):
    m = edit_manifest(cohort_copy / "manifest.yaml", labs=[])
    c = load_cohort(m, check_images="none")
    from prrt.profiles import get_profile

    specs = ch02_labs.lab_chapter_specs(c, None, get_profile("smoke"))
    assert [s.build for s in specs] == [None] * 6
    s = sp.make_splits(c.data["label"], 3, 1, 0)
    results, rows = loop.run_models(specs, base.ModelData(c.data["label"], table=tabular.feature_table(c)), c, s,
                                      get_profile("smoke"), 0, tmp_path, progress=False)
    assert results == {}
    status = {r["model"]: r["status"] for r in rows}
    assert status["lab_rf"] == "skipped: the manifest lists no laboratory values"
    assert status["pet_features_rf"] == "skipped: the manifest names no PET images"
    assert status["lab_logreg"] == "skipped: the manifest lists no laboratory values"
    from prrt.evaluation.results import update_summary

    summary = update_summary(tmp_path, rows)
    assert summary["status"].str.startswith("skipped").all() and summary["auroc_mean"].isna().all()


def test_summary_rows_are_replaced_not_duplicated(tmp_path):
    from prrt.evaluation.results import update_summary

    update_summary(tmp_path, [{"model": "a", "status": "ran", "auroc_mean": 0.6}, {"model": "b", "status": "ran"}])
    s = update_summary(tmp_path, [{"model": "a", "status": "ran", "auroc_mean": 0.7}])
    assert sorted(s["model"]) == ["a", "b"] and s.set_index("model").loc["a", "auroc_mean"] == 0.7


def test_risk_groups_never_use_the_sensitivity_model():
    from prrt.study.ch02_labs import risk_group_model

    # with PET missing, the last model that ran is the sensitivity model with PRRT cycles
    ran = dict.fromkeys(["lab_rf", "lab_rf_with_cycles"])
    assert risk_group_model(ran) == "lab_rf"
    assert risk_group_model(dict.fromkeys(["lab_rf", "lab_rf_with_cycles", "pet_features_rf", "lab_pet_features_rf"])) \
        == "lab_pet_features_rf"
    assert risk_group_model(dict.fromkeys(["lab_rf_with_cycles"])) is None


def test_logistic_regression_learns_in_fold_and_keeps_the_prevalence():
    """A skewed marker that separates the groups: the pipeline ranks well, its transformation and
    penalty are fitted on the training part only, and its probabilities are not pushed to 0.5."""
    rng = np.random.default_rng(0)
    n = 120
    y = pd.Series((np.arange(n) < 43).astype(float), index=[f"P{i:03d}" for i in range(n)])
    X = pd.DataFrame({"cga": np.exp(rng.normal(5 + 1.2 * y, 1.0)), "noise": rng.normal(size=n)}, index=y.index)
    X.iloc[3, 0] = np.nan  # imputed inside the fold
    s = sp.make_splits(y, 3, 2, 0)
    res = cv_table("lr", X, y, s, lambda: tabular.logistic_regression(0), 0, permutation_repeats=0, keep_models=True)
    from prrt.evaluation.metrics import per_repeat_metrics

    assert per_repeat_metrics(res.predictions)["auroc"].mean() > 0.75
    assert abs(res.predictions["probability"].mean() - y.mean()) < 0.05
    # the fitted transformation of a fold equals one fitted on that fold's training patients alone
    f = next(sp.iter_folds(s))
    model = res.models[(f.repeat, f.fold)].estimator_
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import PowerTransformer

    own = PowerTransformer().fit(SimpleImputer(strategy="median").fit_transform(X.loc[f.train]))
    np.testing.assert_allclose(model.named_steps["transform"].lambdas_, own.lambdas_)


def test_odds_ratio_table_matches_statsmodels_and_marks_the_scale(small_cohort_dir):
    import statsmodels.api as sm

    c = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    t = table1.odds_ratio_table(c.data, ["chromogranin_a", "haemoglobin"])
    assert t.loc["chromogranin_a", "scale"] == "per doubling" and t.loc["haemoglobin", "scale"] == "per SD"
    d = c.data[c.data["label"].notna() & c.data["chromogranin_a"].notna()]
    fit = sm.Logit(d["label"].astype(int), sm.add_constant(np.log2(d["chromogranin_a"]))).fit(disp=0)
    assert t.loc["chromogranin_a", "odds_ratio"] == pytest.approx(float(np.exp(fit.params.iloc[1])))
    assert t.loc["chromogranin_a", "p"] == pytest.approx(float(fit.pvalues.iloc[1]))
    assert t.loc["chromogranin_a", "n"] == len(d)
    shown = ch02_labs.format_odds_ratios(t)
    assert shown.columns[0] == "odds ratio (95 % CI)"


def test_class_weighted_forest_predicts_risks_at_the_training_prevalence():
    """Balanced class weights push a forest's probabilities towards 0.5; the prior correction brings
    them back to the share of short PFS, fitted on each training part."""
    rng = np.random.default_rng(0)
    n = 150
    y = pd.Series((np.arange(n) < 54).astype(float), index=[f"P{i:03d}" for i in range(n)])  # 36 %
    X = pd.DataFrame({"a": rng.normal(size=n) + 0.8 * y, "b": rng.normal(size=n)}, index=y.index)
    s = sp.make_splits(y, 3, 1, 0)
    res = cv_table("rf", X, y, s, lambda: tabular.random_forest(0, 100), 0, permutation_repeats=0, keep_models=True)
    assert abs(res.predictions["probability"].mean() - 0.36) < 0.05
    f = next(sp.iter_folds(s))
    model = res.models[(f.repeat, f.fold)].estimator_
    raw = model[:-1].transform(X.loc[f.test])
    assert model[-1].estimator_.predict_proba(raw)[:, 1].mean() > 0.42  # what the weights alone give
    assert model[-1].prevalence_ == pytest.approx(y.loc[f.train].mean())


def test_shared_loop_gives_what_a_plain_fold_loop_gives(lab_data):
    """The loop of prrt.learn.loop (chapter 02) against the plain definition: for every repeat and fold,
    a fresh pipeline fitted on the training patients predicts the test patients; permutation
    importance on the test fold with the fold's seed."""
    from sklearn.base import clone
    from sklearn.inspection import permutation_importance

    X, y = lab_data
    s = sp.make_splits(y, 3, 2, seed=4)
    res = cv_table("plain", X, y, s, lambda: tabular.random_forest(9, 30), 9, permutation_repeats=2)
    for f in sp.iter_folds(s):
        m = clone(tabular.random_forest(9, 30)).fit(X.loc[f.train], y.loc[f.train].astype(int))
        tabular._single_threaded_prediction(m)  # as the loop does (the trees' sum in one order)
        got = res.predictions.query("repeat == @f.repeat and fold == @f.fold").set_index("patient")["probability"]
        np.testing.assert_array_equal(got.loc[f.test].to_numpy(), m.predict_proba(X.loc[f.test])[:, 1])
        pi = permutation_importance(m, X.loc[f.test], y.loc[f.test].astype(int), scoring="roc_auc", n_repeats=2,
                                    random_state=9 + 1000 * f.repeat + f.fold)
        perm = res.permutation.query("repeat == @f.repeat and fold == @f.fold")
        np.testing.assert_array_equal(perm["importance"].to_numpy(), pi.importances_mean)
        imp = res.impurity.query("repeat == @f.repeat and fold == @f.fold")
        np.testing.assert_array_equal(imp["importance"].to_numpy(), m[-1].feature_importances_)
    for table in (res.permutation, res.impurity):  # one row per (repeat, fold, feature), numbered afresh
        assert list(table.columns) == ["repeat", "fold", "feature", "importance"]
        assert table.index.equals(pd.RangeIndex(len(table))) and len(table) == 6 * X.shape[1]
    assert res.name == "plain" and res.features == list(X.columns)


def test_one_blas_thread_limits_numpy_and_scipy_and_leaves_torch_its_threads():
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from prrt.learn import one_blas_thread

    def blas():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    torch_threads = torch.get_num_threads()
    with threadpool_limits(2, user_api="blas"):  # put back as it was afterwards
        assert blas() == {2}
        one_blas_thread()
        assert blas() == {1}
        assert torch.get_num_threads() == torch_threads


def test_every_chapter_starts_with_one_blas_thread(small_cohort_dir, tmp_path, monkeypatch):
    from prrt.study import notebook

    calls = []
    monkeypatch.setattr(notebook, "one_blas_thread", lambda: calls.append(1))
    notebook.start(small_cohort_dir / "manifest.yaml", tmp_path / "run", "smoke", 1, show=False)
    assert calls == [1]
