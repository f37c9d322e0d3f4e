"""The calls the chapters' notebooks make into prrt.study: each step of a page (a table, a file in the run folder,
the data of a figure) on a few made-up patients."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from prrt.data import Cohort
from prrt.evaluation import calibration_bins, net_benefit, per_repeat_metrics
from prrt.evaluation.results import SUMMARY_COLUMNS
from prrt.explain import Saliency
from prrt.learn import (
    ModelData,
    ModelSpec,
    config_from_profile,
    count_weights,
    make_model,
    table_spec,
)
from prrt.profiles import get_profile
from prrt.study import (
    ch01_cohort,
    ch02_labs,
    ch03_images,
    ch04_comparison,
    ch04_fusion,
    ch05_explain,
    ch05_words,
    ch06_external,
    ch07_reporting,
    figures,
    notebook,
)
from prrt.study.names import HEADLINE, LATE_FUSION, SEVEN
from prrt.study.reported import STUDY_REPORTED, comparison_tables

ROOT = Path(__file__).resolve().parents[2]

PATIENTS = [f"P{i:02d}" for i in range(12)]
#: short PFS for the first six patients
LABELS = pd.Series([1.0] * 6 + [0.0] * 6, index=PATIENTS)


def make_cohort(tmp_path: Path, n_censored: int = 0, synthetic: bool = False, survival: bool = True,
                modalities=(), report: dict | None = None) -> Cohort:
    """A cohort of 12 labelled patients (+ ``n_censored`` censored before the horizon), two laboratory values."""
    rng = np.random.default_rng(0)
    ids = PATIENTS + [f"C{i}" for i in range(n_censored)]
    label = list(LABELS) + [np.nan] * n_censored
    data = pd.DataFrame({"label": label,
                         "pfs_months": [6.0 + i for i in range(6)] + [20.0 + i for i in range(6)] + [3.0] * n_censored,
                         "event": [1] * 6 + [0] * 6 + [0] * n_censored,
                         "cga": rng.lognormal(3, 1, len(ids)), "ggt": rng.normal(50, 10, len(ids))},
                        index=pd.Index(ids, name="patient"))
    if not survival:
        data[["pfs_months", "event"]] = np.nan
    for m in modalities:
        data[f"{m}_path"] = str(tmp_path / f"{m}.nii.gz")
    (tmp_path / "cohort.csv").write_text("made up")
    if report is not None:
        (tmp_path / "synthetic_report.json").write_text(json.dumps(report))
    return Cohort(name="made-up", synthetic=synthetic, description="", manifest_path=tmp_path / "manifest.yaml",
                  data=data, labs=["cga", "ggt"], clinical=[], categorical=[], units={},
                  horizon_months=12.0 if survival else None, modalities=list(modalities),
                  input_files=[tmp_path / "manifest.yaml", tmp_path / "cohort.csv"])


def make_splits(patients=PATIENTS, n_repeats: int = 2, n_folds: int = 3) -> pd.DataFrame:
    """Each repeat puts the patients into ``n_folds`` folds of both groups (patient i of each group in fold i % k)."""
    rows = []
    for r in range(n_repeats):
        for i, p in enumerate(patients):
            rows.append((p, r, (i % 6 + r) % n_folds))
    return pd.DataFrame(rows, columns=["patient", "repeat", "fold"])


def make_predictions(scores: dict[str, float], splits: pd.DataFrame, noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Out-of-fold predictions: each patient's score (plus noise per repeat), label from :data:`LABELS`."""
    rng = np.random.default_rng(seed)
    d = splits.copy()
    d["probability"] = [float(np.clip(scores[p] + noise * rng.normal(), 0.01, 0.99)) for p in d["patient"]]
    d["label"] = LABELS.reindex(d["patient"]).to_numpy()
    return d


def ranking_scores(strength: float = 0.3) -> dict[str, float]:
    """Scores that rank short-PFS patients higher on average (``strength`` apart), with overlap."""
    return {p: 0.5 + (strength if LABELS[p] == 1 else -strength) * (1 - 0.15 * (i % 6)) for i, p in enumerate(PATIENTS)}


def make_ctx(tmp_path: Path, cohort: Cohort, splits: pd.DataFrame | None = None) -> notebook.Context:
    ctx = notebook.Context(cohort, get_profile("smoke"), 7, tmp_path / "run", tmp_path / "cache")
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    if splits is not None:
        ctx.__dict__["splits"] = splits  # the cached property, as if the run had made it
    return ctx


def summary_of(models: dict[str, str], status: dict[str, str] | None = None) -> pd.DataFrame:
    """Summary rows (every column of summary.csv) of ``{model: chapter}``; ``status``: those not ``ran``."""
    rows = []
    for i, (m, chapter) in enumerate(models.items()):
        row = dict.fromkeys(SUMMARY_COLUMNS, 0.1 + 0.01 * i)
        row.update(model=m, chapter=chapter, inputs=f"inputs of {m}", status=(status or {}).get(m, "ran"),
                   n_repeats=2)
        rows.append(row)
    return pd.DataFrame(rows)


class Result(SimpleNamespace):
    """Stands for a CVResult: predictions and what the fold models left."""


# ---- prrt.study.notebook ---------------------------------------------------------------------------------
def test_the_context_makes_the_splits_once_and_reads_them_back(tmp_path):
    cohort = make_cohort(tmp_path, n_censored=2)
    ctx = make_ctx(tmp_path, cohort)
    splits = ctx.splits
    assert (ctx.run_dir / "splits.csv").is_file()
    assert set(splits["patient"]) == set(PATIENTS)  # the censored patients are in no fold
    assert len(splits) == len(PATIENTS) * ctx.profile.n_repeats
    again = make_ctx(tmp_path, cohort).splits  # a later chapter reads the same file
    pd.testing.assert_frame_equal(again.reset_index(drop=True), splits.reset_index(drop=True), check_dtype=False)


def test_fit_models_runs_the_specs_and_records_them_in_the_summary(tmp_path):
    cohort = make_cohort(tmp_path)
    ctx = make_ctx(tmp_path, cohort, make_splits(n_repeats=1))
    specs = [table_spec("lab_logreg", "02", "labs", ["cga", "ggt"], lambda s: make_model("logreg", s, ctx.profile)),
             ModelSpec("pet_features_rf", "02", "PET", None, reason="no PET")]
    data = ModelData(cohort.data["label"], table=cohort.data[["cga", "ggt"]])
    results, summary = notebook.fit_models(ctx, specs, data)
    assert list(results) == ["lab_logreg"]
    assert set(results["lab_logreg"].predictions["patient"]) == set(PATIENTS)
    assert (ctx.run_dir / "predictions" / "lab_logreg.csv").is_file()
    assert summary.set_index("model")["status"].to_dict() == {"lab_logreg": "ran", "pet_features_rf": "skipped: no PET"}
    read = notebook.read_summary(ctx)
    pd.testing.assert_frame_equal(read[["model", "status", "auroc_mean"]], summary[["model", "status", "auroc_mean"]])
    assert notebook.models_that_ran(summary) == {"lab_logreg"}


def test_prevalence_is_the_share_of_short_pfs_among_the_labelled(tmp_path):
    assert notebook.prevalence(make_cohort(tmp_path, n_censored=3)) == 0.5


