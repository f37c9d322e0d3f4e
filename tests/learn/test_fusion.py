"""Fusion models: nested late fusion, neural fusion with missing modalities, the pretrained CT branch."""

from __future__ import annotations

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
from prrt.study import ch04_fusion


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


def test_headline_text_reports_the_fusion_and_its_paired_tests():
    summary = pd.DataFrame([
        {"model": "pet_cnn", "status": "ran", "auroc_mean": 0.7012, "auroc_sd": 0.031, "auprc_mean": 0.5, "auprc_sd": 0.02,
         "n_repeats": 5},
        {"model": "lab_pet_features_rf", "status": "ran", "auroc_mean": 0.821, "auroc_sd": 0.012, "auprc_mean": 0.7,
         "auprc_sd": 0.03, "n_repeats": 5},
        {"model": "lab_pet_ct_fusion", "status": "ran", "auroc_mean": 0.7049, "auroc_sd": 0.0512, "auprc_mean": 0.551,
         "auprc_sd": 0.046, "n_repeats": 5}])
    comparisons = pd.DataFrame([
        {"comparison": "a", "model": "lab_pet_ct_fusion", "versus": "pet_cnn", "difference (mean over folds)": "+0.004",
         "p, corrected resampled t-test": "0.920"},
        {"comparison": "b", "model": "lab_pet_ct_fusion", "versus": "lab_pet_features_rf",
         "difference (mean over folds)": "-0.116", "p, corrected resampled t-test": "<0.001"},
        {"comparison": "c", "model": "ct_cnn_pretrained", "versus": "ct_cnn", "difference (mean over folds)": "+0.010",
         "p, corrected resampled t-test": "0.5"}]).set_index("comparison")
    assert ch04_fusion.headline_text(summary, comparisons) == (
        "In this run the laboratory + SR-PET + CT fusion reached an AUROC of 0.70 ± 0.05 (AUPRC 0.55 ± 0.05; "
        "mean ± SD over 5 repeats). Against the best unimodal model, `pet_cnn` (0.70 ± 0.03), the per-fold AUROCs "
        "differ on average by +0.004 (corrected resampled t-test p = 0.920). Against the classical baseline, `lab_pet_features_rf` "
        "(0.82 ± 0.01), the per-fold AUROCs differ on average by -0.116 (corrected resampled t-test p <0.001).")
    assert ch04_fusion.headline_text(summary.iloc[:2], pd.DataFrame()) == (
        "The laboratory + SR-PET + CT fusion did not run (not in the summary), so there is no fusion result to report.")
    skipped = summary.assign(status=["ran", "ran", "skipped: fewer than two of its modalities are in the manifest"])
    assert ch04_fusion.headline_text(skipped, pd.DataFrame()) == (
        "The laboratory + SR-PET + CT fusion did not run (skipped: fewer than two of its modalities are in the "
        "manifest), so there is no fusion result to report.")
    assert ch04_fusion.headline_text(summary, pd.DataFrame()).endswith("over 5 repeats).")


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

    pet = pd.DataFrame({f: [float(i), float(i + 1)] for i, f in enumerate(FEATURES)}, index=["P001", "P002"])
    (tmp_path / "features").mkdir()
    pet.to_csv(tmp_path / "features" / "pet_features.csv")
    X = ch04_fusion.chapter_table(Cohort(), tmp_path)
    assert list(X.columns) == ["cga", "age", *FEATURES] and list(X.index) == ["P001", "P002"]
    np.testing.assert_array_equal(X[FEATURES].to_numpy(), pet.to_numpy())
    Cohort.modalities = []
    assert list(ch04_fusion.chapter_table(Cohort(), tmp_path).columns) == ["cga", "age"]


