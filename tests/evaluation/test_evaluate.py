"""Splits, metrics and tests of prrt.evaluation, each against a known answer or a direct definition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from prrt.evaluation import calibration, comparison, metrics, survival
from prrt.evaluation import splits as sp


def fake_predictions(y: pd.Series, n_repeats=3, n_folds=3, signal=1.0, seed=0):
    """Out-of-fold predictions on real splits: probability = sigmoid(signal * label + noise)."""
    s = sp.make_splits(y, n_folds, n_repeats, seed)
    rng = np.random.default_rng(seed)
    s["label"] = y.loc[s["patient"]].to_numpy()
    s["probability"] = 1 / (1 + np.exp(-(signal * (s["label"] - 0.5) + rng.normal(0, 1, len(s)))))
    return s[metrics.PRED_COLUMNS], s[["patient", "repeat", "fold"]]


@pytest.fixture
def labels():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(21), np.zeros(37)]
    rng.shuffle(y)
    return pd.Series(y, index=[f"P{i:03d}" for i in range(1, 59)])


# ---- splits ------------------------------------------------------------------------------------------
def test_splits_are_stratified_disjoint_and_complete(labels):
    s = sp.make_splits(labels, 3, 4, seed=1)
    assert len(s) == 4 * len(labels)
    for r, g in s.groupby("repeat"):
        assert sorted(g["patient"]) == sorted(labels.index)  # every patient tested once per repeat
        for f, part in g.groupby("fold"):
            share = labels.loc[part["patient"]].mean()
            assert abs(share - labels.mean()) < 0.05
    for f in sp.iter_folds(s):
        assert not set(f.train) & set(f.test)
        assert len(f.train) + len(f.test) == len(labels)
    # repeats differ, and the same seed gives the same splits
    assert not s[s.repeat == 0]["fold"].equals(s[s.repeat == 1]["fold"].reset_index(drop=True))
    pd.testing.assert_frame_equal(s, sp.make_splits(labels, 3, 4, seed=1))


def test_a_fold_with_a_patient_in_training_and_test_is_refused():
    with pytest.raises(ValueError, match="a patient is in training and test"):
        sp.Fold(0, 1, ["P001", "P002"], ["P002", "P003"])


def test_unlabelled_patients_are_in_no_fold(labels):
    y = labels.copy()
    y["P900"] = np.nan
    s = sp.make_splits(y, 3, 2, seed=0)
    assert "P900" not in set(s["patient"])


def test_splits_round_trip_and_mismatch(tmp_path, small_cohort_dir):
    from prrt.data.load import load_cohort
    from prrt.profiles import get_profile

    c = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    s = sp.ensure_splits(c, get_profile("smoke"), 5, tmp_path)
    pd.testing.assert_frame_equal(s, sp.load_splits(tmp_path, c))
    # a second call (another seed) reads the saved file instead of making new splits
    again = sp.ensure_splits(c, get_profile("smoke"), 999, tmp_path)
    pd.testing.assert_frame_equal(s, again)
    bad = s[s["patient"] != "P001"]
    sp.save_splits(bad, tmp_path)
    with pytest.raises(ValueError, match="does not match the cohort"):
        sp.load_splits(tmp_path, c)


def test_too_few_patients_for_stratified_folds():
    y = pd.Series([1, 1, 0, 0, 0, 0], index=list("abcdef"), dtype=float)
    with pytest.raises(ValueError, match="at least 3 patients in each class; have 2 short-PFS and 4 long-PFS"):
        sp.make_splits(y, 3, 1, 0)
    # exactly k patients in the smaller class is enough: one per test fold
    y3 = pd.Series([1, 1, 1, 0, 0, 0], index=list("abcdef"), dtype=float)
    s = sp.make_splits(y3, 3, 1, 0)
    assert (s.join(y3.rename("y"), on="patient").groupby("fold")["y"].sum() == 1).all()
    # a single class cannot be stratified (not even when it is large)
    with pytest.raises(ValueError, match="have 0 short-PFS and 6 long-PFS"):
        sp.make_splits(pd.Series(0.0, index=list("abcdef")), 3, 1, 0)


def test_folds_come_in_repeat_and_fold_order(labels):
    s = sp.make_splits(labels, 3, 2, seed=4)
    assert [(f.repeat, f.fold) for f in sp.iter_folds(s)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    # the order does not depend on the order of the rows
    shuffled = s.sample(frac=1, random_state=0)
    assert [(f.repeat, f.fold) for f in sp.iter_folds(shuffled)] == [(r, k) for r in (0, 1) for k in (0, 1, 2)]


def test_mean_training_patients(labels):
    s = sp.make_splits(labels, 3, 2, seed=4)  # 58 patients: test parts of 20, 19, 19 -> training 38, 39, 39
    assert sp.mean_training_patients(s) == round((38 + 39 + 39) / 3)
    assert sp.mean_training_patients(s.iloc[:0]) == 0


def test_ensure_splits_uses_the_seed_and_checks_saved_splits(tmp_path, small_cohort_dir, labels):
    from prrt.data.load import load_cohort
    from prrt.profiles import get_profile

    c = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    prof = get_profile("smoke")
    s = sp.ensure_splits(c, prof, 5, tmp_path)
    pd.testing.assert_frame_equal(s, sp.make_splits(c.data["label"], prof.n_folds, prof.n_repeats, 5))
    # the saved file has no index column and reads back with string pseudonyms
    assert (tmp_path / "splits.csv").read_text().splitlines()[0] == "patient,repeat,fold"
    # splits saved for another cohort are refused, not reused
    sp.save_splits(sp.make_splits(labels, 3, 1, 0), tmp_path)
    with pytest.raises(ValueError, match="does not match the cohort"):
        sp.ensure_splits(c, prof, 5, tmp_path)


def test_describe_splits_counts_each_test_part(small_cohort_dir):
    from prrt.data.load import load_cohort

    c = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    s = sp.make_splits(c.data["label"], 3, 2, 0)
    d = sp.describe_splits(s, c)
    assert list(d.columns) == ["test patients", "short PFS", "short PFS share"]
    assert d["short PFS"].dtype == np.int64  # counts, shown without decimals
    for (r, k), row in d.iterrows():
        part = s[(s["repeat"] == r) & (s["fold"] == k)]["patient"]
        assert row["test patients"] == len(part)
        assert row["short PFS"] == int(c.data.loc[part, "label"].sum())
        assert row["short PFS share"] == round(c.data.loc[part, "label"].mean(), 2)
    assert d["test patients"].sum() == 2 * len(c.labelled)


# ---- metrics ------------------------------------------------------------------------------------------
def test_per_repeat_metrics_match_scikit_learn(labels):
    pred, _ = fake_predictions(labels)
    m = metrics.per_repeat_metrics(pred)
    for _, row in m.iterrows():
        g = pred[pred["repeat"] == row["repeat"]]
        assert row["auroc"] == pytest.approx(roc_auc_score(g["label"], g["probability"]))
        assert row["auprc"] == pytest.approx(average_precision_score(g["label"], g["probability"]))
        assert row["brier"] == pytest.approx(brier_score_loss(g["label"], g["probability"]))


def test_fast_auroc_and_ap_match_scikit_learn_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(50):
        y = rng.integers(0, 2, 30)
        if y.min() == y.max():
            continue
        s = np.round(rng.random(30), 1)
        assert metrics.auroc_fast(y, s[:, None])[0] == pytest.approx(roc_auc_score(y, s))
        assert metrics.average_precision_fast(y, s) == pytest.approx(average_precision_score(y, s))


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_signal(labels):
    pred, _ = fake_predictions(labels, signal=2.0)
    mean = metrics.per_repeat_metrics(pred)["auroc"].mean()
    ci = metrics.bootstrap_ci(pred, n_boot=300, seed=0)
    assert ci["auroc_ci"][0] < mean < ci["auroc_ci"][1]
    assert ci == metrics.bootstrap_ci(pred, n_boot=300, seed=0)
    strong, _ = fake_predictions(labels, signal=6.0)
    ci_strong = metrics.bootstrap_ci(strong, n_boot=300, seed=0)
    assert np.diff(ci_strong["auroc_ci"])[0] < np.diff(ci["auroc_ci"])[0]


# ---- DeLong -------------------------------------------------------------------------------------------
def delong_by_definition(y, a, b):
    """DeLong et al. (1988) straight from the definition: psi kernels and their covariance."""
    y = np.asarray(y)
    X = [np.asarray(a)[y == 1], np.asarray(b)[y == 1]]
    Y = [np.asarray(a)[y == 0], np.asarray(b)[y == 0]]
    m, n = len(X[0]), len(Y[0])
    psi = lambda x, yy: 1.0 if x > yy else 0.5 if x == yy else 0.0  # noqa: E731
    V10 = np.array([[np.mean([psi(X[r][i], Y[r][j]) for j in range(n)]) for i in range(m)] for r in range(2)])
    V01 = np.array([[np.mean([psi(X[r][i], Y[r][j]) for i in range(m)]) for j in range(n)] for r in range(2)])
    auc = V10.mean(axis=1)
    S = np.cov(V10) / m + np.cov(V01) / n
    var = S[0, 0] + S[1, 1] - 2 * S[0, 1]
    z = (auc[0] - auc[1]) / np.sqrt(var)
    return auc, z, 2 * stats.norm.sf(abs(z))


def test_delong_small_hand_checkable_example():
    # 3 short-PFS and 3 long-PFS patients; model A ranks perfectly, model B makes one swap and one tie
    y = [1, 1, 1, 0, 0, 0]
    a = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]
    b = [0.9, 0.4, 0.6, 0.5, 0.6, 0.1]
    r = comparison.delong_test(y, a, b)
    # AUROC of B by counting the 9 pairs: (0.9 beats all 3), (0.4 beats 0.1 only), (0.6 beats 0.5 and
    # 0.1, ties 0.6) -> (3 + 1 + 2.5) / 9
    assert r["auroc_a"] == pytest.approx(1.0)
    assert r["auroc_b"] == pytest.approx(6.5 / 9)
    auc, z, p = delong_by_definition(y, a, b)
    assert r["z"] == pytest.approx(z) and r["p"] == pytest.approx(p)


def test_delong_matches_definition_on_random_data():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(12), np.zeros(17)].astype(int)
    a = y + rng.normal(0, 1, len(y))
    b = 0.5 * y + rng.normal(0, 1, len(y))
    r = comparison.delong_test(y, a, b)
    auc, z, p = delong_by_definition(y, a, b)
    assert (r["auroc_a"], r["auroc_b"]) == pytest.approx(tuple(auc))
    assert r["auroc_a"] == pytest.approx(roc_auc_score(y, a))
    assert r["p"] == pytest.approx(p)
    assert comparison.delong_test(y, a, a)["p"] == 1.0


# ---- corrected resampled t-test --------------------------------------------------------------------------
def test_corrected_t_against_its_formula_and_the_naive_test():
    d = np.array([0.05, 0.02, 0.08, -0.01, 0.04, 0.06])
    r = comparison.corrected_resampled_ttest(d, n_train=80, n_test=40)
    t = d.mean() / np.sqrt((1 / 6 + 40 / 80) * d.var(ddof=1))
    assert r["t"] == pytest.approx(t) and r["df"] == 5
    assert r["p"] == pytest.approx(2 * stats.t.sf(abs(t), 5))
    # without the correction term it is the ordinary one-sample t-test
    naive = comparison.corrected_resampled_ttest(d, n_train=10**12, n_test=1)
    assert naive["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue, rel=1e-6)
    assert r["p"] > naive["p"]  # the correction is conservative


def test_compare_models_on_shared_splits(labels):
    a, s = fake_predictions(labels, signal=3.0, seed=4)
    b = a.copy()
    b["probability"] = np.random.default_rng(9).random(len(b))
    c = comparison.compare_models(a, b, s)
    assert c["auroc_difference"] > 0.2 and c["p_corrected_t"] < 0.05 and c["p_delong"] < 0.05
    other, _ = fake_predictions(labels, seed=5)
    with pytest.raises(ValueError, match="^the two models were not evaluated on the same repeats and folds$"):
        comparison.compare_models(a, other[other["repeat"] < 2], s)


# ---- survival, calibration, decision curve ---------------------------------------------------------------
def test_c_index_hand_example_and_lifelines():
    from lifelines.utils import concordance_index

    time = np.array([2.0, 5.0, 8.0, 12.0, 20.0])
    event = np.array([1, 1, 0, 1, 0])
    risk = np.array([0.9, 0.5, 0.7, 0.4, 0.1])
    # comparable pairs (earlier time had an event): (1,2) (1,3) (1,4) (1,5) (2,3) (2,4) (2,5) (4,5)
    # concordant when the earlier one has the higher risk: all but (2,3) -> 7 / 8
    assert metrics.c_index(time, event, risk) == pytest.approx(7 / 8)
    assert metrics.c_index(time, event, risk) == pytest.approx(concordance_index(time, -risk, event))


def test_logrank_groups_and_net_benefit():
    time = np.array([1, 2, 3, 4, 20, 25, 30, 35.0])
    event = np.ones(8)
    risk = np.array([0.9, 0.8, 0.85, 0.7, 0.2, 0.1, 0.3, 0.15])
    g = survival.risk_groups_logrank(time, event, risk)
    assert g["high"].tolist() == [True] * 4 + [False] * 4 and g["p"] < 0.01
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.8, 0.4, 0.6, 0.1, 0.2])
    nb = calibration.net_benefit(y, p, [0.5]).iloc[0]
    # treat p >= 0.5: TP = 1, FP = 1 -> 1/5 - 1/5 * 1 = 0; treat all: 2/5 - 3/5 = -0.2
    assert nb["model"] == pytest.approx(0.0) and nb["treat_all"] == pytest.approx(-0.2)
    cal = calibration.calibration(np.r_[np.zeros(50), np.ones(50)], np.r_[np.full(50, 0.1), np.full(50, 0.9)], n_bins=2)
    assert cal["observed"].tolist() == [0.0, 1.0]


def test_mean_training_patients_per_fold():
    y = pd.Series([1.0] * 42 + [0.0] * 74, index=[f"P{i:03d}" for i in range(116)])
    s = sp.make_splits(y, 3, 2, 0)
    assert sp.mean_training_patients(s) == 77  # two thirds of 116


def test_auprc_is_reported_for_both_classes():
    from prrt.study.reported import STUDY_REPORTED, comparison_with_study

    rng = np.random.default_rng(3)
    y = np.r_[np.ones(42), np.zeros(74)]
    rows = []
    for r in range(3):
        p = np.clip(0.36 + 0.25 * (y - 0.36) + rng.normal(0, 0.2, len(y)), 0, 1)
        rows += [{"patient": f"P{i:03d}", "repeat": r, "fold": i % 3, "probability": p[i], "label": y[i]}
                 for i in range(len(y))]
    pred = pd.DataFrame(rows)
    m = metrics.per_repeat_metrics(pred)
    g = pred[pred["repeat"] == 0]
    assert m["auprc_long"].iloc[0] == pytest.approx(average_precision_score(1 - g["label"], 1 - g["probability"]))
    assert m["auprc"].iloc[0] == pytest.approx(average_precision_score(g["label"], g["probability"]))
    # with prevalence 0.36 the long-PFS AUPRC is the larger one at the same AUROC
    assert (m["auprc_long"] > m["auprc"]).all()
    s = metrics.summarise(pred, n_boot=50)
    assert s["auprc_long_mean"] == pytest.approx(m["auprc_long"].mean())
    table = comparison_with_study(pd.DataFrame([{"model": "x", "inputs": "labs", "status": "ran", **s}]), True)
    assert "AUPRC, long PFS positive (as the study's)" in table.columns
    assert "long PFS positive" in STUDY_REPORTED.columns[-1]


def test_prior_correction_undoes_balanced_weights():
    p = np.array([0.1, 0.5, 0.9])
    q = metrics.prior_correction(p, 0.36)
    assert q[1] == pytest.approx(0.36)  # "no information" under balanced weights = the prevalence
    np.testing.assert_allclose(q / (1 - q), p / (1 - p) * 0.36 / 0.64)
    assert np.all(np.diff(q) > 0)  # monotone: the ranking is kept
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="prevalence must lie strictly between 0 and 1"):
            metrics.prior_correction(p, bad)
    np.testing.assert_array_equal(metrics.prior_correction([0.0, 1.0], 0.3), [0.0, 1.0])  # certain stays certain


def test_the_binormal_auprc_is_the_integral_of_precision_over_recall():
    """Against scipy's adaptive quadrature of precision over recall (dR = φ(t − d) dt): the default grid of
    thresholds is fine enough for six decimals."""
    from scipy import integrate

    for auroc, prevalence in ((0.6, 0.2), (0.72, 0.36), (0.9, 0.64)):
        d = np.sqrt(2.0) * stats.norm.ppf(auroc)

        def integrand(t, d=d, prevalence=prevalence):
            recall, fpr = stats.norm.sf(t - d), stats.norm.sf(t)
            return prevalence * recall / (prevalence * recall + (1 - prevalence) * fpr) * stats.norm.pdf(t - d)

        exact, _ = integrate.quad(integrand, -12.0, 12.0 + d, limit=200, epsabs=1e-12)
        assert metrics.binormal_auprc(auroc, prevalence) == pytest.approx(exact, abs=1e-6), (auroc, prevalence)


def test_the_binormal_auprc_starts_at_the_prevalence_and_matches_simulated_scores():
    assert metrics.binormal_auprc(0.5, 0.36) == pytest.approx(0.36, abs=1e-4)
    assert metrics.binormal_auprc(0.72, 0.36) < metrics.binormal_auprc(0.72, 0.64)
    assert metrics.binormal_auprc(0.9, 0.36) > metrics.binormal_auprc(0.72, 0.36)
    # against average precision of many scores drawn from the model itself
    rng = np.random.default_rng(0)
    d = np.sqrt(2) * stats.norm.ppf(0.72)
    n_pos, n_neg = 36_000, 64_000
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    s = np.r_[rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)]
    assert roc_auc_score(y, s) == pytest.approx(0.72, abs=0.005)
    assert metrics.binormal_auprc(0.72, 0.36) == pytest.approx(average_precision_score(y, s), abs=0.01)
    for bad in ((0.0, 0.3), (0.7, 1.0), (1.2, 0.5), (0.7, 0.0), (1.0, 0.5)):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            metrics.binormal_auprc(*bad)
    # the default grid of thresholds integrates to within 1e-6 of a grid fifty times finer
    assert metrics.binormal_auprc(0.72, 0.36) == pytest.approx(metrics.binormal_auprc(0.72, 0.36, 200_001), abs=1e-6)


def test_assembled_predictions_have_the_prediction_columns_and_a_fresh_index():
    from prrt.evaluation.splits import Fold

    y = pd.Series([1.0, 0.0, 1.0, 0.0], index=["A", "B", "C", "D"])
    parts = [metrics.fold_test_rows(Fold(0, 1, ["A", "B"], ["C", "D"]), [0.9, 0.2], y),
             metrics.fold_test_rows(Fold(0, 0, ["C", "D"], ["A", "B"]), [0.6, 0.1], y)]
    assert all(part["label"].dtype.kind == "i" for part in parts)  # written as 0/1, not 0.0/1.0
    out = metrics.assemble_predictions(parts, ["U"], {0: [np.array([0.5]), np.array([0.7])]})
    assert list(out.columns) == metrics.PRED_COLUMNS
    assert out.index.tolist() == list(range(5))
    assert out["patient"].tolist() == ["U", "A", "B", "C", "D"]  # by repeat, fold (-1 first), patient
    assert out.loc[0, "probability"] == pytest.approx(0.6) and np.isnan(out.loc[0, "label"])


def test_bootstrap_resamples_keep_the_class_counts(monkeypatch):
    """Every resample of the patient bootstrap holds as many short- and long-PFS patients as the data."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(3), np.zeros(37)]
    pred = pd.DataFrame({"patient": [f"P{i:03d}" for i in range(40)], "repeat": 0, "fold": np.arange(40) % 3,
                         "probability": rng.random(40), "label": y})
    seen = []
    real = metrics.auroc_fast

    def spy(yb, P):
        seen.append(int(np.sum(yb)))
        return real(yb, P)

    monkeypatch.setattr(metrics, "auroc_fast", spy)
    ci = metrics.bootstrap_ci(pred, n_boot=300, seed=1)
    assert len(seen) == 300 and set(seen) == {3}  # unstratified resampling would vary the count (0 to 8)
    assert np.all(np.isfinite(ci["auroc_ci"]))