def test_decision_thresholds_go_from_5_to_80_percent():
    assert notebook.DECISION_THRESHOLDS[0] == 0.05 and notebook.DECISION_THRESHOLDS[-1] == 0.8
    assert len(notebook.DECISION_THRESHOLDS) == 16


def test_median_risk_groups_split_the_predicted_patients_at_the_median_mean_risk(tmp_path):
    from lifelines.statistics import logrank_test

    cohort = make_cohort(tmp_path, n_censored=2)
    splits = make_splits()
    pred = make_predictions(ranking_scores(), splits, noise=0.05)
    extra = pd.DataFrame({"patient": ["C0", "C0", "C1", "C1"], "repeat": [0, 1, 0, 1], "fold": [0, 0, 1, 1],
                          "probability": [0.9, 0.8, 0.1, 0.2], "label": np.nan})
    groups = notebook.median_risk_groups(cohort, "lab_rf", pd.concat([pred, extra], ignore_index=True))
    mean = pd.concat([pred, extra]).groupby("patient")["probability"].mean()
    assert groups.model == "lab_rf"
    assert list(groups.time.index) == list(mean.index)  # the censored patients are predicted too
    assert groups.high.tolist() == (mean > mean.median()).tolist()
    t, e = groups.time.to_numpy(), groups.event.to_numpy()
    assert groups.p_value == pytest.approx(logrank_test(t[groups.high], t[~groups.high], e[groups.high],
                                                        e[~groups.high]).p_value)


# ---- prrt.study.reported ---------------------------------------------------------------------------------
def test_comparison_tables_give_the_achievable_auroc_of_a_synthetic_cohort_and_the_study_numbers(tmp_path):
    report = {"achievable_auroc": {"lab": 0.71, "lab_pet_ct": 0.83}}
    summary = summary_of({"lab_rf": "02", "lab_logreg": "02", "pet_features_rf": "02"},
                         status={"pet_features_rf": "skipped: no PET"})
    ours, theirs = comparison_tables(make_cohort(tmp_path, synthetic=True, report=report), summary,
                                     {"lab_rf": "lab", "lab_logreg": None})
    assert list(ours.index) == ["lab_rf", "lab_logreg"]  # a skipped model has no row
    assert ours["achievable AUROC"].tolist() == ["0.71", "–"]
    pd.testing.assert_frame_equal(theirs, STUDY_REPORTED.set_index("study model"))
    (tmp_path / "real").mkdir()
    real, _ = comparison_tables(make_cohort(tmp_path / "real", synthetic=False), summary, {"lab_rf": "lab"})
    assert "achievable AUROC" not in real.columns
    assert set(real["comparable with the study"]) == {"same protocol, another cohort"}


# ---- chapter 01 ------------------------------------------------------------------------------------------
def test_table1_of_the_run_is_written_and_shown(tmp_path):
    cohort = make_cohort(tmp_path, n_censored=2)
    ctx = make_ctx(tmp_path, cohort)
    table = ch01_cohort.table1_of_run(ctx)
    assert set(table["variable"]) == {"cga", "ggt"}
    written = pd.read_csv(ctx.run_dir / "cohort" / "table1.csv", keep_default_na=False)
    assert written["variable"].tolist() == table["variable"].tolist()
    assert list(ch01_cohort.table1_view(table).index) == table["variable"].tolist()
    shown = ch01_cohort.exclusion_table(cohort).data
    assert shown["patients"].tolist() == [14, 2, 6, 6]


def test_significance_lines_name_the_variables_below_005_before_and_after_holm():
    table = pd.DataFrame({"variable": ["cga", "ggt", "age", "sex"], "test": ["U", "U", "U", ""],
                          "p": [0.001, 0.03, 0.5, np.nan], "p_holm": [0.003, 0.06, 0.5, np.nan]})
    assert ch01_cohort.significance_lines(table) == ["Variables with p < 0.05: cga, ggt",
                                                     "... and still below 0.05 after Holm's adjustment: cga"]
    table["p"], table["p_holm"] = 0.5, 0.5
    assert ch01_cohort.significance_lines(table) == ["Variables with p < 0.05: none",
                                                     "... and still below 0.05 after Holm's adjustment: none"]
    assert ch01_cohort.significance_lines(table.assign(test="")) == []


def test_pfs_lines_give_the_kaplan_meier_median_and_the_rate_at_the_horizon(tmp_path):
    cohort = make_cohort(tmp_path)
    cohort.data["pfs_months"] = [float(m) for m in range(1, 13)]
    cohort.data["event"] = 1
    cohort.horizon_months = 6.0
    median, rate = ch01_cohort.pfs_lines(cohort)
    assert median.startswith("Median PFS: 6.0 months (95 % CI ")
    assert rate.startswith("PFS at 6 months: 50 % (95 % CI ")


# ---- chapter 02 ------------------------------------------------------------------------------------------
def test_the_protocol_table_has_one_column_per_repeat_and_fold(tmp_path):
    ctx = make_ctx(tmp_path, make_cohort(tmp_path), make_splits())
    table = ch02_labs.protocol_table(ctx)
    assert table.shape[1] == 6
    assert table.loc["test patients"].sum() == 24 and table.loc["short PFS"].sum() == 12


def test_no_pet_features_without_pet_and_the_lesion_sources_in_words(tmp_path):
    assert ch02_labs.pet_features_of_run(make_ctx(tmp_path, make_cohort(tmp_path))) is None
    pet = pd.DataFrame({"segmentation": ["mask", "mask", "threshold", "mask"]})
    assert ch02_labs.lesion_sources(pet) == "mask (3 patients), threshold (1 patients)"


def test_the_lab_chapter_fits_its_models_and_shows_its_own_rows(tmp_path):
    cohort = make_cohort(tmp_path)
    ctx = make_ctx(tmp_path, cohort, make_splits(n_repeats=1))
    notebook.fit_models(ctx, [ModelSpec("pet_cnn", "03", "PET", None, reason="no PET")], None)  # a later chapter's row
    results, summary = ch02_labs.fit_chapter_models(ctx, pet=None)
    assert set(results) == {"lab_rf", "lab_logreg"}  # no PET features, no PRRT cycles
    assert set(summary["model"]) >= {"pet_cnn", "lab_rf", "pet_features_rf"}
    assert set(ch02_labs.summary_table(summary).index) == {
        s.name for s in ch02_labs.lab_chapter_specs(cohort, None, ctx.profile)}
    ours, _ = ch02_labs.comparison_with_study(ctx, summary, None)
    assert list(ours.index) == ["lab_rf", "lab_logreg"]


def test_odds_ratios_are_written_with_their_holm_adjustment(tmp_path):
    ctx = make_ctx(tmp_path, make_cohort(tmp_path))
    odds = ch02_labs.odds_ratios(ctx)
    assert list(odds.index) == ["cga", "ggt"]
    p = odds["p"].sort_values()
    holm = np.minimum(1, np.maximum.accumulate(p * [2, 1]))
    assert odds["p (Holm)"].loc[p.index].to_numpy() == pytest.approx(holm.to_numpy())
    written = pd.read_csv(ctx.run_dir / "results" / "02_odds_ratios.csv", index_col=0)
    assert written["p (Holm)"].to_numpy() == pytest.approx(odds["p (Holm)"].to_numpy())