def test_fold_model_branches_read_the_cnn_trained_on_the_same_training_part(tmp_path):
    """With image branches from the fold models, a fusion loads, for each fold, the unimodal CNN's
    checkpoint of exactly that training part; the loop fits that CNN first; a fold without such a
    checkpoint is a clear error, never another fold's CNN (which saw this fold's test patients)."""
    data, y, (no_pet, no_ct, no_labs) = _multimodal()
    complete, _, _ = _multimodal(missing=False)  # the unimodal CNNs need every patient's image
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
        assert ck["training_part"] == part.digest()
        for name, value in ck["state_dict"].items():  # the fold's own PET CNN, weight for weight
            assert torch.equal(m.scorers_["pet"].state_dict()[name], value), name
        fused = torch.load(tmp_path / "checkpoints" / "f" / f"r{f.repeat}_f{f.fold}.pt", weights_only=True)
        assert fused["fold_models"] == {"pet": "pet_cnn", "ct": "ct_cnn_pretrained"}
        # the branch is one standardised number: mean 0, SD 1 over the fitting patients that have a PET
        z = m._inputs(complete, part.fit)["pet"][:, 0].numpy()
        assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    w = m.modality_weights(data, no_pet)
    assert (w.loc[no_pet, ["pet", "pet_features"]] == 0).all().all()
    # a training part no checkpoint was trained on
    other = base_.TrainingPart(fit=list(y.dropna().index[:20]), val=list(y.dropna().index[20:26]))
    with pytest.raises(FileNotFoundError, match=r"reads the fold models of pet_cnn \(chapter 03\).*no checkpoint trained "
                                                r"on this fold's training part"):
        scores["pet"].load(other)


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
        source.training_scores(part0, part0.fit[:1])
    assert fusion.FoldModelScores(tmp_path, "pet_cnn", "pet").training_scores(part0, part0.fit) is None
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
        np.testing.assert_allclose(test_z, (m._raw_scores(complete, "pet", f.test) - mean) / sd, rtol=1e-5)
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
    assert smoke.fusion_image_branches == "fold_models" and get_profile("demo").fusion_image_branches == "fold_models"
    assert get_profile("paper").fusion_image_branches == "end_to_end"
    with pytest.raises(ValueError, match="need the run folder"):
        ch04_fusion.chapter_specs(Full(), smoke, None)
    with pytest.raises(ValueError, match="fusion_image_branches must be 'end_to_end', 'fold_models' or "
                                         "'cross_fitted', not 'cnn'"):
        ch04_fusion.chapter_specs(Full(), replace(smoke, fusion_image_branches="cnn"), None, run_dir="r")
    specs = {s.name: s for s in ch04_fusion.chapter_specs(Full(), smoke, {"w": torch.zeros(1)}, run_dir="r")}
    head = specs["lab_pet_ct_fusion"]
    assert head.inputs == ("laboratory values + SR-PET (CNN score and lesion features) + CT, adaptive fusion "
                           "(CT CNN pretrained), image branches: the fold's unimodal CNN scores")
    assert head.requires == ("pet_cnn", "ct_cnn_pretrained")
    assert head.build(0).cfg.train.epochs == 10 and head.build(0).cfg.train.batch_size == 64  # smoke: 10 epochs
    demo_head = {s.name: s for s in ch04_fusion.chapter_specs(Full(), get_profile("demo"), None, run_dir="r")}[ch04_fusion.HEADLINE]
    assert demo_head.build(0).cfg.train.epochs == fusion.SCORE_FUSION_TRAINING["epochs"] == 150
    assert specs["lab_ct_fusion"].requires == ("ct_cnn_pretrained",) and specs["lab_pet_fusion"].requires == ("pet_cnn",)
    assert specs["lab_pet_ct_late"].requires == ()
    scratch = {s.name: s for s in ch04_fusion.chapter_specs(Full(), smoke, None, run_dir="r")}  # no pretraining
    assert scratch["pet_ct_fusion"].requires == ("pet_cnn", "ct_cnn")
    assert scratch["lab_pet_ct_fusion"].inputs.endswith("adaptive fusion, image branches: the fold's unimodal CNN scores")
    demo = {s.name: s for s in ch04_fusion.chapter_specs(Full(), get_profile("demo"), None, run_dir="r")}
    assert [n for n, s in demo.items() if s.build is None] == ["ct_cnn_pretrained", "lab_pet_ct_late"]
    assert demo["lab_pet_ct_late"].reason == "not trained in the demo profile (fusion_models = neural)"


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
    assert ch04_fusion.write_cross_fitted_scores(SimpleNamespace(**{**vars(ctx), "profile": get_profile("smoke")}),
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


def test_external_validation_refuses_cross_fitted_fusions_instead_of_leaking(tmp_path):
    from dataclasses import replace
    from types import SimpleNamespace

    from prrt.profiles import get_profile
    from prrt.study import ch06_external

    ctx = SimpleNamespace(profile=replace(get_profile("smoke"), fusion_image_branches="cross_fitted"), run_dir=tmp_path)
    with pytest.raises(ValueError, match="external validation cannot yet fit fusions whose image branches are "
                                         "cross-fitted"):
        ch06_external.validate_externally(ctx, tmp_path / "site_b.yaml")