# ---- exact outputs (each test names the mistakes it catches) ------------------------------------------
class _SurvivalCohort:
    """The two things summarise reads from a cohort."""

    def __init__(self, data):
        self.data, self.has_survival = data, True


def test_summarise_every_field_against_its_definition(labels):
    pred, _ = fake_predictions(labels, n_repeats=3, signal=1.5, seed=2)
    rng = np.random.default_rng(8)
    data = pd.DataFrame({"pfs_months": rng.exponential(20, len(labels)), "event": rng.integers(0, 2, len(labels))},
                        index=labels.index)
    unl = pd.DataFrame({"patient": "P999", "repeat": [0, 1, 2], "fold": -1, "probability": 0.4, "label": np.nan})
    data.loc["P999"] = [3.0, 0]
    pred = pd.concat([pred, unl], ignore_index=True)
    s = metrics.summarise(pred, _SurvivalCohort(data), n_boot=40, seed=6)
    m = metrics.per_repeat_metrics(pred)
    ci = metrics.bootstrap_ci(pred, n_boot=40, seed=6)
    risk = pred.groupby("patient")["probability"].mean()
    lab = pred[pred["fold"] >= 0]
    cal = [calibration.calibration_intercept_slope(g["label"], g["probability"]) for _, g in lab.groupby("repeat")]
    expected = {
        "auroc_mean": m["auroc"].mean(), "auroc_sd": m["auroc"].std(ddof=1),
        "auroc_ci_low": ci["auroc_ci"][0], "auroc_ci_high": ci["auroc_ci"][1],
        "auprc_mean": m["auprc"].mean(), "auprc_sd": m["auprc"].std(ddof=1),
        "auprc_ci_low": ci["auprc_ci"][0], "auprc_ci_high": ci["auprc_ci"][1],
        "auprc_long_mean": m["auprc_long"].mean(), "auprc_long_sd": m["auprc_long"].std(ddof=1),
        "brier_mean": m["brier"].mean(), "brier_sd": m["brier"].std(ddof=1),
        "calibration_slope": np.mean([c["calibration_slope"] for c in cal]),
        "calibration_in_the_large": np.mean([c["calibration_in_the_large"] for c in cal]),
        "n_patients": len(labels), "n_repeats": 3,
        "c_index": metrics.c_index(data.loc[risk.index, "pfs_months"], data.loc[risk.index, "event"], risk),
        "n_patients_survival": len(labels) + 1,  # the unlabelled patient counts for survival
    }
    assert set(s) == set(expected)
    for k, v in expected.items():
        assert s[k] == pytest.approx(v, rel=1e-12), k
    assert ci["auroc_ci"] != metrics.bootstrap_ci(pred, n_boot=40, seed=7)["auroc_ci"]  # the seed is used
    assert ci["auroc_ci"] != metrics.bootstrap_ci(pred, n_boot=41, seed=6)["auroc_ci"]  # and n_boot
    # one repeat: no spread; without survival data: no C-index
    one = metrics.summarise(pred[pred["repeat"] == 0], None, n_boot=20, seed=0)
    assert (one["auroc_sd"], one["auprc_sd"], one["auprc_long_sd"], one["brier_sd"], one["n_repeats"]) == (0.0, 0.0, 0.0,
                                                                                                         0.0, 1)
    assert one["calibration_slope"] == pytest.approx(cal[0]["calibration_slope"], rel=1e-12)
    assert np.isnan(one["c_index"]) and one["n_patients_survival"] == 0
    two = metrics.summarise(pred[pred["repeat"] < 2], None, n_boot=20, seed=0)
    for k in ("auroc", "auprc", "auprc_long", "brier"):  # two repeats: a spread
        assert two[f"{k}_sd"] == pytest.approx(m[k].iloc[:2].std(ddof=1)) and two[f"{k}_sd"] > 0, k