def test_the_main_models_leave_out_the_sensitivity_analysis():
    results = {n: Result(predictions=n) for n in ["lab_rf", "lab_rf_with_cycles", "lab_logreg"]}
    assert ch02_labs.main_predictions(results) == {"lab_rf": "lab_rf", "lab_logreg": "lab_logreg"}


def test_importances_are_summarised_and_the_permutation_written_for_chapter_05(tmp_path):
    ctx = make_ctx(tmp_path, make_cohort(tmp_path))
    perm = pd.DataFrame({"repeat": [0, 0, 1, 1], "fold": [0, 0, 0, 0], "feature": ["cga", "ggt"] * 2,
                         "importance": [0.2, 0.0, 0.1, 0.02]})
    results = {"lab_rf": Result(permutation=perm, impurity=perm.assign(importance=[0.6, 0.4, 0.5, 0.5]),
                                features=["cga", "ggt", "alt"]),
               "lab_logreg": Result(permutation=perm, impurity=perm, features=[])}
    out = ch02_labs.importances(ctx, results)
    assert list(out) == ["lab_rf"]  # the other importance model did not run; lab_logreg shows none
    imp = out["lab_rf"]
    assert imp.n_features == 3
    assert imp.permutation.loc["cga", "mean"] == pytest.approx(0.15)
    assert imp.impurity.loc["ggt", "mean"] == pytest.approx(0.45)
    pd.testing.assert_frame_equal(pd.read_csv(ctx.run_dir / "results" / "02_permutation_lab_rf.csv"), perm)
    fig = figures.importance_pair("lab_rf", imp.permutation, imp.impurity, imp.n_features)
    assert [a.get_title() for a in fig.axes] == ["lab_rf: permutation importance (held-out folds)",
                                                 "lab_rf: impurity importance (training data)"]
    assert fig.get_size_inches()[1] == pytest.approx(0.32 * 3 + 1.5)


def test_paired_comparisons_need_the_reference_and_a_second_model():
    splits = make_splits()
    pred = {n: make_predictions(ranking_scores(s), splits, noise=0.1, seed=i)
            for i, (n, s) in enumerate({"lab_rf": 0.2, "lab_rf_with_cycles": 0.3, "lab_logreg": 0.1}.items())}
    results = {n: Result(predictions=p) for n, p in pred.items()}
    sensitivity = ch02_labs.cycles_sensitivity(results, splits)
    assert list(sensitivity.index) == ["lab_rf_with_cycles"] and set(sensitivity["versus"]) == {"lab_rf"}
    paired = ch02_labs.paired_comparisons(results, splits)
    assert list(paired.index) == ["lab_logreg"]  # the sensitivity model is no main model
    assert ch02_labs.cycles_sensitivity({"lab_rf": results["lab_rf"]}, splits) is None
    assert ch02_labs.paired_comparisons({"lab_rf": results["lab_rf"]}, splits) is None
    assert ch02_labs.paired_comparisons({"lab_logreg": results["lab_logreg"], "x": results["lab_rf"]}, splits) is None


def test_the_risk_groups_of_chapter_02_come_from_the_richest_baseline_model(tmp_path):
    cohort = make_cohort(tmp_path)
    pred = make_predictions(ranking_scores(), make_splits())
    results = {n: Result(predictions=pred) for n in ["lab_rf", "lab_pet_features_rf", "lab_rf_with_cycles"]}
    assert ch02_labs.risk_groups(cohort, results).model == "lab_pet_features_rf"
    assert ch02_labs.risk_groups(cohort, {"lab_rf_with_cycles": results["lab_rf"]}) is None
    assert ch02_labs.risk_groups(make_cohort(tmp_path, survival=False), results) is None


def test_calibration_curves_pool_every_repeats_predictions_of_the_labelled_patients(tmp_path):
    cohort = make_cohort(tmp_path, n_censored=1)
    splits = make_splits()
    pred = make_predictions(ranking_scores(), splits, noise=0.1)
    unlabelled = pd.DataFrame({"patient": ["C0"], "repeat": [0], "fold": [0], "probability": [0.99], "label": [np.nan]})
    curves, decision = ch02_labs.calibration_curves(cohort, {"lab_rf": pd.concat([pred, unlabelled])})
    y, p = pred["label"].astype(int), pred["probability"]  # every repeat's row, not the mean over repeats
    assert len(p) == 2 * len(LABELS)
    pd.testing.assert_frame_equal(curves["lab_rf"], calibration_bins(y, p))
    pd.testing.assert_frame_equal(decision["lab_rf"], net_benefit(y, p, notebook.DECISION_THRESHOLDS))
    t = 0.5
    tp, fp = int(((p >= t) & (y == 1)).sum()), int(((p >= t) & (y == 0)).sum())
    row = decision["lab_rf"].set_index("threshold").loc[t]
    assert row["model"] == pytest.approx(tp / len(p) - fp / len(p) * t / (1 - t))
    # averaging over the repeats first would draw another curve
    mean = pred.groupby("patient")["probability"].mean().loc[LABELS.index]
    assert not curves["lab_rf"].equals(calibration_bins(LABELS, mean))


# ---- chapter 03 ------------------------------------------------------------------------------------------
def test_training_patients_per_fold(tmp_path):
    ctx = make_ctx(tmp_path, make_cohort(tmp_path), make_splits())
    assert ch03_images.training_patients_per_fold(ctx) == 8


def test_input_grid_tables_say_which_grid_is_the_profiles(monkeypatch):
    monkeypatch.setattr(ch03_images, "input_boxes", lambda arrays: sorted(arrays))
    monkeypatch.setattr(ch03_images, "box_summary", lambda boxes: f"summary of {boxes}")
    tables = ch03_images.input_grid_tables({"lesions": {"P01": 1}, "body": {"P02": 2}}, SimpleNamespace(roi="lesions"))
    assert tables == {"Input grids, roi = 'lesions' (this profile's)": "summary of ['P01']",
                      "Input grids, roi = 'body' (for comparison)": "summary of ['P02']"}


def test_example_inputs_show_one_patient_of_each_group(tmp_path):
    cohort = make_cohort(tmp_path, modalities=["pet"])
    ctx = make_ctx(tmp_path, cohort)
    inputs = {ctx.profile.roi: {p: f"arrays of {p}" for p in PATIENTS}}
    arrays, titles = ch03_images.example_inputs(ctx, inputs)
    assert list(arrays) == list(titles) and len(arrays) == 2
    assert {LABELS[p] for p in arrays} == {0.0, 1.0}
    assert all(arrays[p] == f"arrays of {p}" for p in arrays)
    assert sorted(t.split(" · ")[1] for t in titles.values()) == ["long PFS", "short PFS"]


def test_the_training_setup_of_a_profile():
    profile = get_profile("smoke")
    setup = ch03_images.training_setup(profile)
    assert str(setup.device) == "cpu"
    assert setup.settings.index.name == "training setting" and "epochs" in setup.settings.index
    assert setup.weights == count_weights(config_from_profile(profile), in_channels=2 if profile.mask_channel else 1)


