"""Result files and the tables the book prints from them, against exact expected text and values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prrt.evaluation import calibration, comparison, metrics, results, survival
from prrt.study import reported


def _pred():
    return pd.DataFrame({"patient": ["007", "P002", "P003", "P004"], "repeat": [0, 0, 0, 0], "fold": [0, 1, 1, -1],
                         "probability": [0.25, 0.5, 0.75, 0.125], "label": [1, 0, 1, np.nan],
                         "extra": ["x", "y", "z", "w"]})


def test_predictions_round_trip_keeps_ids_as_text_and_only_the_prediction_columns(tmp_path):
    path = results.write_predictions(tmp_path, "m", _pred())
    assert path == tmp_path / "predictions" / "m.csv"
    assert path.read_text().splitlines()[0] == "patient,repeat,fold,probability,label"
    back = results.read_predictions(tmp_path, "m")
    assert list(back.columns) == metrics.PRED_COLUMNS
    assert back["patient"].tolist() == ["007", "P002", "P003", "P004"]  # not the number 7
    np.testing.assert_array_equal(back["probability"], [0.25, 0.5, 0.75, 0.125])
    with pytest.raises(FileNotFoundError, match="no predictions for model 'other' in this run"):
        results.read_predictions(tmp_path, "other")


def test_summary_file_has_the_fixed_columns_and_replaces_rows(tmp_path):
    results.update_summary(tmp_path, [{"model": "b", "status": "ran", "auroc_mean": 0.6},
                                 results.skipped("c", "03", "CT", "no CT")])
    s = results.update_summary(tmp_path, [{"model": "a", "status": "ran", "auroc_mean": 0.7},
                                     {"model": "b", "status": "ran", "auroc_mean": 0.65}])
    on_disk = pd.read_csv(tmp_path / "results" / "summary.csv", dtype={"chapter": str})
    assert list(on_disk.columns) == results.SUMMARY_COLUMNS
    assert on_disk["model"].tolist() == ["c", "a", "b"]  # kept rows first, then the new ones
    assert on_disk.set_index("model")["auroc_mean"].to_dict() == pytest.approx({"a": 0.7, "b": 0.65, "c": np.nan},
                                                                               nan_ok=True)
    pd.testing.assert_frame_equal(s.reset_index(drop=True), on_disk, check_dtype=False)
    # a chapter number stays text when a later chapter adds its rows
    s = results.update_summary(tmp_path, [{"model": "d", "chapter": "04", "status": "ran"}])
    assert s.set_index("model").loc[["c", "d"], "chapter"].tolist() == ["03", "04"]


def test_replacing_every_row_of_the_summary_warns_of_nothing(tmp_path):
    import warnings

    results.update_summary(tmp_path, [{"model": "a", "status": "ran", "auroc_mean": 0.6}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. pandas' warning on concatenating an empty table
        s = results.update_summary(tmp_path, [{"model": "a", "status": "ran", "auroc_mean": 0.7}])
    assert s["model"].tolist() == ["a"] and s["auroc_mean"].tolist() == [0.7]


def test_skipped_row():
    assert results.skipped("ct_cnn", "03", "CT, 3D CNN", "the manifest names no CT images") == {
        "model": "ct_cnn", "chapter": "03", "inputs": "CT, 3D CNN",
        "status": "skipped: the manifest names no CT images"}


def _summary():
    return pd.DataFrame([
        {"model": "lab_rf", "inputs": "labs", "status": "ran", "auroc_mean": 0.6789, "auroc_sd": 0.0234,
         "auroc_ci_low": 0.61, "auroc_ci_high": 0.744, "auprc_mean": 0.5, "auprc_sd": 0.01, "auprc_ci_low": 0.42,
         "auprc_ci_high": 0.58, "auprc_long_mean": 0.8123, "auprc_long_sd": 0.005, "c_index": 0.6666,
         "brier_mean": 0.21449, "calibration_slope": 0.8251},
        {"model": "ct_cnn", "inputs": "CT", "status": "skipped: no CT", "auroc_mean": np.nan, "auroc_sd": np.nan,
         "auroc_ci_low": np.nan, "auroc_ci_high": np.nan, "auprc_mean": np.nan, "auprc_sd": np.nan,
         "auprc_ci_low": np.nan, "auprc_ci_high": np.nan, "auprc_long_mean": np.nan, "auprc_long_sd": np.nan,
         "c_index": np.nan},
    ])


def test_format_summary_text():
    t = results.format_summary(_summary())
    assert t.index.tolist() == ["lab_rf", "ct_cnn"]
    assert t.loc["lab_rf"].to_dict() == {
        "inputs": "labs", "status": "ran", "AUROC mean ± SD [95 % CI]": "0.68 ± 0.02 [0.61–0.74]",
        "AUPRC, short PFS positive: mean ± SD [95 % CI]": "0.50 ± 0.01 [0.42–0.58]",
        "AUPRC, long PFS positive": "0.81 ± 0.01", "Brier": "0.214", "calibration slope": "0.83", "C-index": "0.67"}
    assert t.loc["ct_cnn"].to_dict() == {
        "inputs": "CT", "status": "skipped: no CT", "AUROC mean ± SD [95 % CI]": "–",
        "AUPRC, short PFS positive: mean ± SD [95 % CI]": "–", "AUPRC, long PFS positive": "–", "Brier": "–",
        "calibration slope": "–", "C-index": "–"}
    # a summary written before the calibration slope was recorded
    old = results.format_summary(_summary().drop(columns=["calibration_slope"]))
    assert old.loc["lab_rf", "calibration slope"] == "–" and old.loc["lab_rf", "Brier"] == "0.214"


def test_comparison_with_study_text():
    t = reported.comparison_with_study(_summary(), synthetic=True, bound={"lab": 0.7349}, bound_keys={"lab_rf": "lab"})
    assert t.index.tolist() == ["lab_rf"]  # only models that ran
    assert t.loc["lab_rf"].to_dict() == {
        "inputs": "labs", "AUROC": "0.68 ± 0.02", "AUPRC, short PFS positive": "0.50 ± 0.01",
        "AUPRC, long PFS positive (as the study's)": "0.81 ± 0.01", "achievable AUROC": "0.73",
        "comparable with the study": "not comparable: synthetic data"}
    real = reported.comparison_with_study(_summary(), synthetic=False)
    assert "achievable AUROC" not in real.columns
    assert real.loc["lab_rf", "comparable with the study"] == "same protocol, another cohort"


def test_pairwise_table_matches_compare_models():
    rng = np.random.default_rng(0)
    y = pd.Series(np.r_[np.ones(12), np.zeros(18)], index=[f"P{i:03d}" for i in range(30)])
    from prrt.evaluation import splits as sp

    s = sp.make_splits(y, 3, 2, 1)
    preds = {}
    for name, signal in (("c", 0.0), ("a", 2.0), ("b", 0.5)):  # the reference first: the others still follow
        p = s.copy()
        p["label"] = y.loc[p["patient"]].to_numpy()
        p["probability"] = 1 / (1 + np.exp(-(signal * (p["label"] - 0.5) + rng.normal(0, 1, len(p)))))
        preds[name] = p[metrics.PRED_COLUMNS]
    t = comparison.pairwise_table(preds, s, reference="c")
    assert t.index.tolist() == ["a", "b"]
    for name in ("a", "b"):
        c = comparison.compare_models(preds[name], preds["c"], s)
        assert t.loc[name, "versus"] == "c"
        assert t.loc[name, "AUROC difference (mean over folds)"] == f"{c['auroc_difference']:+.3f}"
        assert t.loc[name, "p, corrected resampled t-test (quoted)"] == comparison.format_p(c["p_corrected_t"])
        assert t.loc[name, "p, DeLong"] == comparison.format_p(c["p_delong"])
    assert comparison.pairwise_table({"c": preds["c"]}, s, reference="c").empty


def test_format_p():
    assert comparison.format_p(0.0004) == "<0.001" and comparison.format_p(0.001) == "0.001" and comparison.format_p(0.01234) == "0.012"


def test_c_index_leaves_out_patients_with_a_missing_value():
    time = np.array([2.0, 5.0, 8.0, 12.0, 20.0, np.nan, 3.0, 4.0])
    event = np.array([1, 1, 0, 1, 0, 1, np.nan, 1])
    risk = np.array([0.9, 0.5, 0.7, 0.4, 0.1, 0.2, 0.3, np.nan])
    assert metrics.c_index(time, event, risk) == pytest.approx(7 / 8)  # the hand example of test_evaluate


def test_logrank_against_statsmodels_and_the_median_split():
    from statsmodels.duration.survfunc import survdiff

    rng = np.random.default_rng(2)
    time = rng.exponential(20, 40).round(1)
    event = (rng.random(40) < 0.7).astype(float)
    risk = rng.random(40) - time / 100  # related to time
    g = survival.risk_groups_logrank(time, event, risk)
    assert g["threshold"] == np.median(risk)
    np.testing.assert_array_equal(g["high"], risk > np.median(risk))
    stat, p = survdiff(time, event, g["high"].astype(int))
    assert g["statistic"] == pytest.approx(stat, rel=1e-9) and g["p"] == pytest.approx(p, rel=1e-9)
    # a given threshold; a patient exactly at it is in the low group
    h = survival.risk_groups_logrank(time, event, risk, threshold=float(risk[0]))
    assert h["threshold"] == risk[0] and not h["high"][0] and h["high"].sum() == (risk > risk[0]).sum()


def test_calibration_quantile_bins_by_hand():
    y = np.array([0, 0, 1, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    cal = calibration.calibration(y, p, n_bins=2)  # bins {0.1, 0.2, 0.3} and {0.6, 0.7, 0.8}
    np.testing.assert_allclose(cal["predicted"], [0.2, 0.7])
    np.testing.assert_allclose(cal["observed"], [1 / 3, 2 / 3])
    assert len(calibration.calibration(np.r_[y, y], np.r_[p, p], n_bins=3)) == 3


def test_calibration_has_five_quantile_bins_by_default():
    rng = np.random.default_rng(2)
    p = rng.random(100)
    y = (rng.random(100) < p).astype(int)
    c = calibration.calibration(y, p)
    order = np.argsort(p)
    quintiles = np.array_split(order, 5)  # quantile bins: 20 patients each
    np.testing.assert_allclose(c["predicted"], [p[q].mean() for q in quintiles])
    np.testing.assert_allclose(c["observed"], [y[q].mean() for q in quintiles])


def test_net_benefit_by_hand_at_several_thresholds():
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.8, 0.4, 0.6, 0.1, 0.15])
    nb = calibration.net_benefit(y, p, [0.2, 0.5, 0.7, 0.9])
    assert nb["threshold"].tolist() == [0.2, 0.5, 0.7, 0.9]
    # t = 0.2: treat p >= 0.2 -> TP 2, FP 1 (0.6): 2/5 - 1/5 * 0.25 = 0.35; t = 0.5: TP 1, FP 1 -> 0;
    # t = 0.7: TP 1, FP 0 -> 1/5; t = 0.9: nobody treated -> 0
    np.testing.assert_allclose(nb["model"], [0.35, 0.0, 0.2, 0.0], atol=1e-12)
    w = np.array([0.25, 1.0, 7 / 3, 9.0])
    np.testing.assert_allclose(nb["treat_all"], 0.4 - 0.6 * w, atol=1e-12)
    assert (nb["treat_none"] == 0).all()
    # a patient whose probability equals the threshold is treated (p >= t, as the docstring says)
    at = calibration.net_benefit(np.array([1, 0]), np.array([0.25, 0.1]), [0.25]).iloc[0]
    assert at["model"] == 0.5


def test_private_id_table(small_cohort_dir):
    from prrt.data.load import load_cohort

    c = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    t = c.private_id_table()
    assert list(t.columns) == ["patient", "patient_id"] and len(t) == c.n_patients
    assert dict(zip(t["patient_id"], t["patient"])) == c.pseudonym_of_id()
    assert set(t["patient"]) == set(c.data.index)


def test_predictions_with_numeric_looking_ids_keep_them_as_text(tmp_path):
    pred = _pred().assign(patient=["007", "012", "100", "003"])
    results.write_predictions(tmp_path, "m", pred)
    assert results.read_predictions(tmp_path, "m")["patient"].tolist() == ["007", "012", "100", "003"]


def test_results_files_go_into_new_nested_run_folders_and_can_be_rewritten(tmp_path):
    for _ in range(2):  # the second write replaces the first
        assert results.write_predictions(tmp_path / "a" / "new", "m", _pred()).is_file()
        s = results.update_summary(tmp_path / "b" / "new", [{"model": "m", "status": "ran", "auroc_mean": 0.5}])
    run = tmp_path / "b" / "new"
    assert s["model"].tolist() == ["m"] and s["auroc_mean"].dtype == float
    s = results.update_summary(run, [{"model": "n", "status": "ran", "auroc_mean": 0.6}])
    assert s.index.tolist() == [0, 1]  # the returned table is numbered afresh


def test_comparison_with_study_bound_column_needs_both_maps_and_marks_models_without_one():
    both = _summary().iloc[[0, 0]].assign(model=["lab_rf", "pet_cnn"])
    t = reported.comparison_with_study(both, synthetic=True, bound={"lab": 0.7349}, bound_keys={"lab_rf": "lab"})
    assert t["achievable AUROC"].tolist() == ["0.73", "–"]
    no_keys = reported.comparison_with_study(_summary(), synthetic=True, bound={"lab": 0.7349})
    assert "achievable AUROC" not in no_keys.columns