def test_bootstrap_defaults_are_the_documented_1000_resamples_with_seed_0(labels):
    """run.json records n_boot and the seed; the defaults must be what the methods chapter says."""
    pred, _ = fake_predictions(labels, n_repeats=2, signal=1.0, seed=1)
    ci = metrics.bootstrap_ci(pred)
    assert ci == metrics.bootstrap_ci(pred, n_boot=1000, seed=0)
    s = metrics.summarise(pred)
    assert (s["auroc_ci_low"], s["auroc_ci_high"]) == ci["auroc_ci"]


def test_bootstrap_ci_is_the_percentile_interval_of_the_stratified_resamples(labels):
    pred, _ = fake_predictions(labels, n_repeats=2, signal=1.0, seed=1)
    P, y = metrics._matrix(pred)
    rng = np.random.default_rng(5)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    auroc, auprc = [], []
    for _ in range(60):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        auroc.append(np.mean([roc_auc_score(y[idx], P[idx, r]) for r in range(2)]))
        auprc.append(np.mean([average_precision_score(y[idx], P[idx, r]) for r in range(2)]))
    for level in (0.95, 0.5):
        ci = metrics.bootstrap_ci(pred, n_boot=60, seed=5, level=level)
        a = (1 - level) / 2
        np.testing.assert_allclose(ci["auroc_ci"], np.quantile(auroc, [a, 1 - a]), rtol=1e-12)
        np.testing.assert_allclose(ci["auprc_ci"], np.quantile(auprc, [a, 1 - a]), rtol=1e-12)