def test_the_networks_are_compared_with_the_lab_model_when_it_ran(tmp_path):
    ctx = make_ctx(tmp_path, make_cohort(tmp_path), make_splits())
    pred = make_predictions(ranking_scores(), ctx.splits)
    (ctx.run_dir / "predictions").mkdir()
    pred.to_csv(ctx.run_dir / "predictions" / "lab_rf.csv", index=False)
    results = {"pet_cnn": Result(predictions=pred, curves="pet curves"),
               "ct_cnn": Result(predictions=pred, curves="ct")}
    assert ch03_images.learning_curves(results) == {"pet_cnn": "pet curves", "ct_cnn": "ct"}
    summary = summary_of({"lab_rf": "02", "lab_logreg": "02", "pet_cnn": "03", "ct_cnn": "03"})
    compare = ch03_images.with_lab_model(ctx, results, summary)
    assert list(compare) == ["pet_cnn", "ct_cnn", "lab_rf"]
    assert set(compare["lab_rf"]["patient"]) == set(PATIENTS)
    assert list(ch03_images.paired_comparison(compare, ctx.splits).index) == ["pet_cnn", "ct_cnn"]
    skipped = summary.assign(status=lambda d: np.where(d["model"] == "lab_rf", "skipped: no labs", "ran"))
    assert list(ch03_images.with_lab_model(ctx, results, skipped)) == ["pet_cnn", "ct_cnn"]
    assert ch03_images.paired_comparison({"pet_cnn": pred}, ctx.splits) is None
    assert list(ch03_images.summary_table(summary).index) == ["lab_rf", "pet_cnn", "ct_cnn"]
    ours, _ = ch03_images.comparison_with_study(ctx, summary)
    assert list(ours.index) == ["lab_rf", "pet_cnn", "ct_cnn"]


def test_the_inputs_in_words_say_what_the_second_channel_shows():
    from dataclasses import replace

    demo = get_profile("demo")
    assert ch03_images.input_description(demo, "CT, 3D CNN") == "CT + lesion mask and liver (liver-centred), 3D CNN"
    lesions_only = replace(demo, liver_in_mask_channel=False)
    assert ch03_images.input_description(lesions_only, "CT, 3D CNN") == "CT + lesion mask (liver-centred), 3D CNN"
    assert ch03_images.input_description(replace(demo, mask_channel=False), "CT, 3D CNN") == "CT (liver-centred), 3D CNN"
    assert notebook.network_input_text(demo).endswith("centred on the liver, lesion mask and liver as a second channel")
    assert notebook.network_input_text(lesions_only).endswith(", lesion mask as a second channel")


def test_the_numbers_of_chapter_03s_prose_come_from_the_profile_and_the_study_table():
    from dataclasses import replace

    numbers = ch03_images.page_numbers(get_profile("demo"))
    assert numbers == {"study_pet_cnn_auroc": "0.42 ± 0.03", "study_ct_cnn_auroc": "0.54 ± 0.01",
                       "input_grid": "24 × 24 × 24 voxels of 8 mm (192 × 192 × 192 mm)", "suv_range": "SUV 0–30 as log(1 + SUV)",
                       "hu_window": "−50 to 250", "study_fusion_auroc": "0.72", "study_fusion_auprc": "0.80",
                       "study_short_share": "0.36", "study_long_share": "0.64", "binormal_auprc_short": "0.59",
                       "binormal_auprc_long": "0.81"}
    assert ch03_images.page_numbers(replace(get_profile("demo"), suv_scale="linear"))["suv_range"] == "SUV 0–30"


def test_texts_are_glued_as_markdown_under_their_keys_and_show_nothing(monkeypatch):
    import myst_nb
    from IPython.display import Markdown

    glued = []
    monkeypatch.setattr(myst_nb, "glue", lambda key, value, display=True: glued.append((key, value, display)))
    notebook.glue_texts({"a": "0.59 ± 0.02", "b": "**word**"})
    assert [(k, type(v), v.data, d) for k, v, d in glued] == [("a", Markdown, "0.59 ± 0.02", False),
                                                              ("b", Markdown, "**word**", False)]


def test_the_study_figures_that_chapters_02_and_04_quote_come_from_the_study_table():
    from prrt.study import reported

    numbers = reported.study_numbers()
    assert {k: numbers[k] for k in ("study_lab_rf", "study_fusion_auroc_sd", "study_fusion_auprc_sd")} == {
        "study_lab_rf": "0.59 ± 0.02", "study_fusion_auroc_sd": "0.72 ± 0.01", "study_fusion_auprc_sd": "0.80 ± 0.01"}
    assert numbers["binormal_auprc_short"] == "0.59" and numbers["study_fusion_auprc"] == "0.80"
    # every key a chapter's prose quotes is glued in that chapter
    for name in ("02_lab_random_forest", "04_fusion"):
        cells = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"]
        prose = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        quoted = set(re.findall(r"\{glue:md\}`(study_[a-z_]+|binormal_[a-z_]+)`", prose))
        assert quoted and "reported.study_numbers()" in code and quoted <= set(numbers), name


def test_learning_curves_have_a_validation_panel_only_when_there_is_a_validation_part():
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.0, "val_auroc": 0.6, "repeat": 0, "fold": f,
             "best": e == 3} for e in (1, 2, 3) for f in (0, 1)]
    with_val = pd.DataFrame(rows)
    assert len(figures.learning_curves({"pet_cnn": with_val}).axes) == 2
    without = with_val.assign(val_loss=np.nan, val_auroc=np.nan)
    fig = figures.learning_curves({"pet_cnn": without, "ct_cnn": without})
    assert len(fig.axes) == 1 and "no inner validation part" in fig.axes[0].get_title()
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["pet_cnn: train loss", "ct_cnn: train loss"]


def test_the_reading_of_the_networks_gives_the_gap_to_their_bound_and_the_lesion_feature_model(tmp_path):
    summary = summary_of({"lab_rf": "02", "pet_features_rf": "02", "pet_features_logreg": "02", "pet_cnn": "03",
                          "ct_cnn": "03"})
    summary["auroc_mean"] = [0.64, 0.68, 0.70, 0.66, 0.74]
    summary["auroc_ci_low"] = [0.55, 0.59, 0.61, 0.57, 0.65]
    summary["auroc_ci_high"] = [0.73, 0.77, 0.79, 0.75, 0.83]
    report = {"achievable_auroc": {"pet": 0.88, "ct": 0.86, "pet_features": 0.79},
              "achievable_auroc_interval": {"pet": [0.81, 0.94], "ct": [0.78, 0.92]}}
    ctx = make_ctx(tmp_path, make_cohort(tmp_path, synthetic=True, report=report))
    text = ch03_images.reading_of_the_networks(ctx, summary)
    assert "SR-PET, 3D CNN reached a mean AUROC of 0.66 (0.57–0.75), 0.22 below the 0.88" in text
    assert "its interval lies below the bound's (0.81–0.94)" in text
    assert "CT, 3D CNN reached a mean AUROC of 0.74 (0.65–0.83), 0.12 below the 0.86" in text
    assert "the two intervals overlap (the bound's: 0.78–0.92)" in text
    assert "best single statistic" not in text  # no input-signal table yet
    pd.DataFrame({"modality": ["pet", "pet", "ct", "pet"], "input": [ctx.profile.roi, ctx.profile.roi, ctx.profile.roi,
                                                                       "elsewhere"],
                  "statistic": ["dark liver voxels", "lesion voxels", "dark liver voxels", "lesion voxels"],
                  "auroc_either_direction": [0.76, 0.64, 0.74, 0.9]}).to_csv(ctx.path("results", "03_input_signal.csv"),
                                                                             index=False)
    text = ch03_images.reading_of_the_networks(ctx, summary)
    assert "0.22 below the 0.88 that a perfect reader of its images would reach; its interval lies below the " \
           "bound's (0.81–0.94); it is 0.10 below the best single statistic of its input (dark liver voxels, 0.76, " \
           "read on all patients in its better direction)." in text
    assert "it is level with the best single statistic of its input (dark liver voxels, 0.74)." in text
    # the better of the two lesion-feature models (here the logistic regression) is the one compared with
    assert "SR-PET lesion features, the logistic regression, reached 0.70 (0.61–0.79; the Random Forest 0.68), " \
           "with an achievable AUROC of 0.79 for those features; the SR-PET, 3D CNN is 0.04 below it and the CT, " \
           "3D CNN is 0.04 above it" in text
    # a real cohort has no bound; no network, no words
    (tmp_path / "real").mkdir()
    real = make_ctx(tmp_path / "real", make_cohort(tmp_path / "real"))
    text = ch03_images.reading_of_the_networks(real, summary.assign(auroc_mean=[0.64, 0.60, 0.66, 0.66, 0.74]))
    assert "allow" not in text and "achievable" not in text and "perfect reader" not in text
    assert "the SR-PET, 3D CNN is level with it" in text
    assert ch03_images.reading_of_the_networks(real, summary[summary["chapter"] == "02"]) == ""


