"""Fusion models: nested late fusion, neural fusion with missing modalities, the pretrained CT branch."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from fusion_fakes import _Cohort, _multimodal, _Profile
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from prrt.evaluation import splits as sp
from prrt.evaluation.metrics import per_repeat_metrics
from prrt.imaging.lesions import FEATURES
from prrt.learn import base as base_
from prrt.learn import fusion, image_model, loop, neural_fusion, tabular, training
from prrt.study import ch04_comparison, ch04_fusion


def _table(n=90, seed=0):
    rng = np.random.default_rng(seed)
    y = pd.Series((np.arange(n) % 3 == 0).astype(float), index=[f"P{i:03d}" for i in range(n)])
    X = pd.DataFrame({"signal": rng.normal(size=n) + 2.0 * y, "noise": rng.normal(size=n)}, index=y.index)
    return X, y


def test_late_fusion_stacks_on_inner_out_of_fold_predictions_only():
    """A 1-nearest-neighbour model on pure noise predicts its own training patients perfectly. Stacked
    on in-sample predictions it would get the larger weight; on inner out-of-fold predictions it is
    worth nothing and the informative model dominates."""
    X, y = _table()
    data = base_.ModelData(y, table=X)
    good = tabular.table_spec("good", "04", "signal", ["signal"], lambda s: LogisticRegression())
    memo = tabular.table_spec("memo", "04", "noise", ["noise"], lambda s: KNeighborsClassifier(1))
    spec = ch04_fusion.late_fusion_spec("late", "04", "good + memo", [good, memo])
    s = sp.make_splits(y, 3, 2, 0)
    res = loop.cross_validate(spec, data, s, seed=1, progress=False, keep_models=True)
    for f in sp.iter_folds(s):
        m = res.models[(f.repeat, f.fold)]
        assert sorted(m.stacked_on_) == sorted(f.train)
        for base, trained_on, predicted in m.trace:
            assert not set(trained_on) & set(f.test) and not set(predicted) & set(f.test)
            assert not set(trained_on) & set(predicted)  # every stacking input is out of fold
        w = m.stacking_weights()
        assert w["good"] > 0.2 and abs(w["memo"]) < 0.25 * w["good"], w
    assert per_repeat_metrics(res.predictions)["auroc"].mean() > 0.7


@pytest.mark.parametrize("mechanism", ["intermediate", "adaptive"])
def test_neural_fusion_predicts_every_patient_when_modalities_are_missing(mechanism):
    data, y, (no_pet, no_ct, no_labs) = _multimodal()
    cfg = fusion.FusionConfig(training.TrainConfig(epochs=2, batch_size=8), mechanism=mechanism)
    spec = ch04_fusion.neural_fusion_spec("f", "04", "labs + PET + CT", ["labs", "pet_features", "pet", "ct"], _Cohort(), cfg)
    assert spec.needs == ()
    s = sp.make_splits(y, 3, 2, 0)
    res = loop.cross_validate(spec, data, s, seed=0, progress=False, keep_models=True)
    p = res.predictions
    assert np.isfinite(p["probability"]).all()
    lab = p[p["fold"] >= 0]
    assert lab.groupby("repeat")["patient"].apply(lambda x: sorted(x) == sorted(y.dropna().index)).all()
    assert set(p.loc[p["fold"] == -1, "patient"]) == {"P036"}
    m = res.models[(0, 0)]
    w = m.modality_weights(data, no_pet + no_ct + no_labs)
    assert list(w.columns) == ["labs", "pet_features", "pet", "ct"]
    assert (w.loc[no_pet, ["pet", "pet_features"]] == 0).all().all() and (w.loc[no_ct, "ct"] == 0).all()
    assert (w.loc[no_labs, "labs"] == 0).all() and (w.loc[no_ct + no_labs, "pet_features"] > 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-5)
    emb = m.features(data, list(y.index[:5]))
    assert set(emb) == {"labs", "pet_features", "pet", "ct"} and emb["pet"].shape == (5, cfg.dim)
    # each table branch is imputed and scaled with the statistics of the fold's fitting patients only
    fit = loop.inner_split(sp.iter_folds(s).__next__().train, y, cfg.train.val_fraction, 0).fit
    for branch, cols in [("labs", ["cga", "ggt"]), ("pet_features", list(FEATURES))]:
        imputer, scaler = m.tables_[branch]
        np.testing.assert_allclose(imputer.statistics_, data.table.loc[fit, cols].median().to_numpy())
        filled = data.table.loc[fit, cols].fillna(data.table.loc[fit, cols].median())
        np.testing.assert_allclose(scaler.mean_, filled.mean().to_numpy())


def test_neural_fusion_fits_every_training_patient_without_an_inner_validation_part():
    """The demo profile holds back no validation part (val_fraction 0): the table branches get no empty table to
    impute, the curves no validation numbers, and every training patient fits the fusion."""
    data, y, _ = _multimodal()
    cfg = fusion.FusionConfig(training.TrainConfig(epochs=2, batch_size=8, val_fraction=0.0), mechanism="adaptive")
    spec = ch04_fusion.neural_fusion_spec("f", "04", "labs + PET + CT", ["labs", "pet_features", "pet", "ct"], _Cohort(), cfg)
    assert spec.val_fraction == 0.0
    s = sp.make_splits(y, 3, 1, 0)
    res = loop.cross_validate(spec, data, s, seed=0, progress=False, keep_models=True)
    assert np.isfinite(res.predictions["probability"]).all()
    assert res.curves["val_loss"].isna().all() and res.curves["train_loss"].notna().all()
    f = next(sp.iter_folds(s))
    imputer, _ = res.models[(f.repeat, f.fold)].tables_["labs"]
    np.testing.assert_allclose(imputer.statistics_, data.table.loc[f.train, ["cga", "ggt"]].median().to_numpy())


def test_late_fusion_with_missing_unimodal_predictions():
    data, y, (no_pet, no_ct, _) = _multimodal(seed=1)
    cfg = training.TrainConfig(epochs=1, batch_size=8)
    bases = [tabular.table_spec("lab", "04", "labs", ["cga", "ggt"], lambda s: tabular.random_forest(s, 20)),
             image_model.image_spec("pet", "pet", cfg, "04", "PET", True), image_model.image_spec("ct", "ct", cfg, "04", "CT", True)]
    spec = ch04_fusion.late_fusion_spec("late", "04", "all", bases, inner_folds=2)
    s = sp.make_splits(y, 3, 1, 0)
    res = loop.cross_validate(spec, data, s, seed=0, progress=False)
    assert np.isfinite(res.predictions["probability"]).all() and len(res.predictions) == 36 + 1


def test_ct_branch_starts_from_pretrained_weights():
    data, y, _ = _multimodal()
    from prrt.learn.networks import build_encoder

    pre = build_encoder("compact", in_channels=2).state_dict()
    pre = {k: (torch.full_like(v, 0.5) if v.is_floating_point() else v) for k, v in pre.items()}
    nf = neural_fusion.NeuralFusion(["pet", "ct"], None, fusion.FusionConfig(training.TrainConfig()), ct_weights=pre)
    nf.shapes_ = {"pet": (2, 8, 8, 6), "ct": (2, 8, 8, 6)}
    net = nf._build(data)
    assert torch.equal(net.encoders["ct"].body[0].weight, pre["body.0.weight"])
    assert not torch.equal(net.encoders["pet"].body[0].weight, pre["body.0.weight"])


def test_a_fusion_without_two_modalities_is_skipped():
    class OnlyPet:
        labs = []
        modalities = ["pet"]

    spec = ch04_fusion.neural_fusion_spec("f", "04", "labs + PET", ["labs", "pet"], OnlyPet(),
                                     fusion.FusionConfig(training.TrainConfig()))
    assert spec.build is None and "fewer than two" in spec.reason


def test_a_fusion_with_two_of_its_three_modalities_runs_and_says_which_is_missing():
    class ImagesOnly:
        labs = []
        modalities = ["pet", "ct"]

    cfg = fusion.FusionConfig(training.TrainConfig())
    spec = ch04_fusion.neural_fusion_spec("f", "04", "labs + PET + CT", ["labs", "pet", "ct"], ImagesOnly(), cfg)
    assert spec.build is not None
    assert spec.inputs == "labs + PET + CT; without laboratory values (not in the manifest)"
    assert spec.build(0).modalities == ["pet", "ct"]
    full = ch04_fusion.neural_fusion_spec("f", "04", "labs + PET", ["labs", "pet"], type("C", (), {
        "labs": ["cga"], "modalities": ["pet"]})(), cfg)
    assert full.inputs == "labs + PET"
    bases = [tabular.table_spec("lab_rf", "04", "labs", None, lambda s: LogisticRegression()),
             image_model.image_spec("pet_cnn", "pet", training.TrainConfig(), "04", "PET", True),
             image_model.image_spec("ct_cnn", "ct", training.TrainConfig(), "04", "CT", True)]
    late = ch04_fusion.late_fusion_spec("late", "04", "labs + PET + CT, late", bases)
    assert late.inputs == "labs + PET + CT, late; without laboratory values (not in the manifest)"


def test_a_fusion_uses_one_core_when_no_image_branch_trains_a_cnn(tmp_path):
    """``one_core`` (an engine may run several such fits at once): a fusion whose image branches all read a fold
    CNN's score, or a late fusion whose image bases do, and every scikit-learn model; not a fusion or late fusion
    that trains a CNN of its own, nor a CNN."""
    class Both:
        labs = ("cga",)
        modalities = ("pet", "ct")

    cfg = fusion.FusionConfig(training.TrainConfig())
    scores = {m: fusion.FoldModelScores(tmp_path, f"{m}_cnn", m) for m in ("pet", "ct")}
    mods = ["labs", "pet_features", "pet", "ct"]
    assert ch04_fusion.neural_fusion_spec("f", "04", "all", mods, Both(), cfg, fold_models=scores).one_core
    assert not ch04_fusion.neural_fusion_spec("f", "04", "all", mods, Both(), cfg,
                                              fold_models={"pet": scores["pet"]}).one_core
    assert not ch04_fusion.neural_fusion_spec("f", "04", "all", mods, Both(), cfg).one_core
    assert ch04_fusion.neural_fusion_spec("f", "04", "labs + lesions", ["labs", "pet_features"], Both(), cfg).one_core
    lab = tabular.table_spec("lab_rf", "04", "labs", ["cga"], lambda s: LogisticRegression())
    pet, ct = (image_model.image_spec(f"{m}_cnn", m, training.TrainConfig(), "04", m, True) for m in ("pet", "ct"))
    assert lab.one_core and not pet.one_core and not ct.one_core
    assert ch04_fusion.late_fusion_spec("late", "04", "all", [lab, pet, ct], fold_models=scores).one_core
    assert not ch04_fusion.late_fusion_spec("late", "04", "all", [lab, pet, ct],
                                            fold_models={"ct": scores["ct"]}).one_core
    assert not ch04_fusion.late_fusion_spec("late", "04", "all", [lab, pet, ct]).one_core


def _summary_rows(aurocs: dict, status: dict | None = None) -> pd.DataFrame:
    return pd.DataFrame([{"model": m, "chapter": "04" if "fusion" in m or "net" in m else "02",
                          "status": (status or {}).get(m, "ran"), "auroc_mean": a, "auroc_sd": 0.03,
                          "auroc_ci_low": a - 0.1, "auroc_ci_high": a + 0.1, "auprc_mean": a - 0.2, "auprc_sd": 0.02,
                          "brier_mean": 0.2, "n_repeats": 5} for m, a in aurocs.items()])


def test_the_fusion_meets_the_control_the_best_model_without_a_cnn_and_every_single_source_model():
    summary = _summary_rows({"lab_rf": 0.64, "lab_rf_with_cycles": 0.90, "pet_features_logreg": 0.75,
                             "lab_pet_features_rf": 0.78, "pet_cnn": 0.73, "ct_cnn": 0.71, "ct_cnn_pretrained": 0.70,
                             ch04_fusion.CONTROL: 0.80, ch04_fusion.HEADLINE: 0.83, "lab_logreg": 0.6},
                            status={"lab_logreg": "skipped: no"})
    rivals = ch04_comparison.fusion_rivals(summary)
    # the cycles model is nobody's rival (post-treatment information), a skipped model neither
    control = "control: the same network without CNN branches (also the best model without a CNN)"
    assert rivals == [(ch04_fusion.CONTROL, control),
                      ("lab_rf", "single source: laboratory values"), ("pet_features_logreg", "single source: SR-PET"),
                      ("pet_cnn", "single source: SR-PET"), ("ct_cnn", "single source: CT"),
                      ("ct_cnn_pretrained", "single source: CT")]
    without_control = ch04_comparison.fusion_rivals(summary[summary["model"] != ch04_fusion.CONTROL])
    assert without_control[0] == ("lab_pet_features_rf", "the best model without a CNN")


def test_headline_text_reports_the_fusion_against_the_control_and_the_best_rivals():
    summary = _summary_rows({"pet_cnn": 0.7012, "lab_pet_features_rf": 0.821, ch04_fusion.CONTROL: 0.69,
                             ch04_fusion.HEADLINE: 0.7049})
    comparisons = pd.DataFrame([
        {"comparison": "control: the same network without CNN branches", "model": ch04_fusion.HEADLINE,
         "versus": ch04_fusion.CONTROL, "auroc_versus": 0.69, "difference": 0.015, "ci_low": -0.01, "ci_high": 0.04,
         "p": 0.2, "p_holm": 0.4},
        {"comparison": "the best model without a CNN", "model": ch04_fusion.HEADLINE, "versus": "lab_pet_features_rf",
         "auroc_versus": 0.821, "difference": -0.116, "ci_low": -0.15, "ci_high": -0.08, "p": 0.0001, "p_holm": 0.0003},
        {"comparison": "single source: SR-PET", "model": ch04_fusion.HEADLINE, "versus": "pet_cnn", "auroc_versus": 0.7012,
         "difference": 0.004, "ci_low": -0.05, "ci_high": 0.06, "p": 0.92, "p_holm": 0.92},
        {"comparison": "single source: SR-PET", "model": ch04_fusion.HEADLINE, "versus": "pet_features_rf",
         "auroc_versus": 0.6, "difference": 0.1, "ci_low": 0.05, "ci_high": 0.15, "p": 0.01, "p_holm": 0.03},
        {"comparison": "pretraining", "model": "ct_cnn_pretrained", "versus": "ct_cnn", "auroc_versus": 0.7,
         "difference": 0.01, "ci_low": -0.05, "ci_high": 0.06, "p": 0.5, "p_holm": 0.92}]).set_index("comparison")
    assert ch04_comparison.headline_text(summary, comparisons) == (
        "In this run the laboratory + SR-PET + CT fusion reached an AUROC of 0.70 ± 0.03 (AUPRC with short PFS as the "
        "positive class 0.50 ± 0.02; mean ± SD over 5 repeats). Against the same network without CNN branches "
        "(`lab_petfeatures_net`, 0.69 ± 0.03), which measures what the CNN branches add: a mean per-fold AUROC "
        "difference of +0.015 (95 % CI -0.010 to +0.040; Holm-adjusted p = 0.400). Against the best model without a "
        "CNN, `lab_pet_features_rf` (0.82 ± 0.03): -0.116 (95 % CI -0.150 to -0.080; Holm-adjusted p <0.001). "
        "Against the best single-source model, `pet_cnn` (0.70 ± 0.03): +0.004 (95 % CI -0.050 to +0.060; "
        "Holm-adjusted p = 0.920). After the adjustment for multiple tests the fusion differs from "
        "`lab_pet_features_rf`, `pet_features_rf` only.")
    # the best model without a CNN may be a single-source model too; no rival may differ after the adjustment
    alone = comparisons.drop(index=["single source: SR-PET"]).assign(p_holm=0.5)
    alone.loc["the best model without a CNN", "versus"] = "pet_features_logreg"
    summary2 = pd.concat([summary, _summary_rows({"pet_features_logreg": 0.75})])
    assert ch04_comparison.headline_text(summary2, alone).endswith(
        "`pet_features_logreg` is also the best single-source model. No difference between the fusion and any of its "
        "rivals can be told apart from zero after the adjustment for multiple tests.")
    assert ch04_comparison.headline_text(summary.iloc[:2], pd.DataFrame()) == (
        "The laboratory + SR-PET + CT fusion did not run (not in the summary), so there is no fusion result to report.")
    skipped = summary.assign(status=["ran", "ran", "ran", "skipped: fewer than two of its modalities are in the manifest"])
    assert ch04_comparison.headline_text(skipped, pd.DataFrame()) == (
        "The laboratory + SR-PET + CT fusion did not run (skipped: fewer than two of its modalities are in the "
        "manifest), so there is no fusion result to report.")
    assert ch04_comparison.headline_text(summary, pd.DataFrame()).endswith("over 5 repeats).")


def test_the_chapter_says_where_adding_a_source_lowered_the_auroc():
    summary = _summary_rows({"ct_cnn": 0.715, "lab_rf": 0.64, "pet_features_logreg": 0.75, ch04_fusion.CONTROL: 0.73,
                             "lab_ct_fusion": 0.684, "lab_pet_fusion": 0.743, ch04_fusion.HEADLINE: 0.782,
                             "lab_rf_with_cycles": 0.9})
    assert ch04_comparison.lowering_text(summary) == (
        "Adding a source did not help in 3 of 8 cases: `lab_pet_fusion` (0.74) falls below `pet_features_logreg` "
        "(0.75), which lacks its laboratory values; `lab_ct_fusion` (0.68) falls below `ct_cnn` (0.72), which lacks its "
        "laboratory values; `lab_petfeatures_net` (0.73) falls below `pet_features_logreg` (0.75), which lacks its "
        "laboratory values (differences between models of different kinds, not tested).")
    # compared as the tables show them: 0.746 is 0.75, which only equals 0.75 (a tie did not help either)
    tied = ch04_comparison.lowering_text(summary.assign(auroc_mean=[0.715, 0.64, 0.75, 0.746, 0.72, 0.746, 0.782, 0.9]))
    assert tied.startswith("Adding a source did not help in 3 of 8 cases: `lab_pet_fusion` (0.75) only equals "
                           "`pet_features_logreg` (0.75), which lacks its laboratory values; `lab_ct_fusion` (0.72) "
                           "only equals `ct_cnn` (0.72)"), tied
    rising = summary.assign(auroc_mean=[0.70, 0.64, 0.74, 0.756, 0.72, 0.756, 0.782, 0.9])
    assert ch04_comparison.lowering_text(rising) == (
        "In this run every fusion rose above the best model of its sources less one: adding a source always raised "
        "the AUROC.")
    assert ch04_comparison.lowering_text(_summary_rows({"lab_rf": 0.6})) == ""


def test_the_compact_table_and_the_forest_rows():
    summary = _summary_rows({"lab_rf": 0.64, "lab_rf_with_cycles": 0.75, ch04_fusion.CONTROL: 0.80,
                             ch04_fusion.HEADLINE: 0.83, "pet_cnn": 0.7}, status={"pet_cnn": "skipped: no PET"})
    comparisons = pd.DataFrame({"model": [ch04_fusion.HEADLINE] * 2, "versus": ["lab_rf", ch04_fusion.CONTROL],
                                "p_holm": [0.0004, 0.21]}, index=["a", "b"])
    table = ch04_comparison.compact_table(summary, comparisons)
    assert list(table.index) == [ch04_fusion.HEADLINE, ch04_fusion.CONTROL, "lab_rf_with_cycles", "lab_rf"]
    assert list(table.columns) == ["sources", "AUROC", "AUPRC", "Brier", "p (Holm)"]
    assert table.loc[ch04_fusion.HEADLINE].tolist() == ["labs + PET + CT (fusion)", "0.83 ± 0.03", "0.63", "0.200", "–"]
    assert table.loc["lab_rf", "p (Holm)"] == "<0.001" and table.loc[ch04_fusion.CONTROL].iloc[-1] == "0.210"
    assert table.loc["lab_rf_with_cycles", "p (Holm)"] == "–"
    rows = ch04_comparison.forest_rows(summary, {"lab": 0.69, "lab_pet_ct": 0.93, "lab_pet_features": 0.83})
    assert list(rows.index) == ["lab_rf", "lab_rf_with_cycles", ch04_fusion.CONTROL, ch04_fusion.HEADLINE]
    assert rows["bound"].tolist()[0] == 0.69 and np.isnan(rows["bound"].tolist()[1]) and rows["bound"].tolist()[3] == 0.93
    assert rows["headline"].tolist() == [False, False, False, True]
    assert ch04_comparison.forest_rows(summary, None)["bound"].isna().all()


def test_the_reliability_plot_shows_the_fusion_its_control_and_the_best_model_without_a_cnn():
    summary = _summary_rows({"lab_rf": 0.64, "pet_features_logreg": 0.75, ch04_fusion.CONTROL: 0.70,
                             ch04_fusion.HEADLINE: 0.73, "pet_cnn": 0.72})
    summary["calibration_slope"] = [1.1, 0.612, 0.95, 1.4, 1.0]
    summary["calibration_in_the_large"] = [0.0, -0.1, 0.05, 0.2, 0.0]
    assert ch04_comparison.calibration_models(summary) == [ch04_fusion.HEADLINE, ch04_fusion.CONTROL,
                                                           "pet_features_logreg"]

    def repeats(slopes, low, high):
        return pd.DataFrame({"repeat": range(len(slopes)), "calibration_slope": slopes,
                             "calibration_slope_ci_low": low, "calibration_slope_ci_high": high})

    per_repeat = {ch04_fusion.HEADLINE: repeats([1.4] * 3, [1.1, 1.2, 0.9], [1.8] * 3),
                  ch04_fusion.CONTROL: repeats([0.9, 1.0, 0.95], [0.5] * 3, [1.3] * 3),
                  "pet_features_logreg": repeats([0.6, 0.62, np.nan], [0.3, 0.4, np.nan], [0.9, 0.95, np.nan])}
    assert ch04_comparison.calibration_text(summary, per_repeat) == (
        "Calibration of each repeat's out-of-fold probabilities, averaged over the repeats (a slope of 1 and an "
        "intercept of 0 are perfect): `lab_pet_ct_fusion`: slope 1.40 (above 1, too timid, in 3 of 3 repeats; the 95 % "
        "interval lies wholly above 1 in 2 of 3), calibration-in-the-large 0.20, Brier 0.200; `lab_petfeatures_net`: "
        "slope 0.95 (below 1, too extreme, in 2 of 3 repeats; the 95 % interval lies wholly below 1 in 0 of 3), "
        "calibration-in-the-large 0.05, Brier 0.200; `pet_features_logreg`: slope 0.61 (below 1, too extreme, in 2 of "
        "2 repeats; the 95 % interval lies wholly below 1 in 2 of 2), calibration-in-the-large -0.10, Brier 0.200.")
    assert "(" not in ch04_comparison.calibration_text(summary).split("`lab_pet_ct_fusion`: slope 1.40")[1][:2]
    negative = {ch04_fusion.HEADLINE: repeats([-0.2, -0.1, 0.3], [-0.9] * 3, [0.5, 0.6, 1.2])}
    assert "(its probabilities do not rise with the outcome in 2 of 3 repeats)" in ch04_comparison.calibration_text(
        summary, negative)
    assert ch04_comparison.slope_reading(repeats([np.nan], [np.nan], [np.nan])).startswith("no slope")
    # the control is also the best model without a CNN: named once; nothing ran: a sentence
    summary.loc[summary["model"] == ch04_fusion.CONTROL, "auroc_mean"] = 0.8
    assert ch04_comparison.calibration_models(summary) == [ch04_fusion.HEADLINE, ch04_fusion.CONTROL]
    assert ch04_comparison.calibration_text(summary.assign(status="skipped: no")) == (
        "None of the models of the reliability plot ran for this manifest.")


def test_the_fusions_sr_pet_part_reads_the_lesion_features_when_the_profile_says_so():
    from dataclasses import replace

    from prrt.profiles import get_profile

    class Full:
        labs = ["cga", "ggt"]
        modalities = ["pet", "ct"]

    smoke = replace(get_profile("smoke"), fusion_image_branches="end_to_end")
    specs = {s.name: s for s in ch04_fusion.chapter_specs(Full(), replace(smoke, fusion_models="all"), None)}
    head = specs["lab_pet_ct_fusion"]
    assert head.inputs == "laboratory values + SR-PET (CNN and lesion features) + CT, adaptive fusion"
    assert head.build(0).modalities == ["labs", "pet_features", "pet", "ct"]
    assert head.build(0).columns == {"labs": ["cga", "ggt"], "pet_features": list(FEATURES)}
    assert specs["lab_ct_fusion"].build(0).modalities == ["labs", "ct"]
    assert specs["pet_ct_fusion"].build(0).modalities == ["pet_features", "pet", "ct"]
    assert specs["lab_pet_ct_intermediate"].inputs.startswith("laboratory values + SR-PET (CNN and lesion features)")
    plain = {s.name: s for s in ch04_fusion.chapter_specs(Full(), replace(smoke, fusion_pet_features=False), None)}
    assert plain["lab_pet_ct_fusion"].inputs == "laboratory values + SR-PET + CT, adaptive fusion"
    assert plain["lab_pet_ct_fusion"].build(0).modalities == ["labs", "pet", "ct"]

    # the lesion features are part of SR-PET: with PET alone there is still only one source
    class OnlyPet:
        labs = []
        modalities = ["pet"]

    spec = ch04_fusion.neural_fusion_spec("f", "04", "labs + PET", ["labs", "pet_features", "pet"], OnlyPet(),
                                     fusion.FusionConfig(training.TrainConfig()))
    assert spec.build is None and spec.reason == "fewer than two of its modalities are in the manifest"
    with pytest.raises(ValueError, match="'pet_features' branch needs its table columns"):
        neural_fusion.NeuralFusion(["pet_features", "ct"], None, fusion.FusionConfig(training.TrainConfig()))


def test_chapter_table_takes_the_lesion_features_chapter_02_wrote(tmp_path):
    class Cohort:
        labs = ["cga"]
        clinical = ["age"]
        categorical = []
        modalities = ["pet"]
        data = pd.DataFrame({"cga": [1.0, 2.0], "age": [60.0, 70.0]}, index=["P001", "P002"])

    # values of many digits, some of which pandas' default CSV parser reads back a bit off: the chapter reads the
    # file to the bit, so that its models are those of a run that computed the features itself
    values = np.random.default_rng(0).lognormal(size=(2, len(FEATURES)))
    pet = pd.DataFrame(values, columns=list(FEATURES), index=["P001", "P002"])
    (tmp_path / "features").mkdir()
    pet.to_csv(tmp_path / "features" / "pet_features.csv")
    X = ch04_fusion.chapter_table(Cohort(), tmp_path)
    assert list(X.columns) == ["cga", "age", *FEATURES] and list(X.index) == ["P001", "P002"]
    np.testing.assert_array_equal(X[FEATURES].to_numpy(), pet.to_numpy())
    Cohort.modalities = []
    assert list(ch04_fusion.chapter_table(Cohort(), tmp_path).columns) == ["cga", "age"]


def test_fold_model_branches_read_the_cnn_trained_on_the_same_training_part(tmp_path):
    """With image branches from the fold models, a fusion loads, for each fold, the unimodal CNN's
    checkpoint of exactly that fold's training patients with the image (some lack a PET or a CT: the CNN of
    that image was fitted without them, the fusion with them); the loop fits that CNN first; a fold without
    such a checkpoint is a clear error, never another fold's CNN (which saw this fold's test patients)."""
    data, y, (no_pet, no_ct, no_labs) = _multimodal()
    complete = data
    s = sp.make_splits(y, 3, 2, 0)
    tcfg = training.TrainConfig(epochs=2, batch_size=8)
    pet_cnn = image_model.image_spec("pet_cnn", "pet", tcfg, "03", "PET", True)
    loop.run_models([pet_cnn], complete, None, s, _Profile(), 0, tmp_path)  # chapter 03 (another call)
    ct_cnn = image_model.image_spec("ct_cnn_pretrained", "ct", tcfg, "04", "CT", True)
    scores = {"pet": fusion.FoldModelScores(tmp_path, "pet_cnn", "pet", "03"),
              "ct": fusion.FoldModelScores(tmp_path, "ct_cnn_pretrained", "ct", "04")}
    cfg = fusion.FusionConfig(training.TrainConfig(epochs=3, batch_size=32, lr=3e-3), mechanism="adaptive")
    spec = ch04_fusion.neural_fusion_spec("f", "04", "labs + PET + CT", ["labs", "pet_features", "pet", "ct"], _Cohort(),
                                     cfg, fold_models=scores)
    assert spec.requires == ("pet_cnn", "ct_cnn_pretrained")
    # the fusion comes first in the list: the loop still fits the CT CNN it reads before it
    ct_first = loop.run_models([ct_cnn], complete, None, s, _Profile(), 0, tmp_path / "ct_alone")[0]
    results, rows = loop.run_models([spec, ct_cnn], complete, None, s, _Profile(), 0, tmp_path, keep_models=True)
    pd.testing.assert_frame_equal(results["ct_cnn_pretrained"].predictions, ct_first["ct_cnn_pretrained"].predictions)
    assert [r["model"] for r in rows] == ["f", "ct_cnn_pretrained"] and list(results) == ["f", "ct_cnn_pretrained"]
    p = results["f"].predictions
    assert np.isfinite(p["probability"]).all() and set(p.loc[p["fold"] == -1, "patient"]) == {"P036"}
    # a fitted fusion predicts patients without PET, CT or labs (their branches masked)
    assert np.isfinite(results["f"].models[(0, 0)].predict(data, list(y.index))).all()
    for f in sp.iter_folds(s):
        m = results["f"].models[(f.repeat, f.fold)]
        part = loop.inner_split(f.train, y, cfg.train.val_fraction, loop.fold_seed(0, f.repeat, f.fold))
        ck = torch.load(tmp_path / "checkpoints" / "pet_cnn" / f"r{f.repeat}_f{f.fold}.pt", weights_only=True)
        with_pet = [p for p in part.all if p not in no_pet]
        assert ck["training_patients"] == part.patients_digest(lambda p: p not in no_pet) != part.patients_digest()
        assert ck["training_part"] == loop.inner_split(with_pet, y, cfg.train.val_fraction,
                                                       loop.fold_seed(0, f.repeat, f.fold)).digest()
        for name, value in ck["state_dict"].items():  # the fold's own PET CNN, weight for weight
            assert torch.equal(m.fold_models["pet"].load(m.part_, complete).state_dict()[name], value), name
        fused = torch.load(tmp_path / "checkpoints" / "f" / f"r{f.repeat}_f{f.fold}.pt", weights_only=True)
        assert fused["fold_models"] == {"pet": "pet_cnn", "ct": "ct_cnn_pretrained"}
        # the branch is one standardised number: mean 0, SD 1 over the fitting patients that have a PET
        z = m._inputs(complete, [p for p in part.fit if p not in no_pet])["pet"][:, 0].numpy()
        assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    w = m.modality_weights(data, no_pet)
    assert (w.loc[no_pet, ["pet", "pet_features"]] == 0).all().all()
    # a training part no checkpoint was trained on
    other = base_.TrainingPart(fit=list(y.dropna().index[:20]), val=list(y.dropna().index[20:26]))
    with pytest.raises(FileNotFoundError, match=r"reads the fold models of pet_cnn \(chapter 03\).*no checkpoint trained "
                                                r"on this fold's training part"):
        scores["pet"].load(other, data)


def test_cross_fitted_branches_train_the_fusion_on_scores_of_models_that_never_saw_the_patient(tmp_path):
    """With a cross-fitted source, the fusion's training patients get the score of a model that saw neither them
    nor the test fold (standardised on the fitting part), its test patients the fold CNN's; restoring gives the
    same fusion."""
    complete, y, _ = _multimodal(missing=False)
    s = sp.make_splits(y, 3, 2, 0)
    tcfg = training.TrainConfig(epochs=2, batch_size=8)
    pet_cnn = image_model.image_spec("pet_cnn", "pet", tcfg, "03", "PET", True)
    loop.run_models([pet_cnn], complete, None, s, _Profile(), 0, tmp_path)
    source = fusion.FoldModelScores(tmp_path, "pet_cnn", "pet", "03", cross_fitted=True)
    first = next(sp.iter_folds(s))
    part0 = loop.inner_split(first.train, y, tcfg.val_fraction, loop.fold_seed(0, first.repeat, first.fold))
    with pytest.raises(FileNotFoundError, match="needs the cross-fitted scores of pet_cnn"):
        source.training_scores(part0, complete, part0.fit[:1])
    assert fusion.FoldModelScores(tmp_path, "pet_cnn", "pet").training_scores(part0, complete, part0.fit) is None
    scores = loop.cross_fitted_scores(pet_cnn, complete, s, 0, progress=False)
    fusion.write_cross_fitted(tmp_path, "pet_cnn", scores)
    cfg = fusion.FusionConfig(training.TrainConfig(epochs=3, batch_size=32, lr=3e-3), mechanism="intermediate")
    spec = ch04_fusion.neural_fusion_spec("f", "04", "labs + PET", ["labs", "pet"], _Cohort(), cfg,
                                          fold_models={"pet": source})
    results, _ = loop.run_models([spec], complete, None, s, _Profile(), 0, tmp_path, keep_models=True)
    for f in sp.iter_folds(s):
        m = results["f"].models[(f.repeat, f.fold)]
        part = loop.inner_split(f.train, y, cfg.train.val_fraction, loop.fold_seed(0, f.repeat, f.fold))
        want = loop.training_score_of(scores, f.repeat, f.fold, part.fit).to_numpy()
        z = m._inputs(complete, part.fit, training=True)["pet"][:, 0].numpy()
        np.testing.assert_allclose(z, (want - want.mean()) / want.std(), rtol=1e-4, atol=1e-5)
        # the test patients: the fold CNN's own scores, on that CNN's scale over the fitting part
        mean, sd = m.score_scale_["pet"]
        test_z = m._inputs(complete, f.test)["pet"][:, 0].numpy()
        np.testing.assert_allclose(test_z, (m.fold_models["pet"].scores(m.part_, complete, f.test) - mean) / sd, rtol=1e-5)
        ck = torch.load(tmp_path / "checkpoints" / "f" / f"r{f.repeat}_f{f.fold}.pt", weights_only=True)
        assert ck["cross_fitted"] == ["pet"]
    # restored from the checkpoints (and the cross-fitted scores), the fusions predict what they predicted
    assert len(loop.restore_fold_models(spec, complete, s, 0, tmp_path)) == 6


def test_chapter_specs_with_fold_model_branches():
    from dataclasses import replace

    from prrt.profiles import get_profile

    class Full:
        labs = ["cga", "ggt"]
        modalities = ["pet", "ct"]

    smoke = replace(get_profile("smoke"), fusion_models="all")
    assert smoke.fusion_image_branches == "cross_fitted" and get_profile("demo").fusion_image_branches == "cross_fitted"
    smoke = replace(smoke, fusion_image_branches="fold_models")
    assert get_profile("paper").fusion_image_branches == "end_to_end"
    with pytest.raises(ValueError, match="need the run folder"):
        ch04_fusion.chapter_specs(Full(), smoke, None)
    with pytest.raises(ValueError, match="fusion_image_branches must be 'end_to_end', 'fold_models' or "
                                         "'cross_fitted', not 'cnn'"):
        ch04_fusion.chapter_specs(Full(), replace(smoke, fusion_image_branches="cnn"), None, run_dir="r")
    specs = {s.name: s for s in ch04_fusion.chapter_specs(Full(), smoke, {"w": torch.zeros(1)}, run_dir="r")}
    head = specs["lab_pet_ct_fusion"]
    assert head.inputs == ("laboratory values + SR-PET (CNN score and lesion-feature score) + CT, adaptive fusion "
                           "(CT CNN pretrained), image branches: the fold's unimodal CNN scores")
    assert head.requires == ("pet_cnn", "ct_cnn_pretrained")
    assert head.build(0).cfg.train.epochs == 10 and head.build(0).cfg.train.batch_size == 64  # smoke: 10 epochs
    demo_head = {s.name: s for s in ch04_fusion.chapter_specs(Full(), get_profile("demo"), None, run_dir="r")}[ch04_fusion.HEADLINE]
    assert demo_head.build(0).cfg.train.epochs == fusion.SCORE_FUSION_TRAINING["epochs"] == 150
    assert specs["lab_ct_fusion"].requires == ("ct_cnn_pretrained",) and specs["lab_pet_fusion"].requires == ("pet_cnn",)
    assert specs["lab_pet_ct_late"].requires == ()
    # the control: the same network and training, laboratory and lesion-feature branches only
    control, fused = specs[ch04_fusion.CONTROL].build(0), head.build(0)
    assert control.modalities == ["labs", "pet_features"] and not control.fold_models
    assert specs[ch04_fusion.CONTROL].requires == () and specs[ch04_fusion.CONTROL].bound == "lab_pet_features"
    assert control.cfg == fused.cfg and fused.cfg.table_scores == ("pet_features",)  # the lesion features: a score
    assert specs[ch04_fusion.CONTROL].inputs == ("laboratory values + SR-PET lesion-feature score, the fusion network "
                                                 "without CNN branches (adaptive; control)")
    scratch = {s.name: s for s in ch04_fusion.chapter_specs(Full(), smoke, None, run_dir="r")}  # no pretraining
    assert scratch["pet_ct_fusion"].requires == ("pet_cnn", "ct_cnn")
    assert scratch["lab_pet_ct_fusion"].inputs.endswith("adaptive fusion, image branches: the fold's unimodal CNN scores")
    demo = {s.name: s for s in ch04_fusion.chapter_specs(Full(), get_profile("demo"), None, run_dir="r")}
    assert [n for n, s in demo.items() if s.build is None] == ["ct_cnn_pretrained"]
    # the demo's late fusion stacks the cross-fitted scores of the fold CNNs (no CNN refitted inside a training part)
    late = demo["lab_pet_ct_late"]
    assert late.requires == ("pet_cnn", "ct_cnn") and set(late.build(0).fold_models) == {"pet", "ct"}
    assert "the CNNs' cross-fitted" in late.inputs
    neural = {s.name: s for s in ch04_fusion.chapter_specs(Full(), replace(smoke, fusion_models="neural"), None,
                                                              run_dir="r")}
    assert neural["lab_pet_ct_late"].reason == "not trained in the smoke profile (fusion_models = neural)"
    # fold_models (not cross-fitted) scores would leak into the stacking: there the late fusion refits its bases
    assert specs["lab_pet_ct_late"].requires == () and not specs["lab_pet_ct_late"].build(0).fold_models


def test_chapter_04_writes_cross_fitted_scores_for_the_image_models_its_fusions_read(tmp_path):
    from dataclasses import replace
    from types import SimpleNamespace

    from prrt.profiles import get_profile

    complete, y, _ = _multimodal(missing=False)
    s = sp.make_splits(y, 3, 1, 0)
    crossed = replace(get_profile("smoke"), fusion_image_branches="cross_fitted", fusion_models="fusion")
    specs = ch04_fusion.chapter_specs(_Cohort(), crossed, None, run_dir=tmp_path)
    head = {x.name: x for x in specs}[ch04_fusion.HEADLINE]
    assert head.inputs.endswith("image branches: the fold's unimodal CNN scores (training patients: cross-fitted)")
    assert head.requires == ("pet_cnn", "ct_cnn")
    fused = head.build(0)
    assert all(f.cross_fitted for f in fused.fold_models.values())
    assert fused.cfg.train.batch_size == fusion.SCORE_FUSION_TRAINING["batch_size"]  # a score fusion's training
    assert "cross-fitting" in ch04_fusion.image_branches_text(crossed, False)
    ctx = SimpleNamespace(profile=crossed, cohort=_Cohort(), splits=s, seed=0, engine=None, run_dir=tmp_path)
    assert ch04_fusion.write_cross_fitted_scores(ctx, specs, complete) == ["pet_cnn", "ct_cnn"]
    for name in ("pet_cnn", "ct_cnn"):
        written = pd.read_csv(fusion.cross_fitted_path(tmp_path, name))
        assert len(written) == 3 * 2 / 3 * len(y.dropna()) and set(written["fold_b"]) == {1, 2}
    # the other settings write nothing
    for other in ("fold_models", "end_to_end"):
        profile = replace(crossed, fusion_image_branches=other)
        assert ch04_fusion.write_cross_fitted_scores(SimpleNamespace(**{**vars(ctx), "profile": profile}),
                                                     specs, complete) == []


def test_image_branches_text_says_how_the_run_trained_them():
    from dataclasses import replace

    from prrt.profiles import get_profile

    demo = get_profile("demo")
    text = ch04_fusion.image_branches_text(demo, True)
    assert "train no CNN of their own" in text and "the pretrained CT CNN above" in text
    assert "the CT CNN of chapter 3)" in ch04_fusion.image_branches_text(demo, False)
    assert ch04_fusion.image_branches_text(replace(demo, fusion_image_branches="end_to_end"), True) == (
        "In this run the fusions train their SR-PET and CT encoders end to end (the CT encoder from the pretrained "
        "weights), with the rest of the network.")
    assert ch04_fusion.image_branches_text(get_profile("paper"), False).endswith("end to end, with the rest of the network.")


def test_modality_dropout_hides_sources_never_one_half_of_sr_pet_and_never_everything():
    of_source = torch.tensor([0, 1, 1, 2])  # labs, pet_features, pet, ct: labs; SR-PET (features and CNN); CT
    present = torch.ones((4000, 4))
    present[:1000, 1:3] = 0  # no PET
    present[1000:1500, 3] = 0  # no CT
    g = torch.Generator().manual_seed(0)
    out = neural_fusion.drop_sources(present, of_source, 3, 0.3, g)
    assert ((out[:, 1] == out[:, 2]) | (present[:, 1] != present[:, 2])).all()  # SR-PET's two parts go together
    assert (out <= present).all() and (out.sum(dim=1) > 0).all()  # only present ones dropped, never all
    dropped_pet = ((present[:, 2] == 1) & (out[:, 2] == 0)).float().sum() / (present[:, 2] == 1).sum()
    assert 0.2 < float(dropped_pet) < 0.35  # about the rate (less where it was a patient's last source)
    assert (out[:1000, 1:3] == 0).all()
    # no dropout: nothing changes
    assert torch.equal(neural_fusion.drop_sources(present, of_source, 3, 0.0, g), present)


def test_the_adaptive_gate_is_cross_modal_each_weight_depends_on_the_other_modalities():
    torch.manual_seed(0)
    encoders = {m: fusion.LabEncoder(3, 0) for m in ("labs", "pet", "ct")}
    net = fusion.FusionNet(encoders, "adaptive", dim=4)
    x = {m: torch.randn(6, 3) for m in encoders}
    present = torch.ones((6, 3))
    _, w = net.embed(x, present)
    np.testing.assert_allclose(w.sum(dim=1).detach().numpy(), 1.0, rtol=1e-6)
    # change the CT input only. At the start the cross-modal term is zero: a per-modality gate, which keeps the ratio
    # of the laboratory and SR-PET weights fixed
    x2 = {**x, "ct": torch.randn(6, 3) * 3}

    def ratio(inputs):
        _, w = net.embed(inputs, present)
        return (w[:, 0] / w[:, 1]).detach()

    torch.testing.assert_close(ratio(x), ratio(x2))
    # once the cross-modal term has learnt something, the CT moves the weight of the laboratory values too
    with torch.no_grad():
        net.cross_gate.weight.normal_()
    assert not torch.allclose(ratio(x), ratio(x2), rtol=1e-3)
    assert sum(p.numel() for p in net.cross_gate.parameters()) == (3 * 4 + 3) * 3 + 3
    # a missing modality gets no weight
    present[:3, 2] = 0
    _, w3 = net.embed(x, present)
    assert (w3[:3, 2] == 0).all() and torch.allclose(w3.sum(dim=1), torch.ones(6))


def test_a_model_on_a_share_of_the_labels_sees_a_stratified_share_the_same_for_every_model():
    seen, said = [], []

    class Recorder:
        def fit(self, data, part, seed, progress=True, desc=""):
            seen.append((sorted(part.fit), sorted(part.val)))
            said.append((progress, desc))

    X, y = _table(60)
    data = base_.ModelData(y, table=X)
    part = base_.TrainingPart(fit=list(y.index[:48]), val=list(y.index[48:]))
    for _ in range(2):
        base_.FewerLabels(Recorder(), 0.25).fit(data, part, seed=5)
    (fit, val), (fit2, _) = seen
    assert fit == fit2 and len(fit) == 12 and set(fit) <= set(part.fit) and val == sorted(part.val)
    assert y.loc[fit].sum() == 4  # 16 short PFS among 48: a quarter of each class
    for other in (6, 7, 5 + 2**32 - 1):
        base_.FewerLabels(Recorder(), 0.25).fit(data, part, seed=other)
        assert seen[-1][0] != fit, other  # another fold seed, another share
    base_.FewerLabels(Recorder(), 1.0).fit(data, part, seed=5)
    assert seen[-1][0] == sorted(part.fit)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match=r"share of labels must be in \(0, 1\]"):
            base_.FewerLabels(Recorder(), bad)
    # the wrapped model gets the progress bar and its label as given (by default a bar without a label)
    assert said[0] == (True, "")
    base_.FewerLabels(Recorder(), 0.25).fit(data, part, seed=5, progress=False, desc="r0 f1")
    assert said[-1] == (False, "r0 f1")
    # a tiny share keeps one patient of each class
    few = base_.TrainingPart(fit=list(y.index[:4]), val=[])  # two of each class
    base_.FewerLabels(Recorder(), 0.25).fit(data, few, seed=5)
    assert len(seen[-1][0]) == 2 and y.loc[seen[-1][0]].sum() == 1


def test_with_images_that_carry_no_signal_a_cross_fitted_fusion_does_no_worse_than_the_labs_alone(tmp_path):
    """Images shuffled among patients carry no label signal, but a CNN still memorises its training patients.
    Given that CNN's scores of its own training patients (``fold_models``), the fusion learns to trust them and
    falls below the laboratory model; given cross-fitted scores, it learns they are worth nothing and stays
    within 0.02 of it."""
    rng = np.random.default_rng(3)
    n = 120
    y = pd.Series((rng.random(n) < 0.35).astype(float), index=[f"P{i:03d}" for i in range(n)])
    table = pd.DataFrame({"cga": 1.2 * y + rng.normal(size=n), "ggt": rng.normal(size=n)}, index=y.index)
    pet = torch.from_numpy(rng.random((n, 1, 8, 8, 6)).astype(np.float32))  # noise: no label in the images
    data = base_.ModelData(y, table=table, images={"pet": base_.ImageSet(pet, list(y.index))})
    s = sp.make_splits(y, 3, 1, 0)  # one repeat: the same gaps as two (-0.015 and -0.13 with both), in 2/3 of the time
    memorising = training.TrainConfig(epochs=40, batch_size=16, lr=3e-3, weight_decay=0.0, dropout=0.0,
                                      val_fraction=0.0, augment=False)
    pet_cnn = image_model.image_spec("pet_cnn", "pet", memorising, "03", "PET", True)
    labs = tabular.table_spec("lab_lr", "02", "labs", ["cga", "ggt"], lambda seed: LogisticRegression())
    results, _ = loop.run_models([pet_cnn, labs], data, None, s, _Profile(), 0, tmp_path, keep_models=True)
    fold = next(sp.iter_folds(s))
    cnn = results["pet_cnn"].models[(fold.repeat, fold.fold)]
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(y.loc[fold.train], cnn.predict(data, fold.train)) > 0.95  # it memorised its patients
    fusion.write_cross_fitted(tmp_path, "pet_cnn", loop.cross_fitted_scores(pet_cnn, data, s, 0, progress=False))

    class Labs:
        labs = ("cga", "ggt")
        modalities = ("pet",)

    cfg = fusion.FusionConfig(training.TrainConfig(**{**fusion.SCORE_FUSION_TRAINING, "val_fraction": 0.0}),
                              mechanism="intermediate", **fusion.SCORE_FUSION_NETWORK)
    auroc = {"labs": per_repeat_metrics(results["lab_lr"].predictions)["auroc"].mean()}
    for branches in ("fold_models", "cross_fitted"):
        source = fusion.FoldModelScores(tmp_path, "pet_cnn", "pet", "03", cross_fitted=branches == "cross_fitted")
        spec = ch04_fusion.neural_fusion_spec(branches, "04", "labs + PET", ["labs", "pet"], Labs(), cfg,
                                              fold_models={"pet": source})
        fused, _ = loop.run_models([spec], data, None, s, _Profile(), 0, tmp_path)
        auroc[branches] = per_repeat_metrics(fused[branches].predictions)["auroc"].mean()
    assert auroc["cross_fitted"] >= auroc["labs"] - 0.02, auroc
    assert auroc["fold_models"] < auroc["cross_fitted"] - 0.02, auroc  # the leak this guards against


def test_the_chapter_says_whether_the_gate_beat_concatenation_and_why_not():
    summary = _summary_rows({ch04_fusion.HEADLINE: 0.801, "lab_pet_ct_intermediate": 0.82}).assign(n_patients=116)
    assert ch04_comparison.gate_text(summary, "adaptive") == (
        "In this run the cross-modal gate did not beat concatenation: AUROC 0.80 against 0.82 (concatenation, "
        "`lab_pet_ct_intermediate`). A likely reason, not tested here: the gate is learnt from the same few training "
        "patients of each fold as the rest of the network, and it can only re-weight the sources' embeddings, while "
        "concatenation lets the final layer weigh each source's evidence directly; with a cohort of this size the "
        "extra freedom of a weighting per patient may cost more than it brings.")
    weights = pd.DataFrame({"labs": [0.7, 0.5], "pet_features": [0.1, 0.2], "pet": [0.1, 0.2], "ct": [0.1, 0.1]})
    assert ch04_comparison.gate_text(summary, "adaptive", (ch04_fusion.HEADLINE, weights)).endswith(
        "may cost more than it brings. On average over the patients the gate gave the laboratory values 0.60, the "
        "SR-PET lesion features 0.15, the PET CNN 0.15 and the CT CNN 0.10 (each patient's weights sum to one).")
    # weights of another model (an intermediate headline's, equal by construction) are not the gate's
    assert ch04_comparison.gate_text(summary, "adaptive", ("lab_pet_ct_intermediate", weights)).endswith("it brings.")
    better = _summary_rows({ch04_fusion.HEADLINE: 0.80, "lab_pet_ct_adaptive": 0.83})
    assert ch04_comparison.gate_text(better, "intermediate") == (
        "In this run the cross-modal gate beat concatenation: AUROC 0.83 against 0.80.")
    assert ch04_comparison.gate_text(summary.iloc[:1], "adaptive") == ""


def test_late_fusion_on_cross_fitted_sources_stacks_scores_of_models_that_never_saw_the_patient(tmp_path):
    complete, y, _ = _multimodal(missing=False)
    s = sp.make_splits(y, 3, 1, 0)
    tcfg = training.TrainConfig(epochs=2, batch_size=8, val_fraction=0.0)
    pet_cnn = image_model.image_spec("pet_cnn", "pet", tcfg, "03", "PET", True)
    loop.run_models([pet_cnn], complete, None, s, _Profile(), 0, tmp_path)
    scores = loop.cross_fitted_scores(pet_cnn, complete, s, 0, progress=False)
    fusion.write_cross_fitted(tmp_path, "pet_cnn", scores)
    with pytest.raises(ValueError, match="late fusion reads only cross-fitted scores"):
        fusion.LateFusion([], fold_models={"pet": fusion.FoldModelScores(tmp_path, "pet_cnn", "pet")})
    source = fusion.FoldModelScores(tmp_path, "pet_cnn", "pet", "03", cross_fitted=True)
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    labs = tabular.table_spec("lab_lr", "02", "labs", ["cga", "ggt"],
                              lambda seed: make_pipeline(SimpleImputer(), LogisticRegression()))
    spec = ch04_fusion.late_fusion_spec("late", "04", "labs + PET", [labs, pet_cnn], 2, fold_models={"pet": source})
    assert spec.requires == ("pet_cnn",)
    res = loop.cross_validate(spec, complete, s, seed=0, progress=False, keep_models=True)
    for f in sp.iter_folds(s):
        m = res.models[(f.repeat, f.fold)]
        part = loop.inner_split(f.train, y, 0.0, loop.fold_seed(0, f.repeat, f.fold))
        # the PET CNN was not refitted: its stacking inputs are the cross-fitted scores, standardised
        assert [t for t in m.trace if t[0] == "pet_cnn"] == [("pet_cnn", [], part.all)]
        want = loop.training_score_of(scores, f.repeat, f.fold, part.all).to_numpy()
        z = m.features(complete, part.all)["unimodal_logits"]
        mean, sd = m.scale_[1]
        own = fusion.network_scores(source.load(part, complete), complete.images["pet"].take(part.all))
        np.testing.assert_allclose(z[:, 1], (own - mean) / sd, rtol=1e-5)  # at prediction: the fold CNN's own
        np.testing.assert_allclose((own.mean(), own.std()), (mean, sd), rtol=1e-5)
        assert not np.allclose(want, own)
    assert set(res.predictions.loc[res.predictions["fold"] >= 0, "patient"]) == set(y.dropna().index)


def test_a_fusion_without_a_source_stands_beside_the_model_that_never_had_it():
    summary = _summary_rows({"lab_rf": 0.64, "lab_logreg": 0.66, "pet_features_logreg": 0.75, "pet_cnn": 0.73,
                             "lab_pet_fusion": 0.8, "pet_ct_fusion": 0.78, ch04_fusion.HEADLINE: 0.82},
                            status={"pet_ct_fusion": "skipped: no"})
    stand_in = ch04_comparison.stand_in
    assert stand_in(ch04_fusion.HEADLINE, "ct", summary) == "lab_pet_fusion"  # the fusion of what is left
    assert stand_in(ch04_fusion.HEADLINE, "labs", summary) is None  # SR-PET + CT did not run
    assert stand_in("lab_pet_fusion", "pet", summary) == "lab_logreg"  # the best model of the one source left
    assert stand_in("lab_pet_fusion", "labs", summary) == "pet_features_logreg"


def _noise_lesions(seed: int, n: int = 120):
    """Laboratory values with signal (cga) and eight lesion features that carry none."""
    rng = np.random.default_rng(seed)
    y = pd.Series((rng.random(n) < 0.35).astype(float), index=[f"P{i:03d}" for i in range(n)])
    table = pd.DataFrame({"cga": 1.2 * y + rng.normal(size=n), "ggt": rng.normal(size=n)}, index=y.index)
    for f in FEATURES:
        table[f] = rng.lognormal(size=n)
    return base_.ModelData(y, table=table)


class _LabsAndPet:
    labs = ("cga", "ggt")
    modalities = ("pet",)


def _control(table_scores, mechanism="adaptive"):
    cfg = fusion.FusionConfig(training.TrainConfig(**{**fusion.SCORE_FUSION_TRAINING, "val_fraction": 0.0}),
                              mechanism=mechanism, **{**fusion.SCORE_FUSION_NETWORK, "table_scores": table_scores})
    return ch04_fusion.neural_fusion_spec("control", "04", "labs + lesions", ["labs", "pet_features"], _LabsAndPet(),
                                          cfg)


def test_the_lesion_feature_score_of_a_training_patient_comes_from_a_regression_that_never_saw_them():
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    data = _noise_lesions(0, 60)
    data.table.loc["P005", FEATURES] = np.nan  # no PET: no lesion features, no score
    part = base_.TrainingPart(fit=list(data.y.index[:50]), val=[])
    model = _control(("pet_features",)).build(0)
    model.fit(data, part, 0, progress=False)
    regression, oof, (full_mean, full_sd), (oof_mean, oof_sd) = model.table_models_["pet_features"]
    ids = [p for p in part.fit if p != "P005"]
    assert list(oof.index) == ids
    x, y = data.table.loc[ids, FEATURES], data.y.loc[ids].astype(int)
    want = cross_val_predict(tabular.logistic_regression(0), x, y, method="decision_function",
                             cv=StratifiedKFold(3, shuffle=True, random_state=0))
    np.testing.assert_allclose(oof.to_numpy(), want)  # each from a regression fitted without the patient's third
    assert not np.allclose(want, regression.decision_function(x))  # not the in-sample score of the final regression
    np.testing.assert_allclose((oof_mean, oof_sd), (want.mean(), want.std()))
    # what the network trains on: those scores, standardised; a patient without lesion features gets 0
    trained_on = model._table_score(data, "pet_features", part.fit, training=True)[:, 0].numpy()
    np.testing.assert_allclose(trained_on[[part.fit.index(p) for p in ids]], (want - want.mean()) / want.std(),
                               rtol=1e-5)
    assert trained_on[part.fit.index("P005")] == 0
    assert "pet_features" not in model.tables_ and model.tables_["labs"]  # the labs stay values
    # the test patients get the regression of all training patients, on its own scale
    test = list(data.y.index[50:])
    np.testing.assert_allclose((full_mean, full_sd), fusion.mean_sd(regression.decision_function(x)), rtol=1e-6)
    assert np.isfinite(model.predict(data, test)).all()
    few = base_.TrainingPart(fit=list(data.y[data.y == 0].index[:20]) + list(data.y[data.y == 1].index[:1]), val=[])
    with pytest.raises(ValueError, match="'pet_features' score needs at least two training patients of each outcome"):
        _control(("pet_features",)).build(0).fit(data, few, 0, progress=False)


def test_the_fusions_of_a_fold_share_one_lesion_feature_score(monkeypatch):
    """Chapter 04 fits several fusions with the lesion-feature score on each fold (and chapter 05 restores one): the
    regressions are fitted once per fold and content; other patients, other values or another fitting part get
    their own, and the shared score is what each fusion would have computed alone."""
    from prrt.learn import neural_fusion

    fitted = []
    real = neural_fusion.logistic_regression
    monkeypatch.setattr(neural_fusion, "logistic_regression", lambda seed: fitted.append(seed) or real(seed))
    monkeypatch.setattr(neural_fusion, "_table_scores", {})
    data = _noise_lesions(1, 60)
    part = base_.TrainingPart(fit=list(data.y.index[:45]), val=[])

    def score(data, part, mechanism="adaptive"):
        model = _control(("pet_features",), mechanism).build(0)
        model._prepare(data, part)
        return model.table_models_["pet_features"]

    first = score(data, part)
    assert len(fitted) == 2  # the regression of all training patients and the cross-fitting's (cloned per fold)
    again = score(data, part, "intermediate")
    assert len(fitted) == 2 and again[0] is first[0]
    monkeypatch.setattr(neural_fusion, "_table_scores", {})
    alone = score(data, part)
    pd.testing.assert_series_equal(alone[1], first[1])
    assert alone[2:] == first[2:]
    fitted.clear()
    changed = data.table.copy()
    changed.loc["P003", FEATURES[0]] += 1.0
    score(base_.ModelData(data.y, table=changed), part)
    score(data, base_.TrainingPart(fit=list(data.y.index[1:46]), val=[]))
    score(data, base_.TrainingPart(fit=list(data.y.index[:40]), val=list(data.y.index[40:45])))
    assert len(fitted) == 6


def test_a_restored_fusion_fits_the_lesion_feature_regression_alone_and_predicts_what_the_fitted_one_did(monkeypatch):
    """Chapter 05 restores the fold's fusion to score test patients: it needs the regression of all training
    patients, not their cross-fitted scores (three more regressions), which it computes only when asked for."""
    from prrt.learn import neural_fusion

    data = _noise_lesions(2, 60)
    part = base_.TrainingPart(fit=list(data.y.index[:45]), val=[])
    test = list(data.y.index[45:])
    monkeypatch.setattr(neural_fusion, "_table_scores", {})
    model = _control(("pet_features",)).build(0)
    model.fit(data, part, 0, progress=False)
    want = model.predict(data, test)
    training = model._inputs(data, part.fit, training=True)["pet_features"]
    checkpoint = {"modalities": model.modalities, "state_dict": model.model.state_dict()}
    fitted = []
    real = neural_fusion.logistic_regression
    monkeypatch.setattr(neural_fusion, "logistic_regression", lambda seed: fitted.append(seed) or real(seed))
    monkeypatch.setattr(neural_fusion, "_table_scores", {})  # another process: nothing computed yet
    restored = _control(("pet_features",)).build(0).restore(data, part, checkpoint)
    np.testing.assert_allclose(restored.predict(data, test), want, rtol=1e-6)
    assert len(fitted) == 1 and restored.table_models_["pet_features"][1] is None
    # asked for the training patients' inputs, it cross-fits them as the fitted fusion did
    np.testing.assert_allclose(restored._inputs(data, part.fit, training=True)["pet_features"].numpy(), training.numpy())
    assert len(fitted) == 2


def test_lesion_features_that_carry_nothing_pull_the_fusion_down_less_as_a_cross_fitted_score():
    """Lesion features of noise: given their eight values, the network learns to trust them (AUROC well below the
    laboratory model's); given one cross-fitted score, it learns from patients the score never saw that it is worth
    little. Three cohorts, the first three seeds, one repeat of 3-fold cross-validation each (two repeats gave gaps of
    0.067 and -0.028 where one gives 0.079 and -0.015, in twice the time)."""
    auroc = {(): [], ("pet_features",): [], "labs": []}
    for seed in range(3):
        data = _noise_lesions(seed)
        s = sp.make_splits(data.y, 3, 1, 0)
        labs = tabular.table_spec("lab_lr", "02", "labs", ["cga", "ggt"], lambda seed: LogisticRegression())
        auroc["labs"].append(per_repeat_metrics(loop.cross_validate(labs, data, s, 0, progress=False).predictions)
                             ["auroc"].mean())
        for scores in ((), ("pet_features",)):
            res = loop.cross_validate(_control(scores), data, s, 0, progress=False)
            auroc[scores].append(per_repeat_metrics(res.predictions)["auroc"].mean())
    mean = {k: float(np.mean(v)) for k, v in auroc.items()}
    assert mean[("pet_features",)] > mean[()] + 0.03, auroc
    assert mean[("pet_features",)] > mean["labs"] - 0.05, auroc


def test_a_fold_cnn_scores_each_patient_once_for_every_fusion_that_reads_it(tmp_path, monkeypatch):
    complete, y, _ = _multimodal(missing=False)
    s = sp.make_splits(y, 3, 1, 0)
    pet_cnn = image_model.image_spec("pet_cnn", "pet", training.TrainConfig(epochs=1, batch_size=8), "03", "PET", True)
    loop.run_models([pet_cnn], complete, None, s, _Profile(), 0, tmp_path)
    fold = next(sp.iter_folds(s))
    part = loop.inner_split(fold.train, y, 0.2, loop.fold_seed(0, fold.repeat, fold.fold))
    source = fusion.FoldModelScores(tmp_path, "pet_cnn", "pet", "03")
    want = fusion.network_scores(source.load(part, complete), complete.images["pet"].take(fold.test))
    scored = []
    real = fusion.network_scores
    monkeypatch.setattr(fusion, "network_scores", lambda net, x: scored.append(len(x)) or real(net, x))
    np.testing.assert_allclose(source.scores(part, complete, fold.test), want, rtol=1e-6)
    np.testing.assert_allclose(source.scores(part, complete, fold.test[::-1]), want[::-1], rtol=1e-6)
    source.scores(part, complete, fold.test[:3] + part.fit[:2])
    assert scored == [len(fold.test), 2]  # only the two new patients were scored again
    # other images under the same names (another cohort): scored anew
    other = base_.ModelData(y, images={"pet": base_.ImageSet(complete.images["pet"].x.flip(2),
                                                             complete.images["pet"].patients)})
    assert not np.allclose(source.scores(part, other, fold.test), want)
    assert scored[-1] == len(fold.test)
    assert pickle.loads(pickle.dumps(source))._seen == {}  # sent to a worker without them


def test_a_model_on_a_share_of_the_labels_is_the_wrapped_model_at_prediction_and_cannot_be_restored():
    class Wrapped:
        def predict(self, data, patients):
            return np.full(len(patients), 0.3)

        def features(self, data, patients):
            return {"embedding": np.c_[data.y.loc[patients].to_numpy(), np.ones(len(patients))]}

    X, y = _table(30)
    data = base_.ModelData(y, table=X)
    fewer = base_.FewerLabels(Wrapped(), 0.5)
    np.testing.assert_array_equal(fewer.predict(data, ["P001", "P002"]), [0.3, 0.3])
    np.testing.assert_array_equal(fewer.features(data, ["P001", "P002", "P003"])["embedding"],
                                  Wrapped().features(data, ["P001", "P002", "P003"])["embedding"])
    with pytest.raises(NotImplementedError, match="^a model fitted on a share of the labels leaves no checkpoint to "
                                                  "restore$"):
        fewer.restore(data, base_.TrainingPart(list(y.index[:20]), []), {})


def test_a_fusion_gives_the_same_numbers_whether_or_not_its_cnns_were_loaded_before(tmp_path):
    """The fold CNNs are loaded once per process for every fusion that reads them; loading one draws random
    numbers (a network is built before its weights are read), so the fusion's own weights must be drawn from its seed
    after that, or a fusion's numbers would depend on which fusions ran before it."""
    complete, y, _ = _multimodal(missing=False)
    s = sp.make_splits(y, 3, 1, 0)
    pet_cnn = image_model.image_spec("pet_cnn", "pet", training.TrainConfig(epochs=1, batch_size=8), "03", "PET", True)
    loop.run_models([pet_cnn], complete, None, s, _Profile(), 0, tmp_path)
    cfg = fusion.FusionConfig(training.TrainConfig(epochs=3, batch_size=16, lr=3e-3, val_fraction=0.0),
                              mechanism="adaptive", dim=8, lab_width=0)

    def spec():
        source = fusion.FoldModelScores(tmp_path, "pet_cnn", "pet", "03")
        return ch04_fusion.neural_fusion_spec("f", "04", "labs + PET", ["labs", "pet"], _Cohort(), cfg,
                                              fold_models={"pet": source})

    fresh = loop.cross_validate(spec(), complete, s, 0, progress=False).predictions
    warm = spec()
    loop.cross_validate(warm, complete, s, 0, progress=False)  # loads every fold's CNN into the source
    pd.testing.assert_frame_equal(loop.cross_validate(warm, complete, s, 0, progress=False).predictions, fresh)


def test_the_source_removal_table_fits_the_text_column():
    removal = pd.DataFrame({"fusion": [ch04_fusion.HEADLINE] * 2, "removed at test time": ["CT", "SR-PET"],
                            "AUROC, all sources": [0.714, 0.714], "AUROC, source removed": [0.701, 0.655],
                            "model that never had it": ["lab_pet_fusion", "–"], "its AUROC": [0.712, np.nan]})
    t = ch04_comparison.source_removal_table(removal)
    assert list(t.columns) == ["AUROC: all, removed", "never had it (AUROC)"]
    assert t.loc[(ch04_fusion.HEADLINE, "CT")].tolist() == ["0.71, 0.70", "lab_pet_fusion (0.71)"]
    assert t.loc[(ch04_fusion.HEADLINE, "SR-PET"), "never had it (AUROC)"] == "–"
    assert ch04_comparison.source_removal_table(pd.DataFrame()).empty


def test_the_paired_tests_table_fits_the_text_column_and_keeps_what_the_text_quotes():
    comparisons = pd.DataFrame({"model": [ch04_fusion.HEADLINE, ch04_comparison.CT_PRETRAINED],
                                "versus": [ch04_fusion.CONTROL, "ct_cnn"], "auroc_model": [0.714, 0.707],
                                "auroc_versus": [0.69, 0.715], "difference": [0.036, -0.0081],
                                "ci_low": [-0.08, -0.05], "ci_high": [0.152, 0.034], "p": [0.2, 0.6],
                                "p_holm": [0.8, 1.0]}, index=["control: ...", "pretraining: ..."])
    t = ch04_comparison.comparisons_table(comparisons)
    assert list(t.columns) == ["AUROC", "difference [95 % CI]", "p (Holm)"]
    assert list(t.index) == [ch04_fusion.CONTROL, "ct_cnn_pretrained vs ct_cnn"]
    assert t.loc[ch04_fusion.CONTROL].tolist() == ["0.71 vs 0.69", "+0.036 [-0.080, +0.152]", "0.800"]