def test_corrected_t_edge_cases_and_fields():
    # two folds are enough; the fields are exactly these
    r = comparison.corrected_resampled_ttest([0.1, 0.3], n_train=20, n_test=10)
    assert set(r) == {"mean_difference", "t", "df", "p", "ci_low", "ci_high"} and r["df"] == 1
    assert r["mean_difference"] == pytest.approx(0.2)
    # the interval: mean ± t(0.975, J - 1) · sqrt((1/J + n_test/n_train) s²), here s² = 0.02, J = 2
    half = stats.t.ppf(0.975, 1) * np.sqrt((1 / 2 + 10 / 20) * 0.02)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.2 - half, 0.2 + half))
    # the interval excludes zero exactly when p < 0.05
    for d in ([0.1, 0.12, 0.09, 0.11], [0.1, -0.05, 0.2, 0.0], [-0.3, -0.2, -0.25]):
        r = comparison.corrected_resampled_ttest(d, n_train=20, n_test=10)
        assert (r["ci_low"] > 0 or r["ci_high"] < 0) == (r["p"] < 0.05)
    with pytest.raises(ValueError, match="^need at least two folds for a t-test$"):
        comparison.corrected_resampled_ttest([0.1], n_train=20, n_test=10)
    # no spread: a constant non-zero difference is certain, a zero difference is no difference
    assert comparison.corrected_resampled_ttest([0.25, 0.25, 0.25], 20, 10) == {
        "mean_difference": 0.25, "t": np.inf, "df": 2, "p": 0.0, "ci_low": 0.25, "ci_high": 0.25}
    assert comparison.corrected_resampled_ttest([0.0, 0.0], 20, 10) == {"mean_difference": 0.0, "t": 0.0, "df": 1, "p": 1.0,
                                                                        "ci_low": 0.0, "ci_high": 0.0}
    # a spread that is not zero but small still goes through the formula
    d = np.array([1.0, 1.0, 1.0 + 1e-9])
    assert np.isfinite(comparison.corrected_resampled_ttest(d, 20, 10)["t"])