# ---- chapter 04 ------------------------------------------------------------------------------------------
def test_the_pretraining_in_words():
    assert ch04_fusion.pretraining_text("") == "no pretraining (none is configured)"
    assert ch04_fusion.pretraining_text("weights from a.pt") == "weights from a.pt"
    card = {"epochs": 3, "seconds": 12, "input_size_voxels": [16, 16, 16], "in_channels": 1}
    assert ch04_fusion.pretraining_line("pretrained on 8 CTs", card) == (
        "pretrained on 8 CTs: 3 epochs, 12 s; inputs [16, 16, 16] voxels, 1 channels")


def test_the_seven_models_in_the_studys_order_and_the_mechanisms():
    models = {"lab_pet_ct_late": "04", HEADLINE: "04", "ct_cnn_pretrained": "04", "pet_cnn": "03", "lab_rf": "02",
              "lab_logreg": "02", "lab_pet_ct_intermediate": "04", "lab_ct_fusion": "04"}
    summary = summary_of(models)
    seven = ch04_fusion.seven_models(summary)
    assert seven["model"].tolist() == ["lab_rf", "pet_cnn", "lab_ct_fusion", HEADLINE, "ct_cnn_pretrained"]
    assert seven["model"].tolist()[:4] == [m for m in SEVEN if m in models]
    assert list(ch04_fusion.seven_models_table(summary).index) == seven["model"].tolist()
    assert set(ch04_fusion.mechanisms_table(summary).index) == {HEADLINE, "lab_pet_ct_intermediate", LATE_FUSION}
    assert set(ch04_fusion.summary_table(summary).index) == {m for m, c in models.items() if c == "04"}


def test_paired_tests_are_written_only_when_there_are_some(tmp_path):
    ctx = make_ctx(tmp_path, make_cohort(tmp_path), make_splits())
    summary = summary_of({"lab_rf": "02"})
    assert ch04_comparison.paired_tests(ctx, summary).empty
    assert not (ctx.run_dir / "results" / "04_paired_tests.csv").exists()
    (ctx.run_dir / "predictions").mkdir()
    for i, m in enumerate([HEADLINE, "lab_rf"]):
        make_predictions(ranking_scores(0.1 + 0.1 * i), ctx.splits, 0.1, i).to_csv(
            ctx.run_dir / "predictions" / f"{m}.csv", index=False)
    tests = ch04_comparison.paired_tests(ctx, summary_of({"lab_rf": "02", HEADLINE: "04"}))
    assert tests["model"].tolist() == [HEADLINE] and tests["versus"].tolist() == ["lab_rf"]
    written = pd.read_csv(ctx.run_dir / "results" / "04_paired_tests.csv", index_col=0)
    assert written.index.tolist() == tests.index.tolist()


class FoldFusion:
    """A fold model of a neural fusion: equal weights of two modalities for its test patients."""

    def modality_weights(self, data, patients):
        return pd.DataFrame({"labs": 0.25, "pet": 0.75}, index=pd.Index(patients, name="patient"))


class FoldStack:
    def __init__(self, w):
        self.w = w

    def stacking_weights(self):
        return pd.Series({"lab_rf": self.w, "pet_cnn": 1 - self.w})


def test_fusion_weights_come_from_the_headline_fusions_fold_models(tmp_path):
    ctx = make_ctx(tmp_path, make_cohort(tmp_path))
    splits = make_splits(n_repeats=1)
    fused = Result(predictions=make_predictions(ranking_scores(), splits),
                   models={(0, f): FoldFusion() for f in range(3)})
    model, weights = ch04_fusion.fusion_weights(ctx, {"lab_pet_ct_adaptive": fused}, data=None)
    assert model == "lab_pet_ct_adaptive"
    assert sorted(weights.index) == PATIENTS and (weights["pet"] == 0.75).all()
    assert (ctx.run_dir / "results" / "04_modality_weights.csv").is_file()
    assert ch04_fusion.fusion_weights(ctx, {"lab_rf": fused}, data=None) is None
    assert ch04_fusion.fusion_weights(ctx, {HEADLINE: Result(predictions=fused.predictions, models={})}, None) is None


def test_the_stacking_summary_has_the_mean_and_sd_over_folds():
    late = Result(models={(0, 0): FoldStack(0.2), (0, 1): FoldStack(0.4)})
    table = ch04_fusion.stacking_summary({LATE_FUSION: late})
    assert table.loc["mean", "lab_rf"] == pytest.approx(0.3) and table.loc["std", "lab_rf"] == pytest.approx(0.14)
    assert ch04_fusion.stacking_summary({}) is None


def test_the_fusions_risk_groups(tmp_path):
    results = {HEADLINE: Result(predictions=make_predictions(ranking_scores(), make_splits()))}
    assert ch04_fusion.risk_groups(make_cohort(tmp_path), results).model == HEADLINE
    assert ch04_fusion.risk_groups(make_cohort(tmp_path), {}) is None
    assert ch04_fusion.risk_groups(make_cohort(tmp_path, survival=False), results) is None


# ---- chapter 05 ------------------------------------------------------------------------------------------
def saliency_metrics() -> pd.DataFrame:
    rows = []
    for i, p in enumerate(PATIENTS):
        rows.append({"model": "pet_cnn", "repeat": 0, "fold": 0, "patient": p, "label": LABELS[p],
                     "mass_in_mask": 0.3 if LABELS[p] else 0.1, "chance": 0.05, "pointing_hit": float(i % 2)})
    return pd.DataFrame(rows)


def test_the_saliency_tables_and_words(tmp_path):
    assert ch05_explain.saliency_of_run(make_ctx(tmp_path, make_cohort(tmp_path)), [], data=None) is None
    assert ch05_explain.gradcam_layers_text(None) == "no image model ran"
    assert ch05_explain.saliency_summary(None).empty
    saliency = Saliency(saliency_metrics(), {}, {"pet_cnn": "encoder.body.6", "ct_cnn": "encoder.body.4"}, {})
    assert ch05_explain.gradcam_layers_text(saliency) == "`pet_cnn`: `encoder.body.6`, `ct_cnn`: `encoder.body.4`"
    summary = ch05_explain.saliency_summary(saliency)
    assert summary["mass in mask"].tolist() == pytest.approx([0.2])
    by_outcome = ch05_explain.saliency_by_outcome(saliency)
    assert list(by_outcome.columns) == ["maps checked", "mass in mask", "chance", "pointing hits"]
    assert by_outcome.loc[("pet_cnn", "short PFS"), "mass in mask"] == "30.0 %"
    assert by_outcome.loc[("pet_cnn", "long PFS"), "mass in mask"] == "10.0 %"
    assert ch05_explain.dilation_text(SimpleNamespace(mask_dilation_voxels=1)) == "1 voxel"
    assert ch05_explain.dilation_text(SimpleNamespace(mask_dilation_voxels=2)) == "2 voxels"


def test_the_sanity_checks_without_and_with_maps(tmp_path):
    assert ch05_explain.sanity_of_run(make_ctx(tmp_path, make_cohort(tmp_path)), None, [], None) is None
    assert ch05_explain.sanity_verdict(None) == "No image model ran in this run, so there are no maps to check."
    summary = pd.DataFrame({"model": ["pet_cnn", "pet_cnn"], "check": [ch05_words.REINITIALISED, "permuted labels"],
                            "median |rank correlation|": [0.123, 0.61], "median SSIM": [0.2, 0.3],
                            "verdict": ["passes", "flagged: uninformative"]})
    sanity = ch05_explain.Sanity(pd.DataFrame(), pd.DataFrame(), summary, {"pet_cnn": 0.5})
    assert sanity.table().loc[("pet_cnn", "permuted labels"), "|ρ| median"] == 0.61
    assert list(sanity.table().columns) == ["|ρ| median", "SSIM median", "verdict"]
    assert sanity.table().iloc[0, 0] == 0.12
    assert "**flagged as uninformative**" in ch05_explain.sanity_verdict(sanity)


def test_the_pretrained_ct_cnn_of_the_sanity_checks_starts_from_the_pretrained_encoder(tmp_path):
    cohort = SimpleNamespace(modalities=["pet", "ct"])
    state = {"body.0.weight": "pretrained"}
    specs = {s.name: s for s in ch05_explain.image_model_specs(cohort, get_profile("smoke"),
                                                               {"pet_cnn", "ct_cnn", "ct_cnn_pretrained"}, state)}
    assert set(specs) == {"pet_cnn", "ct_cnn", "ct_cnn_pretrained"}
    assert specs["ct_cnn_pretrained"].build(0).encoder_weights is state  # what label_randomisation retrains from
    assert specs["ct_cnn"].build(0).encoder_weights is None and specs["pet_cnn"].build(0).encoder_weights is None
    # the pretrained state is looked up only when that model ran
    ctx = make_ctx(tmp_path, make_cohort(tmp_path))
    assert ch05_explain.pretrained_ct_state(ctx, {"ct_cnn"}) is None


def test_no_importance_line_says_why():
    assert ch05_explain.no_importance_line({}) == ("The laboratory + SR-PET + CT fusion did not run, so there is no "
                                                   "laboratory importance inside it to measure.")
    assert "has no laboratory branch in this manifest" in ch05_explain.no_importance_line({(0, 0): object()})


def test_no_fusion_to_restore_when_it_did_not_run(tmp_path):
    ctx = make_ctx(tmp_path, make_cohort(tmp_path), make_splits())
    assert ch05_explain.restore_fusion(ctx, data=None, ran={"lab_rf"}) == ({}, [])


def test_risk_tertiles_of_the_fusion(tmp_path):
    cohort = make_cohort(tmp_path)
    ctx = make_ctx(tmp_path, cohort, make_splits())
    assert ch05_explain.risk_tertiles_of_run(ctx, {"lab_rf"}) is None
    (ctx.run_dir / "predictions").mkdir()
    make_predictions(ranking_scores(), ctx.splits).to_csv(ctx.run_dir / "predictions" / f"{HEADLINE}.csv", index=False)
    thirds = ch05_explain.risk_tertiles_of_run(ctx, {HEADLINE})
    assert thirds.model == HEADLINE and sorted(pd.Series(thirds.group).value_counts()) == [4, 4, 4]
    risk = pd.Series(ranking_scores()).sort_index()
    assert set(np.asarray(thirds.time.index)[thirds.group == "high"]) == set(risk.nlargest(4).index)
    assert thirds.line() == (f"log-rank test over the three groups: chi² = {thirds.statistic:.1f}, "
                             f"p = {thirds.p_value:.2g}")
    assert ch05_explain.risk_tertiles_of_run(make_ctx(tmp_path, make_cohort(tmp_path, survival=False)), {HEADLINE}) \
        is None


# ---- chapter 06 ------------------------------------------------------------------------------------------
def external_validation(tmp_path, metrics_models=("lab_rf", HEADLINE)) -> ch06_external.ExternalValidation:
    cohort = make_cohort(tmp_path)
    splits = make_splits(n_repeats=1)
    pred = make_predictions(ranking_scores(), splits).assign(repeat=0, fold=0)
    training = pd.DataFrame({"patient": ["D1"], "repeat": [0], "fold": [-1], "probability": [0.5], "label": [1.0]})
    results = {m: Result(predictions=pd.concat([pred, training], ignore_index=True)) for m in metrics_models}
    metrics = pd.DataFrame({"model": list(metrics_models), "auroc": 0.6, "auroc_ci_low": 0.5, "auroc_ci_high": 0.72})
    comparison = pd.DataFrame({"model": list(metrics_models), "inputs": "x", "auroc_development": 0.7,
                               "auroc_external": 0.6, "auroc_change": -0.1, "auprc_development": 0.5,
                               "auprc_external": 0.4, "c_index_development": 0.6, "c_index_external": np.nan})
    return ch06_external.ExternalValidation(cohort, cohort, cohort, PATIENTS, splits, results, metrics,
                                            comparison if len(metrics) else pd.DataFrame())


def test_without_an_external_cohort_chapter_06_says_so(tmp_path):
    assert ch06_external.headline_text(None) == ch06_external.NO_EXTERNAL
    assert not ch06_external.validated(None)
    assert not ch06_external.validated(external_validation(tmp_path, metrics_models=()))
    assert ch06_external.comparison_of_run(make_ctx(tmp_path, make_cohort(tmp_path)), None) is None
    assert ch06_external.risk_groups(None) is None