def test_delong_edge_cases_and_fields():
    y = [1, 1, 0, 0]
    r = comparison.delong_test(y, [0.9, 0.6, 0.5, 0.1], [0.2, 0.7, 0.3, 0.4])  # two of each class is enough
    assert set(r) == {"auroc_a", "auroc_b", "difference", "se", "z", "p", "covariance"}
    assert r["covariance"].shape == (2, 2)
    assert r["difference"] == pytest.approx(r["auroc_a"] - r["auroc_b"])
    var = r["covariance"][0, 0] + r["covariance"][1, 1] - 2 * r["covariance"][0, 1]
    assert r["se"] == pytest.approx(np.sqrt(var)) and r["z"] == pytest.approx(r["difference"] / np.sqrt(var))
    for bad in ([1, 0, 0, 0], [1, 1, 1, 0]):
        with pytest.raises(ValueError, match="^DeLong's test needs at least two patients of each class$"):
            comparison.delong_test(bad, [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])
    # a perfect and a perfectly wrong ranking: no variance, the difference is certain
    p = comparison.delong_test(y, [0.9, 0.8, 0.2, 0.1], [0.1, 0.2, 0.8, 0.9])
    assert (p["difference"], p["se"], p["z"], p["p"]) == (1.0, 0.0, np.inf, 0.0)
    # identical scores: no difference
    same = comparison.delong_test(y, [0.9, 0.8, 0.2, 0.1], [0.9, 0.8, 0.2, 0.1])
    assert (same["difference"], same["z"], same["p"]) == (0.0, 0.0, 1.0)


def test_compare_models_combines_the_two_tests_exactly(labels):
    a, s = fake_predictions(labels, signal=2.0, seed=4)
    b, _ = fake_predictions(labels, signal=0.5, seed=5)
    c = comparison.compare_models(a, b, s)
    fa, fb = metrics.per_fold_auroc(a), metrics.per_fold_auroc(b)
    n_test = s.groupby(["repeat", "fold"]).size().mean()
    nb = comparison.corrected_resampled_ttest((fa - fb).to_numpy(), n_train=len(labels) - n_test, n_test=n_test)
    ma, mb = metrics.mean_probability(a), metrics.mean_probability(b)
    dl = comparison.delong_test(labels.loc[ma.index].to_numpy(int), ma.to_numpy(), mb.loc[ma.index].to_numpy())
    assert c == {"auroc_difference": pytest.approx(nb["mean_difference"]), "p_corrected_t": pytest.approx(nb["p"]),
                 "t": pytest.approx(nb["t"]), "df": nb["df"], "ci_low": pytest.approx(nb["ci_low"]),
                 "ci_high": pytest.approx(nb["ci_high"]), "p_delong": pytest.approx(dl["p"]),
                 "delong_difference": pytest.approx(dl["difference"])}
    assert comparison.compare_models(b, a, s)["auroc_difference"] == pytest.approx(-c["auroc_difference"])
    # a model that scored fewer patients (a PET CNN without some patients' PET) is compared on those it scored
    gone = list(labels.index[::7])
    fewer = b[~b["patient"].isin(gone)]
    both = comparison.compare_models(a[~a["patient"].isin(gone)], fewer, s)
    assert comparison.compare_models(a, fewer, s) == both
    assert comparison.compare_models(a, fewer, s)["auroc_difference"] != pytest.approx(c["auroc_difference"])