def test_the_external_cohorts_comparison_predictions_calibration_and_risk_groups(tmp_path):
    ev = external_validation(tmp_path)
    ctx = make_ctx(tmp_path, ev.development)
    assert ch06_external.validated(ev)
    shown = ch06_external.comparison_of_run(ctx, ev)
    assert list(shown.index) == ["lab_rf", HEADLINE] and shown["AUROC change"].tolist() == ["-0.100"] * 2
    assert shown["reads as"].tolist() == ["within noise"] * 2  # 0.70 lies inside B's interval 0.50 to 0.72
    pd.testing.assert_frame_equal(pd.read_csv(ctx.run_dir / "results" / "06_external_vs_development.csv"),
                                  ev.comparison, check_dtype=False)
    predictions = ch06_external.external_predictions(ev)
    assert list(predictions) == ["lab_rf", HEADLINE] and set(predictions["lab_rf"]["patient"]) == set(PATIENTS)
    curves, decision = ch06_external.calibration_curves(ev)
    p = pd.Series(ranking_scores()).loc[PATIENTS]
    assert curves[HEADLINE]["predicted"].mean() == pytest.approx(p.mean())
    assert decision["lab_rf"]["threshold"].tolist() == pytest.approx(notebook.DECISION_THRESHOLDS)
    groups = ch06_external.risk_groups(ev)
    assert groups.model == HEADLINE and sorted(groups.time.index) == PATIENTS


# ---- chapter 07 ------------------------------------------------------------------------------------------
def test_the_checklist_is_written_and_its_unanswered_items_counted(tmp_path, monkeypatch):
    table = pd.DataFrame({"item": ["1", "2", "3a"], "where in this book": ["<a>x</a>", ch07_reporting.UNANSWERED, "–"]})
    monkeypatch.setattr(ch07_reporting, "checklist", lambda facts: table)
    ctx = make_ctx(tmp_path, make_cohort(tmp_path))
    assert ch07_reporting.checklist_of_run(ctx, facts=None) is table
    pd.testing.assert_frame_equal(pd.read_csv(ctx.run_dir / "results" / "07_tripod_ai.csv"), table)
    assert ch07_reporting.unanswered(table) == 2


def test_subgroups_are_written_and_shown_when_there_are_some(tmp_path):
    ctx = make_ctx(tmp_path, make_cohort(tmp_path))
    assert ch07_reporting.subgroups_of_run(ctx, SimpleNamespace(subgroups=pd.DataFrame())) is None
    subgroups = pd.DataFrame({"model": HEADLINE, "column": ["sex", "sex"], "level": ["f", "m"], "patients": [30, 8],
                              "short": [11, 2], "auroc": [0.61234, np.nan], "auroc_ci_low": [0.4, np.nan],
                              "auroc_ci_high": [0.8, np.nan], "note": ["", "fewer than 5 patients in a class"]})
    shown = ch07_reporting.subgroups_of_run(ctx, SimpleNamespace(subgroups=subgroups))
    assert list(shown.index) == [("sex", "f"), ("sex", "m")]
    assert list(shown.columns) == ["patients (short PFS)", "AUROC [95 % CI]", "note"]
    assert shown.iloc[0].tolist() == ["30 (11)", "0.61 [0.40, 0.80]", ""] and shown.iloc[1, 1] == "–"
    assert len(pd.read_csv(ctx.run_dir / "results" / "07_subgroups.csv")) == 2


# ---- what the fusion's fold models are asked in chapter 05 -------------------------------------------------
class LabFusion:
    """A fold model of a fusion of laboratory values and SR-PET: its risk rises with ``cga`` (the only laboratory
    value it reads) and with a fixed SR-PET score; a hidden source adds nothing."""

    modalities = ["labs", "pet"]

    def predict(self, data, patients, without=()):
        labs = 0.0 if "labs" in without else data.table.loc[patients, "cga"].rank(pct=True).to_numpy()
        pet = 0.0 if "pet" in without else np.array([0.3 * (i % 3) for i in range(len(patients))])
        return 1 / (1 + np.exp(-(3 * labs + pet - 1.5)))


def test_lab_importance_inside_the_fusion_and_beside_the_forest(tmp_path):
    cohort = make_cohort(tmp_path)
    cohort.data["cga"] = [10.0 + i for i in range(6)] + [1.0 + 0.5 * i for i in range(6)]  # cga separates the groups
    ctx = make_ctx(tmp_path, cohort, make_splits())
    data = ModelData(cohort.data["label"], table=cohort.data[["cga", "ggt"]])
    models = {(r, f): LabFusion() for r in range(2) for f in range(3)}
    table, forest_found = ch05_explain.lab_importance(ctx, models, data, ["cga", "ggt"])
    assert not forest_found and list(table.index) == ["cga", "ggt"]  # ordered by the fusion's importance
    assert table.loc["cga", "fusion: mean drop in AUROC"] > 0 and table.loc["ggt", "fusion: mean drop in AUROC"] == 0
    written = pd.read_csv(ctx.run_dir / "results" / "05_fusion_permutation.csv")
    assert len(written) == 6 * 2 and set(written["feature"]) == {"cga", "ggt"}
    forest = pd.DataFrame({"repeat": 0, "fold": [0, 0], "feature": ["ggt", "cga"], "importance": [0.2, 0.1]})
    forest.to_csv(ctx.run_dir / "results" / "02_permutation_lab_rf.csv", index=False)
    table, forest_found = ch05_explain.lab_importance(ctx, models, data, ["cga", "ggt"])
    assert forest_found and table["Random Forest: rank"].to_dict() == {"cga": 2, "ggt": 1}
    assert ch05_words.importance_text(table).startswith("Inside the fusion, ")
    assert "`cga`" in ch05_words.importance_text(table)


def test_the_ablation_hides_each_source_of_the_fusion(tmp_path):
    cohort = make_cohort(tmp_path)
    cohort.data["cga"] = [10.0 + i for i in range(6)] + [1.0 + 0.5 * i for i in range(6)]
    ctx = make_ctx(tmp_path, cohort, make_splits())
    data = ModelData(cohort.data["label"], table=cohort.data[["cga", "ggt"]])
    ablation = ch05_explain.ablation_of_run(ctx, {(r, f): LabFusion() for r in range(2) for f in range(3)}, data)
    assert list(ablation.index) == ["all modalities", "without laboratory values", "without SR-PET"]  # no CT branch
    assert ablation.loc["all modalities", "auroc_mean"] == 1.0
    assert ablation.loc["without laboratory values", "difference from all modalities"] < 0
    assert np.isnan(ablation.loc["all modalities", "p, corrected t-test"])
    written = pd.read_csv(ctx.run_dir / "results" / "05_modality_ablation.csv", index_col=0)
    assert written["auroc_mean"].to_numpy() == pytest.approx(ablation["auroc_mean"].to_numpy())


def test_the_pet_features_by_group_and_the_seven_models_beside_the_study(tmp_path):
    from prrt.imaging import FEATURES

    cohort = make_cohort(tmp_path)
    pet = pd.DataFrame({f: np.arange(12.0) for f in FEATURES}, index=pd.Index(PATIENTS, name="patient"))
    assert list(ch02_labs.pet_features_table(pet, cohort).index) == [f.replace("_", " ") for f in FEATURES]
    ctx = make_ctx(tmp_path, make_cohort(tmp_path, synthetic=True, report={"achievable_auroc": {"lab": 0.7, "ct": 0.6,
                                                                                         "pet": 0.5, "lab_pet_ct": 0.8}}))
    summary = summary_of({"lab_logreg": "02", "ct_cnn": "03", HEADLINE: "04", "lab_rf": "02"})
    ours, _ = ch04_fusion.comparison_with_study(ctx, summary)
    assert list(ours.index) == ["lab_rf", "ct_cnn", HEADLINE]
    assert ours["achievable AUROC"].tolist() == ["0.70", "0.60", "0.80"]