def test_per_fold_auroc_index_and_values(labels):
    pred, s = fake_predictions(labels, n_repeats=2, seed=3)
    f = metrics.per_fold_auroc(pred)
    assert list(f.index) == [(r, k) for r in (0, 1) for k in (0, 1, 2)]
    for (r, k), v in f.items():
        g = pred[(pred["repeat"] == r) & (pred["fold"] == k)]
        assert v == roc_auc_score(g["label"].astype(int), g["probability"])


def test_load_splits_reads_pseudonyms_as_text_and_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"splits.csv does not exist: the splits are made by the first model "
                                                r"chapter \(notebooks/02_lab_random_forest.ipynb\); run the notebooks "
                                                r"in order$"):
        sp.load_splits(tmp_path)
    (tmp_path / "splits.csv").write_text("patient,repeat,fold\n0012,0,1\n0007,1,0\n")
    s = sp.load_splits(tmp_path)
    assert s["patient"].tolist() == ["0012", "0007"]
    assert s.dtypes.to_dict() == {"patient": object, "repeat": np.int64, "fold": np.int64}


def test_splits_mismatch_message_counts_both_ways(tmp_path, small_cohort_dir):
    from prrt.data.load import load_cohort

    c = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    s = sp.make_splits(c.data["label"], 3, 1, 0)
    s.loc[0, "patient"] = "P900"  # one unknown patient, one labelled patient missing
    sp.save_splits(s, tmp_path)
    with pytest.raises(ValueError, match=r"does not match the cohort: 1 patients in the splits are not labelled in "
                                         r"the cohort, 1 labelled patients are missing from the splits$"):
        sp.load_splits(tmp_path, c)


def test_calibration_intercept_and_slope_recover_a_known_miscalibration():
    """Outcomes drawn from known probabilities: those probabilities are calibrated (intercept 0, slope 1);
    predictions shifted up by 1 on the logit scale have calibration-in-the-large -1; predictions twice as
    extreme have slope 1/2. Each truth lies in its 95 % CI."""
    from scipy.special import expit

    from prrt.evaluation.calibration import calibration_intercept_slope

    rng = np.random.default_rng(3)
    lp = rng.normal(-0.5, 1.2, 20_000)
    y = rng.random(lp.size) < expit(lp)
    exact = calibration_intercept_slope(y, expit(lp))
    assert exact["calibration_in_the_large"] == pytest.approx(0, abs=0.05)
    assert exact["calibration_slope"] == pytest.approx(1, abs=0.05)
    assert exact["n"] == 20_000
    high = calibration_intercept_slope(y, expit(lp + 1))
    lo, hi = high["calibration_in_the_large_ci"]
    assert high["calibration_in_the_large"] == pytest.approx(-1, abs=0.06) and lo < -1 < hi
    extreme = calibration_intercept_slope(y, expit(2 * lp))
    lo, hi = extreme["calibration_slope_ci"]
    assert extreme["calibration_slope"] == pytest.approx(0.5, abs=0.03) and lo < 0.5 < hi
    # NaN rows are left out; probabilities of exactly 0 or 1 are clipped, not infinite
    # a missing outcome or prediction (None, as from a table) leaves the row out
    odd = calibration_intercept_slope([1, 0, None, 0, 1, 1, 0, 1, 0], [0.9, 0.2, 0.5, 1.0, 0.0, 0.6, 0.3, 0.4, None])
    assert odd["n"] == 7 and np.isfinite(odd["calibration_slope"]) and np.isfinite(odd["calibration_in_the_large"])