def test_chapter_01_sets_the_achievable_bounds_beside_models_on_the_exact_parameters(small_cohort_dir, tmp_path):
    from prrt.data.load import load_cohort
    from prrt.study.names import INPUT_SET_NAMES

    cohort = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    ctx = make_ctx(tmp_path, cohort)
    bounds = ch01_cohort.achievable_bounds(ctx)
    report = json.loads((small_cohort_dir / "synthetic_report.json").read_text())
    assert list(bounds.index) == [INPUT_SET_NAMES[k] for k in report["achievable_auroc"]]
    assert bounds["achievable AUROC"].tolist() == [round(v, 3) for v in report["achievable_auroc"].values()]
    assert "receptor-negative (mismatch) liver metastases" in bounds.loc["CT images", "what a perfect reader of it sees"]
    lo, hi = report["achievable_auroc_interval"]["ct"]
    assert bounds.loc["CT images", "95 % interval (bootstrap over patients)"] == f"{lo:.2f}–{hi:.2f}"
    checked = bounds["logistic regression on the exact parameters (CV)"]
    assert checked.notna().all() and checked.between(0, 1).all()
    line = ch01_cohort.bounds_sentence(bounds)
    b = bounds["achievable AUROC"]
    assert f"{b['laboratory values + SR-PET + CT images'] - b['laboratory values + SR-PET lesion features']:+.2f}" in line
    # the SR-PET images see what SR-PET + CT see: one bound by definition, and the page says so
    assert b["SR-PET images"] == b["SR-PET + CT images"]
    assert "share one bound by definition" in line
    other = bounds.copy()
    other.loc["SR-PET + CT images", "what a perfect reader of it sees"] += "; something only the CT shows"
    assert "share one bound" not in ch01_cohort.bounds_sentence(other)
    # a real cohort has no bound, and the page says so
    (tmp_path / "real").mkdir()
    ctx_real = make_ctx(tmp_path / "real", make_cohort(tmp_path / "real"))
    assert ch01_cohort.achievable_bounds(ctx_real) is None
    assert ch01_cohort.bounds_sentence(None).startswith("Real data")


def test_the_parameters_table_has_one_header_row(tmp_path):
    import re

    ctx = make_ctx(tmp_path, make_cohort(tmp_path))
    html = notebook.parameters_view(ctx).to_html()
    head = re.search(r"<thead>(.*?)</thead>", html, re.DOTALL).group(1)
    assert head.count("<tr>") == 1 and "parameter" in head and "value" in head
    assert "seed" in html and notebook.parameters_table(ctx).loc["seed", "value"] == str(ctx.seed)


def test_the_compact_view_has_one_header_row_and_the_stylesheet_class():
    import re

    table = pd.DataFrame({"sources": ["labs · RF"], "AUROC": ["0.64 ± 0.03"]}, index=pd.Index(["lab_rf"], name="model"))
    html = notebook.compact_view(table).to_html()
    head = re.search(r"<thead>(.*?)</thead>", html, re.DOTALL).group(1)
    assert head.count("<tr>") == 1 and "model" in head and "sources" in head
    assert 'class="prrt-compact"' in html and "lab_rf" in html
    css = (Path(__file__).parents[2] / "book" / "_ext" / "static" / "prrt.css").read_text()
    assert "table.prrt-compact td" in css and "white-space: nowrap" in css


def test_the_pretraining_figure_fits_both_ct_cnns_on_the_same_share_of_labels(small_cohort_dir, tmp_path):
    from dataclasses import replace

    from prrt.data.load import load_cohort
    from prrt.learn import image_data, run_models
    from prrt.learn.networks import build_encoder

    cohort = load_cohort(small_cohort_dir / "manifest.yaml", check_images="exists")
    profile = replace(get_profile("smoke"), label_fractions=(0.5, 2.0), label_fraction_repeats=1)
    ctx = notebook.Context(cohort, profile, 5, tmp_path / "run", tmp_path / "cache")
    ctx.run_dir.mkdir()
    (ctx.run_dir / "results").mkdir()
    data = image_data(cohort, profile, ctx.cache_dir, progress=False)
    ct_state = build_encoder(profile.encoder, in_channels=data.images["ct"].x.shape[1]).state_dict()
    specs = [s for s in ch03_images.image_specs(cohort, profile) + ch04_fusion.chapter_specs(cohort, profile, ct_state,
                                                                                             run_dir=ctx.run_dir)
             if s.name in ("ct_cnn", "ct_cnn_pretrained")]
    run_models(specs, data, cohort, ctx.splits, profile, ctx.seed, ctx.run_dir, progress=False)  # chapters 03, 04
    table = ch04_fusion.label_fractions(ctx, data, ct_state)
    assert table["fraction"].tolist() == [0.5, 1.0] and (table["repeats"] == 1).all()  # shares outside (0, 1) left out
    full = table.iloc[1]
    for kind, model in (("scratch", "ct_cnn"), ("pretrained", "ct_cnn_pretrained")):  # all labels: the chapter's own
        pred = pd.read_csv(ctx.run_dir / "predictions" / f"{model}.csv", dtype={"patient": str})
        assert full[f"auroc_{kind}"] == pytest.approx(per_repeat_metrics(pred[pred["repeat"] == 0])["auroc"].iloc[0])
    assert full["ci_low"] <= full["difference"] <= full["ci_high"]
    assert pd.read_csv(ctx.run_dir / "results" / "04_label_fractions.csv")["fraction"].tolist() == [0.5, 1.0]
    assert ch04_fusion.label_fractions(ctx, data, None) is None  # no pretrained encoder: no figure
    assert ch04_fusion.label_fractions(replace_profile(ctx, label_fractions=()), data, ct_state) is None
    text = ch04_fusion.label_fraction_text(table)
    assert text.startswith("Pretrained minus from scratch, mean per-fold AUROC difference over the first repeat of "
                           "the splits: 50 % of the labels: ")


def replace_profile(ctx, **changes):
    from dataclasses import replace

    return notebook.Context(ctx.cohort, replace(ctx.profile, **changes), ctx.seed, ctx.run_dir, ctx.cache_dir)


def test_the_pretraining_figure_in_words():
    table = pd.DataFrame({"fraction": [0.25, 0.5, 1.0], "difference": [0.05, 0.01, -0.04],
                          "ci_low": [0.01, -0.03, -0.07], "ci_high": [0.09, 0.05, -0.01], "repeats": 2})
    assert ch04_fusion.label_fraction_text(table) == (
        "Pretrained minus from scratch, mean per-fold AUROC difference over the first 2 repeats of the splits: 25 % of "
        "the labels: +0.050 "
        "(95 % CI +0.010 to +0.090); 50 % of the labels: +0.010 (95 % CI -0.030 to +0.050); 100 % of the labels: "
        "-0.040 (95 % CI -0.070 to -0.010). The interval lies above zero (pretraining helped) at 25 % of the labels. "
        "The interval lies below zero (pretraining hurt) at 100 % of the labels.")
    none = table.assign(ci_low=-0.1, ci_high=0.1)
    assert ch04_fusion.label_fraction_text(none).endswith(
        "Every interval includes zero: on this cohort no difference between the pretrained and the untrained CT CNN "
        "could be detected, with few labels or with all of them.")
    assert ch04_fusion.label_fraction_text(None).startswith("No pretraining figure in this run")