def test_per_repeat_calibration_reads_overconfident_predictions_and_skips_constant_ones():
    rng = np.random.default_rng(3)
    n = 400
    y = rng.integers(0, 2, n)
    true_logit = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1, n)
    p_true = 1 / (1 + np.exp(-true_logit))
    y = (rng.random(n) < p_true).astype(int)  # outcomes drawn from p_true: calibrated by construction
    over = 1 / (1 + np.exp(-3 * true_logit))  # the same ranking, three times too extreme
    perfect = np.where(y == 1, 0.7, 0.2)  # separates the classes: no finite slope
    rows = [pd.DataFrame({"patient": [f"P{i}" for i in range(n)], "repeat": r, "fold": 0, "probability": p,
                          "label": y}) for r, p in enumerate([p_true, over, np.full(n, 0.3), perfect])]
    cal = metrics.per_repeat_calibration(pd.concat(rows, ignore_index=True)).set_index("repeat")
    assert cal.loc[0, "calibration_slope"] == pytest.approx(1.0, abs=0.25)
    assert cal.loc[0, "calibration_slope_ci_low"] < 1 < cal.loc[0, "calibration_slope_ci_high"]
    assert cal.loc[1, "calibration_slope_ci_high"] < 1
    assert cal.loc[1, "calibration_slope"] == pytest.approx(1 / 3, abs=0.1)  # too extreme: slope below 1
    assert np.isnan(cal.loc[2, "calibration_slope"]) and np.isnan(cal.loc[2, "calibration_in_the_large"])
    assert abs(cal.loc[0, "calibration_in_the_large"]) < 0.3
    assert np.isnan(cal.loc[3, "calibration_slope"]) and np.isnan(cal.loc[3, "calibration_in_the_large"])


def test_two_distinct_probabilities_that_do_not_separate_the_classes_have_a_calibration_slope():
    """A model that gives only two probabilities (a one-split tree, a binary marker) still has a slope: the two
    values are enough for the logistic fit as long as each holds patients of both classes."""
    pred = pd.DataFrame({"patient": [f"P{i}" for i in range(20)], "repeat": 0, "fold": 0,
                         "probability": [0.2] * 10 + [0.6] * 10, "label": [1] * 2 + [0] * 8 + [1] * 6 + [0] * 4})
    cal = metrics.per_repeat_calibration(pred).iloc[0]
    # two groups: the fit passes through both observed rates (0.2 and 0.6): logit slope exactly 1, intercept 0
    assert cal["calibration_slope"] == pytest.approx(1.0, abs=1e-6)
    assert cal["calibration_slope_ci_low"] < 1 < cal["calibration_slope_ci_high"]
    assert cal["calibration_in_the_large"] == pytest.approx(0.0, abs=1e-6)


def test_a_warning_of_the_calibration_fit_other_than_separation_is_passed_on_not_raised(monkeypatch):
    """Only perfect separation leaves a repeat's calibration empty; another warning of the fit (statsmodels'
    convergence warning, say) reaches the reader as a warning, and the repeat keeps its numbers."""
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    def fit(label, probability):
        import warnings

        warnings.warn("the fit converged slowly", ConvergenceWarning)
        return {"calibration_slope": 0.9, "calibration_slope_ci": (0.5, 1.3), "calibration_in_the_large": 0.1}

    monkeypatch.setattr(metrics, "calibration_intercept_slope", fit)
    pred = pd.DataFrame({"patient": ["A", "B", "C", "D"], "repeat": 0, "fold": 0,
                         "probability": [0.2, 0.4, 0.6, 0.8], "label": [0, 1, 0, 1]})
    with pytest.warns(ConvergenceWarning, match="converged slowly"):
        cal = metrics.per_repeat_calibration(pred)
    assert cal.iloc[0].tolist() == [0, 0.9, 0.5, 1.3, 0.1]


def test_the_calibration_table_of_predictions_without_a_labelled_patient_is_empty_with_its_columns():
    """What the summary reads by name must be there when no repeat has a labelled patient (only unlabelled patients,
    predicted once per repeat with fold -1)."""
    pred = pd.DataFrame({"patient": ["U1", "U1"], "repeat": [0, 1], "fold": -1, "probability": [0.3, 0.4],
                         "label": np.nan})
    cal = metrics.per_repeat_calibration(pred)
    assert cal.empty and list(cal.columns) == ["repeat", "calibration_slope", "calibration_slope_ci_low",
                                               "calibration_slope_ci_high", "calibration_in_the_large"]
