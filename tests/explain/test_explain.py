"""Chapter 05's explanations: Grad-CAM and its numbers, the sanity checks, restoring fold models,
laboratory importance inside the fusion, modality ablation, risk tertiles."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from fusion_fakes import _Cohort, _multimodal, _Profile

from prrt.data.phantoms import planted_lesion_images
from prrt.evaluation import splits as sp
from prrt.evaluation import survival
from prrt.explain import ablation, gradcam, importance, saliency, sanity
from prrt.learn import base, fusion, image_model, loop, training
from prrt.learn.networks import ImageClassifier, build_encoder
from prrt.study import ch04_fusion, ch05_explain, ch05_words
from prrt.study.names import SOURCE_NAMES


# ---- Grad-CAM ------------------------------------------------------------------------------------
def test_minmax_scales_each_map_to_0_1_and_keeps_a_flat_map_zero():
    maps = torch.stack([torch.arange(8.0).view(1, 2, 2, 2) + 3, torch.full((1, 2, 2, 2), 5.0)])
    out = gradcam.minmax(maps)
    assert out[0].min() == 0 and out[0].max() == 1 and out[0].flatten()[3] == pytest.approx(3 / 7)
    assert (out[1] == 0).all()


@pytest.mark.parametrize("shape,layer,voxels", [((2, 32, 32, 32), "encoder.body.10", (8, 8, 8)),
                                                ((2, 24, 24, 20), "encoder.body.6", (12, 12, 10)),
                                                ((1, 96, 96, 96), "encoder.body.14", (12, 12, 12))])
def test_the_target_layer_is_the_deepest_block_with_at_least_eight_voxels_per_axis(shape, layer, voxels):
    net = ImageClassifier(build_encoder("compact", in_channels=shape[0]))
    assert gradcam.target_layer(net, shape) == layer
    assert gradcam.layer_shapes(net, shape, [layer])[layer] == voxels


def test_the_target_layer_of_a_monai_resnet():
    net = ImageClassifier(build_encoder("resnet10"))
    assert gradcam.candidate_layers(net) == [f"encoder.net.layer{i}" for i in range(1, 5)]
    assert gradcam.target_layer(net, (1, 32, 32, 32)) == "encoder.net.layer2"  # 8 voxels; layer3 has 4


def test_gradcam_maps_are_0_1_on_the_input_grid_and_leave_the_network_alone():
    torch.manual_seed(0)
    net = ImageClassifier(build_encoder("compact", in_channels=2)).eval()
    before = copy.deepcopy(net.state_dict())
    x = torch.rand(3, 2, 16, 16, 12)
    maps = gradcam.gradcam_maps(net, x, "encoder.body.2")
    assert maps.shape == (3, 16, 16, 12) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and np.isclose(maps.reshape(3, -1).max(1), 1).all()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    assert not any(m._forward_hooks or m._backward_hooks for m in net.modules())  # hooks went to a copy


# ---- the numbers of a map ------------------------------------------------------------------------
def test_saliency_metrics_on_maps_whose_answer_is_known():
    mask = np.zeros((3, 10, 10, 10), bool)
    mask[:, 4:6, 4:6, 4:6] = True
    inside = np.zeros((10, 10, 10), np.float32)
    inside[4:6, 4:6, 4:6] = 1  # all mass in the lesion
    outside = np.zeros((10, 10, 10), np.float32)
    outside[0, 0, 0] = 1  # far from it
    zero = np.zeros((10, 10, 10), np.float32)
    m = saliency.saliency_metrics(np.stack([inside, outside, zero]), mask, ["a", "b", "c"], dilation_voxels=1)
    chance = 4 ** 3 / 10 ** 3  # the 2-voxel cube dilated by one voxel is 4 wide
    assert m["chance"].tolist()[:2] == pytest.approx([chance, chance])
    assert m.loc[0, "mass_in_mask"] == 1 and m.loc[0, "pointing_hit"] == 1
    assert m.loc[0, "enrichment"] == pytest.approx(1 / chance)
    assert m.loc[1, "mass_in_mask"] == 0 and m.loc[1, "pointing_hit"] == 0
    assert np.isnan(m.loc[2, "mass_in_mask"]) and m.loc[2, "empty_map"]
    # next to the lesion: inside the dilated mask only
    beside = np.zeros((10, 10, 10), np.float32)
    beside[3, 4, 4] = 1
    assert saliency.saliency_metrics(beside[None], mask[:1], ["d"], 1).loc[0, "pointing_hit"] == 1
    assert saliency.saliency_metrics(beside[None], mask[:1], ["d"], 0).loc[0, "pointing_hit"] == 0
    # a patient without lesion: no verdict
    assert np.isnan(saliency.saliency_metrics(inside[None], np.zeros((1, 10, 10, 10)), ["e"]).loc[0, "pointing_hit"])


def test_summarise_saliency_tests_mass_against_chance():
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"model": ["good"] * 20 + ["flat"] * 20,
                         "mass_in_mask": np.r_[rng.uniform(0.3, 0.6, 20), np.full(20, 0.1)],
                         "chance": 0.1, "pointing_hit": np.r_[np.ones(15), np.zeros(25)]})
    s = saliency.summarise_saliency(rows).set_index("model")
    assert s.loc["good", "p (mass > chance)"] < 1e-3 and np.isnan(s.loc["flat", "p (mass > chance)"])
    assert s.loc["good", "pointing hits"] == 0.75 and s.loc["flat", "pointing hits"] == 0


def test_rank_correlation():
    a = np.arange(27.0).reshape(3, 3, 3)
    assert sanity.rank_correlation(a, a ** 2) == pytest.approx(1)
    assert sanity.rank_correlation(a, -a) == pytest.approx(-1)
    assert sanity.rank_correlation(a, np.zeros_like(a)) == 0


def test_randomisation_goes_from_the_top_and_keeps_convolution_and_norm_together():
    net = ImageClassifier(build_encoder("compact"))
    steps = gradcam.randomisation_steps(net)
    assert steps[0] == ["head.1"] and steps[1] == ["encoder.body.12", "encoder.body.13"]
    assert steps[-1] == ["encoder.body.0", "encoder.body.1"] and len(steps) == 5


@pytest.mark.slow
def test_gradcam_finds_the_planted_lesion_and_the_randomised_network_does_not():
    """The only signal is the uptake of one planted lesion; a brighter, larger cube carries none. The
    trained network's map peaks in the lesion in most test patients with the outcome (the class the
    map explains); the same network with every layer re-initialised peaks elsewhere (at the cube),
    and its maps share little ranking with the trained ones. (benchmarks/planted_lesion_gradcam.py
    repeats this over several seeds.)"""
    x, y, masks = planted_lesion_images(140, size=24, seed=10)
    tr, va, te = slice(0, 80), slice(80, 100), slice(100, 140)
    out = training.train_model(x[tr], y[tr], x[va], y[va], training.TrainConfig(epochs=15, augment=False, lr=3e-3),
                            seed=0, progress=False)
    net = out.model.eval()
    layer = gradcam.target_layer(net, x.shape[1:])
    patients = [f"T{i}" for i in range(40)]
    maps = gradcam.gradcam_maps(net, x[te], layer)
    real = saliency.saliency_metrics(maps, masks[te], patients, 1).assign(y=y[te])
    rand = copy.deepcopy(net)
    for names in gradcam.randomisation_steps(rand):
        gradcam.reinitialise(rand, names, 0)
    rmaps = gradcam.gradcam_maps(rand, x[te], layer)
    random = saliency.saliency_metrics(rmaps, masks[te], patients, 1).assign(y=y[te])
    hit, rhit = real[real.y == 1]["pointing_hit"].mean(), random[random.y == 1]["pointing_hit"].mean()
    assert hit >= 0.8 and rhit <= 0.3, (hit, rhit)
    assert real[real.y == 1]["mass_in_mask"].mean() > 2 * real["chance"].mean()
    assert np.median([abs(sanity.rank_correlation(a, b)) for a, b in zip(maps, rmaps)]) < sanity.SIMILAR
    cascade = sanity.cascading_randomisation(net, x[te][:10], layer, patients[:10], seed=1, reference=maps[:10])
    assert cascade["step"].max() == 5
    last = cascade[cascade["step"] == 5]
    assert last["abs_rank_correlation"].median() < sanity.SIMILAR and last["ssim"].median() < sanity.SIMILAR


# ---- fold models back from the run --------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """PET CNN and CT CNN fold models, then a fusion on their scores, written to a run folder. Half the short-PFS
    patients lack the planted PET lesion, so that the laboratory values carry signal the PET does not (with every
    lesion planted, the PET CNN is perfect and the labs add nothing to explain); the fusion concatenates, which on
    these 36 patients learns the two sources more reliably than the gate."""
    run = tmp_path_factory.mktemp("run")
    complete, y, _ = _multimodal(missing=False)
    short = np.flatnonzero(y.fillna(0).to_numpy() == 1)
    complete.images["pet"].x[short[::2], 0, 2:5, 2:5, 2:4] -= 0.8
    s = sp.make_splits(y, 3, 2, 0)
    tcfg = training.TrainConfig(epochs=2, batch_size=8)
    cnns = [image_model.image_spec("pet_cnn", "pet", tcfg, "03", "PET", True),
            image_model.image_spec("ct_cnn", "ct", tcfg, "03", "CT", True)]
    scores = {"pet": fusion.FoldModelScores(run, "pet_cnn", "pet"), "ct": fusion.FoldModelScores(run, "ct_cnn", "ct")}
    cfg = fusion.FusionConfig(training.TrainConfig(**fusion.SCORE_FUSION_TRAINING), mechanism="intermediate",
                              **fusion.SCORE_FUSION_NETWORK)
    fused = ch04_fusion.neural_fusion_spec("f", "04", "all", ["labs", "pet", "ct"], _Cohort(), cfg, fold_models=scores)
    # one torch thread, as in `make test`'s workers: the CNNs' weights, and the thresholds the tests below check,
    # are then the same in a plain `pytest` on any number of cores (with two threads, cga's importance was 0.049)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results, _ = loop.run_models(cnns + [fused], complete, None, s, _Profile(), 0, run, keep_models=True)
    finally:
        torch.set_num_threads(threads)
    return run, complete, y, s, {spec.name: spec for spec in cnns + [fused]}, results


def test_restored_fold_models_give_the_run_s_predictions(fitted):
    run, data, y, s, specs, results = fitted
    for name in ("pet_cnn", "f"):
        back = loop.restore_fold_models(specs[name], data, s, 0, run)
        assert set(back) == set(results[name].models)
        for key, m in back.items():
            test = results[name].predictions.query("repeat == @key[0] and fold == @key[1]")["patient"].tolist()
            np.testing.assert_allclose(m.predict(data, test), results[name].models[key].predict(data, test), atol=1e-6)
    assert set(loop.restore_fold_models(specs["f"], data, s, 0, run, repeats=[1])) == {(1, 0), (1, 1), (1, 2)}
    # on the CPU the restored CNNs give the saved probabilities to the last digits
    assert len(loop.restore_fold_models(specs["pet_cnn"], data, s, 0, run, tolerance=1e-12)) == 6
    ck = torch.load(run / "checkpoints" / "pet_cnn" / "r0_f0.pt", weights_only=True)
    with pytest.raises(ValueError, match="^the checkpoint holds a PET CNN, not a CT one$"):
        image_model.ImageModel("ct", training.TrainConfig()).restore(data, base.TrainingPart([], []), ck)
    del ck["modality"]  # a checkpoint written before checkpoints named their modality: taken as it is
    part = base.TrainingPart(list(y.dropna().index[:10]), [])
    assert image_model.ImageModel("ct", training.TrainConfig()).restore(data, part, ck).prevalence == y.iloc[:10].mean()


def test_restoring_refuses_checkpoints_of_another_run(fitted, tmp_path):
    import shutil

    run, data, y, s, specs, _ = fitted
    other = tmp_path / "other"
    shutil.copytree(run, other)
    with pytest.raises(ValueError, match=r"r0_f0.pt was trained on other patients than repeat 0, fold 0 of this run: "
                                         r"another split or seed, or another share held out for inner validation "
                                         rf"\(the profile's val_fraction, {specs['pet_cnn'].val_fraction:g} now\)$"):
        loop.restore_fold_models(specs["pet_cnn"], data, s, 1, other)  # another seed: other inner parts
    pred = pd.read_csv(other / "predictions" / "pet_cnn.csv")
    pred.loc[pred["fold"] == 1, "probability"] += 0.01
    pred.to_csv(other / "predictions" / "pet_cnn.csv", index=False)
    with pytest.raises(ValueError, match=r"does not reproduce predictions/pet_cnn.csv for repeat 0, fold 1 \(largest "
                                         r"difference 0.01\); the run folder mixes results of different runs$"):
        loop.restore_fold_models(specs["pet_cnn"], data, s, 0, other)
    assert len(loop.restore_fold_models(specs["pet_cnn"], data, s, 0, other, check=False)) == 6  # not compared
    orig = pd.read_csv(run / "predictions" / "pet_cnn.csv")
    orig[orig["fold"] != 2].to_csv(other / "predictions" / "pet_cnn.csv", index=False)
    with pytest.raises(ValueError, match=r"pet_cnn.csv does not hold the test patients of repeat 0, fold 2; the run"):
        loop.restore_fold_models(specs["pet_cnn"], data, s, 0, other)
    (other / "predictions" / "pet_cnn.csv").unlink()
    assert len(loop.restore_fold_models(specs["pet_cnn"], data, s, 0, other, check=False)) == 6  # never read
    with pytest.raises(FileNotFoundError, match="no predictions for model 'pet_cnn'"):
        loop.restore_fold_models(specs["pet_cnn"], data, s, 0, other)
    skipped = base.ModelSpec("gone", "03", "PET", None, reason="the manifest names no PET images")
    with pytest.raises(ValueError, match="^gone did not run: the manifest names no PET images$"):
        loop.restore_fold_models(skipped, data, s, 0, other)
    (other / "checkpoints" / "ct_cnn" / "r1_f2.pt").unlink()
    with pytest.raises(FileNotFoundError, match="ct_cnn: no checkpoint of repeat 1, fold 2"):
        loop.restore_fold_models(specs["ct_cnn"], data, s, 0, other)


def test_fold_maps_are_cached_per_fold_model_and_recomputed_when_it_changes(fitted, tmp_path, monkeypatch):
    import shutil

    run, data, y, s, specs, _ = fitted
    work = tmp_path / "run"
    shutil.copytree(run, work)
    model = loop.restore_fold_models(specs["pet_cnn"], data, s, 0, work, repeats=[0], check=False)[(0, 0)]
    patients = data.images["pet"].patients[:5]
    x = data.images["pet"].take(patients)
    first = gradcam.fold_maps(work, "pet_cnn", 0, 0, model.model, x, patients, "encoder.body.2")
    assert (work / "explain" / "gradcam" / "pet_cnn" / "r0_f0.npz").is_file()
    calls = []
    real = gradcam.gradcam_maps
    monkeypatch.setattr(gradcam, "gradcam_maps", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = gradcam.fold_maps(work, "pet_cnn", 0, 0, model.model, x, patients, "encoder.body.2")
    assert not calls and np.allclose(first, again, atol=1e-3)
    ck = torch.load(work / "checkpoints" / "pet_cnn" / "r0_f0.pt", weights_only=True)
    ck["best_epoch"] = 99
    torch.save(ck, work / "checkpoints" / "pet_cnn" / "r0_f0.pt")  # another model: computed again
    gradcam.fold_maps(work, "pet_cnn", 0, 0, model.model, x, patients, "encoder.body.2")
    assert calls == [1]


def test_image_saliency_and_sanity_checks_run_over_every_test_fold(fitted):
    run, data, y, s, specs, _ = fitted
    cnn = [specs["pet_cnn"], specs["ct_cnn"]]
    sal = saliency.image_saliency(cnn, data, s, 0, run, progress=False)
    m = sal.metrics
    assert len(m) == 2 * 2 * len(y.dropna())  # two models, two repeats, every labelled patient once per repeat
    for (model, r), g in m.groupby(["model", "repeat"]):
        assert sorted(g["patient"]) == sorted(s.loc[s["repeat"] == r, "patient"])
    assert set(sal.maps["pet_cnn"]) == set(s.loc[s["repeat"] == 0, "patient"])
    assert sal.layers["pet_cnn"] == "encoder.body.2"  # 8×8×6 input: no block has 8 voxels per axis, the first
    one = saliency.image_saliency(cnn[:1], data, s, 0, run, repeats=1, progress=False)
    assert set(one.metrics["repeat"]) == {0}
    cascade, labels, aurocs = sanity.sanity_checks(one, cnn[:1], data, s, 0, n_patients=5, progress=False)
    assert set(cascade["step"]) == {1, 2, 3, 4, 5} and len(labels) == 5 and 0 <= aurocs["pet_cnn"] <= 1
    table = sanity.sanity_summary(cascade.assign(model="pet_cnn"), labels.assign(model="pet_cnn"))
    assert list(table["check"]) == [sanity.REINITIALISED, sanity.PERMUTED]
    assert list(table["maps"]) == [5, 5] and set(table["verdict"]) <= {"passes", "flagged: uninformative"}
    # the two nulls score the same patients as the trained maps, fold by fold
    nulls = sal.nulls
    assert set(nulls["null"]) == set(saliency.NULLS)
    for null, g in nulls.groupby("null"):
        pd.testing.assert_frame_equal(g[["model", "repeat", "fold", "patient"]].reset_index(drop=True),
                                      m[["model", "repeat", "fold", "patient"]].reset_index(drop=True))
    table = saliency.compare_with_nulls(m, nulls)
    assert len(table) == 4 and set(table["verdict"]) <= {"beats the null", "does not beat the null", "untested",
                                                         "beats it on the mass only", "beats it on the pointing game only"}


# ---- the fusion: importance, ablation ------------------------------------------------------------
def test_permutation_importance_inside_the_fusion(fitted):
    run, data, y, s, specs, _ = fitted
    back = loop.restore_fold_models(specs["f"], data, s, 0, run)
    wide = base.ModelData(data.y, data.table.assign(unused=1.0), data.images)
    imp = importance.permutation_importance(back, wide, s, ["cga", "ggt", "unused"], repeats=3, seed=0)
    assert len(imp) == 6 * 3 and set(imp["feature"]) == {"cga", "ggt", "unused"}
    mean = imp.groupby("feature")["importance"].mean()
    assert mean["cga"] > 0.05 and mean["unused"] == 0  # a column the fusion never reads cannot matter
    assert mean["cga"] > mean["ggt"]
    again = importance.permutation_importance(back, wide, s, ["cga", "ggt", "unused"], repeats=3, seed=0)
    pd.testing.assert_frame_equal(imp, again)


def test_masking_a_modality_at_inference_is_the_missing_modality_path(fitted):
    run, data, y, s, specs, _ = fitted
    back = loop.restore_fold_models(specs["f"], data, s, 0, run)
    m = back[(0, 0)]
    ids = list(y.dropna().index[:10])
    no_labs = base.ModelData(data.y, data.table.assign(cga=np.nan, ggt=np.nan), data.images)
    np.testing.assert_allclose(m.predict(data, ids, without=("labs",)), m.predict(no_labs, ids), atol=1e-6)
    assert not np.allclose(m.predict(data, ids, without=("labs",)), m.predict(data, ids))
    with pytest.raises(ValueError, match="no 'pet_features' branch"):
        m.predict(data, ids, without=("pet_features",))
    ab = ablation.modality_ablation(back, data, s, SOURCE_NAMES)
    assert list(ab) == ["all modalities", "without laboratory values", "without SR-PET", "without CT"]
    saved = pd.read_csv(run / "predictions" / "f.csv", dtype={"patient": str}).query("fold >= 0")
    pd.testing.assert_frame_equal(ab["all modalities"].sort_values(["repeat", "fold", "patient"], ignore_index=True),
                                  saved.sort_values(["repeat", "fold", "patient"], ignore_index=True),
                                  check_dtype=False, atol=1e-6)
    table = ablation.ablation_table(ab, n_boot=50, seed=0, splits=s)
    assert table.loc["all modalities", "difference from all modalities"] == 0
    assert np.isnan(table.loc["all modalities", "p, corrected t-test"])
    from prrt.evaluation.comparison import compare_models

    c = compare_models(ab["without CT"], ab["all modalities"], s)
    assert table.loc["without CT", "p, corrected t-test"] == c["p_corrected_t"]
    assert (table.loc["without CT", "difference CI low"], table.loc["without CT", "difference CI high"]) == (
        c["ci_low"], c["ci_high"])
    # the difference is the centre of its interval: the mean of the per-fold differences, as in chapter 04
    assert table.loc["without CT", "difference from all modalities"] == c["auroc_difference"]
    plain = ablation.ablation_table(ab, n_boot=50, seed=0)  # without the splits: the difference of the mean AUROCs
    assert plain.loc["without CT", "difference from all modalities"] == pytest.approx(
        plain.loc["without CT", "auroc_mean"] - plain.loc["all modalities", "auroc_mean"])
    # Holm over the three hidden sources (one family)
    from statsmodels.stats.multitest import multipletests

    p = table["p, corrected t-test"].iloc[1:].to_numpy()
    np.testing.assert_allclose(table["p (Holm)"].iloc[1:], multipletests(p, method="holm")[1])
    assert np.isnan(table.loc["all modalities", "p (Holm)"])
    assert "p, corrected t-test" not in ablation.ablation_table(ab, n_boot=50, seed=0)
    assert (table["ci_low"] <= table["auroc_mean"] + 0.05).all() and (table["ci_high"] >= table["ci_low"]).all()
    # the labs carry the signal here: without them the fusion is worse
    assert table.loc["without laboratory values", "difference from all modalities"] < 0


def test_importance_comparison_ranks_both_models():
    fus = pd.DataFrame({"repeat": [0, 0, 1, 1], "feature": ["a", "b", "a", "b"], "importance": [0.1, 0.0, 0.2, 0.02]})
    rf = pd.DataFrame({"repeat": [0, 0, 0], "feature": ["a", "b", "c"], "importance": [0.0, 0.1, 0.5]})
    t = importance.importance_comparison(fus, rf)
    assert list(t.index) == ["a", "b"] and list(t["fusion: rank"]) == [1, 2]
    assert list(t["Random Forest: rank"]) == [2, 1]  # only the fusion's columns are ranked
    assert "Random Forest: rank" not in importance.importance_comparison(fus, None)
    shown = ch05_words.format_importance(t)
    # two repeats of 0.1 and 0.2: mean 0.15, t interval 0.15 ± 12.706 × 0.0707 / √2 = 0.15 ± 0.635
    assert shown.loc["a", "fusion: drop in AUROC [95 % CI]"] == "0.150 [-0.485, 0.785]"
    assert shown.loc["b", "Random Forest: rank"] == 1
    assert shown.loc["a", "Random Forest: drop in AUROC [95 % CI]"] == "0.000 [nan, nan]"  # one repeat: no interval
    assert list(ch05_words.format_importance(importance.importance_comparison(fus, None)).columns) == [
        "fusion: drop in AUROC [95 % CI]", "fusion: rank"]


def test_only_what_the_intervals_separate_is_ordered():
    mean = pd.Series({"a": 0.30, "b": 0.25, "c": 0.05, "d": 0.0})
    low, high = mean - 0.03, mean + 0.03
    assert importance.leaders(mean, low, high) == ["a", "b"]  # a and b overlap; together they lie above c and d
    assert importance.leaders(mean, low.where(mean.index != "b", 0.0), high) == []  # b's interval reaches c's
    sep = pd.Series({"a": 0.30, "b": 0.10, "c": 0.08, "d": 0.0})
    assert importance.leaders(sep, sep - 0.03, sep + 0.03) == ["a"]
    pair = pd.Series({"a": 0.30, "b": 0.28, "c": 0.05, "d": 0.0})
    assert importance.leaders(pair, pair - 0.03, pair + 0.03) == ["a", "b"]
    assert importance.leaders(sep, sep * np.nan, sep) == []  # no intervals: no order


def test_risk_tertiles():
    rng = np.random.default_rng(0)
    risk = rng.uniform(size=90)
    time = np.where(risk > 0.66, 3, np.where(risk > 0.33, 12, 30)) + rng.uniform(0, 1, 90)
    out = survival.risk_tertiles(time, np.ones(90), risk)
    assert (pd.Series(out["group"]).value_counts() == 30).all()
    assert set(out["group"][risk > np.quantile(risk, 0.7)]) == {"high"} and out["p"] < 1e-10
    assert survival.risk_tertiles(rng.uniform(0, 30, 90), np.ones(90), risk)["p"] > 0.01


# ---- overlay geometry -------------------------------------------------------------------------------
def test_a_map_on_the_input_grid_lines_up_with_the_mask_on_the_display_grid(tmp_path):
    """Phantom: two hot lesions of different size away from the centre. A "map" that is exactly the
    input's mask channel, upsampled to the display grid, covers the mask resampled from the file onto
    that grid; the same map shifted by one input voxel does not."""
    from dataclasses import replace

    from image_phantoms import LESIONS, patient

    from prrt.imaging import preprocess as imaging

    settings = replace(LESIONS, input_size_voxels=(16, 16, 16), roi_spacing_mm=5.0)  # 80 mm: both lesions inside
    paths = patient(tmp_path, [((40, -20, 10), 14), ((10, 5, -5), 8)])
    arrays = imaging.preprocess(paths, settings)
    size = (48, 48, 48)
    shown = imaging.display_arrays(paths, imaging.box_of(arrays), size)
    assert shown["mask"].shape == shown["suv"].shape == shown["ct"].shape == size
    up = gradcam.upsample(arrays["mask"][None].astype(np.float32), size)[0] > 0.5

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    def centroid(a):
        return np.argwhere(a).mean(axis=0)

    truth = shown["mask"] > 0
    assert dice(up, truth) > 0.8
    np.testing.assert_allclose(centroid(up), centroid(truth), atol=1.0)
    np.testing.assert_allclose(centroid(shown["suv"] > 10), centroid(truth), atol=1.0)  # the PET lines up too
    shifted = gradcam.upsample(np.roll(arrays["mask"], 1, axis=0)[None].astype(np.float32), size)[0] > 0.5
    assert abs(centroid(shifted)[0] - centroid(truth)[0]) > 2  # one input voxel = three display voxels


def test_display_size_refines_the_input_grid_by_a_whole_factor():
    from prrt.profiles import get_profile

    assert gradcam.display_size(get_profile("demo")) == (96, 96, 96)
    assert gradcam.display_size(get_profile("smoke")) == (48, 48, 40)


# ---- what the page says ---------------------------------------------------------------------------
def test_the_wilcoxon_test_counts_each_patient_once_over_the_repeats():
    rows = pd.DataFrame({"model": "m", "patient": np.tile(["a", "b", "c", "d"], 5), "mass_in_mask": 0.5,
                         "chance": 0.1, "pointing_hit": 1.0})
    s = saliency.summarise_saliency(rows)
    assert s.loc[0, "maps"] == 20 and np.isnan(s.loc[0, "p (mass > chance)"])  # four patients: too few to test
    more = pd.concat([rows, rows.assign(patient=rows["patient"] + "x")])
    assert saliency.summarise_saliency(more).loc[0, "p (mass > chance)"] == pytest.approx(1 / 2 ** 8)  # 8 patients


def test_a_map_that_barely_changes_is_flagged_in_the_table_and_the_text():
    cascade = pd.DataFrame({"model": ["same"] * 4 + ["changes"] * 4 + ["negated"] * 2 + ["alike"] * 2,
                            "step": [1, 1, 2, 2] * 2 + [1, 1, 1, 1],
                            "rank_correlation": [0.9, 0.9, 0.8, 0.7, 0.5, 0.4, 0.1, 0.0, -0.6, -0.8, 0.1, 0.2],
                            "ssim": [0.9, 0.9, 0.3, 0.2, 0.5, 0.4, 0.1, 0.0, 0.1, 0.1, 0.7, 0.6]})
    cascade["abs_rank_correlation"] = cascade["rank_correlation"].abs()
    labels = pd.DataFrame({"model": ["same", "same", "changes", "changes"], "rank_correlation": [0.6, 0.4, 0.1, -0.2],
                           "ssim": [0.2, 0.2, 0.1, 0.1]})
    labels["abs_rank_correlation"] = labels["rank_correlation"].abs()
    t = sanity.sanity_summary(cascade, labels).set_index(["model", "check"])
    assert t.loc[("same", sanity.REINITIALISED), "median |rank correlation|"] == pytest.approx(0.75)  # the last step
    assert t.loc[("same", sanity.REINITIALISED), "median SSIM"] == pytest.approx(0.25)
    assert t.loc[("same", sanity.REINITIALISED), "verdict"] == "flagged: uninformative"
    assert t.loc[("same", sanity.PERMUTED), "verdict"] == "flagged: uninformative"  # median 0.5: at the flag
    assert set(t.loc["changes", "verdict"]) == {"passes"}
    # a map that turned into its negative did not become informative; nor one whose structure stayed (SSIM)
    assert t.loc[("negated", sanity.REINITIALISED), "verdict"] == "flagged: uninformative"
    assert t.loc[("alike", sanity.REINITIALISED), "verdict"] == "flagged: uninformative"
    text = ch05_words.sanity_text(t.reset_index(), {"same": 0.5, "changes": 0.48, "negated": 0.5, "alike": 0.5})
    assert text.startswith("A check is failed when the median absolute rank correlation or the median SSIM reaches 0.5. ")
    assert "`same`: median absolute rank correlation 0.75 (SSIM 0.25) with the re-initialised network and 0.50 " \
           "(SSIM 0.20) with the permuted-label network (the permuted-label network's test AUROC 0.50): **flagged as " \
           "uninformative**" in text
    assert "`changes`: median absolute rank correlation 0.05 (SSIM 0.05) with the re-initialised network and 0.15 " \
           "(SSIM 0.10) with the permuted-label network (the permuted-label network's test AUROC 0.48): the maps " \
           "depend on what the network learnt" in text
    # a median on the flag line is said to be borderline, with four decimals; one 0.01 away is not
    assert "uninformative** (borderline: |rank correlation| 0.5000 against the flag line of 0.5);" in text
    assert text.count("borderline") == 1
    near = pd.DataFrame({"model": ["m", "m"], "check": [sanity.REINITIALISED, sanity.PERMUTED],
                         "median |rank correlation|": [0.2, 0.489], "median SSIM": [0.4996, 0.1],
                         "verdict": ["passes", "passes"]})
    assert ch05_words.sanity_text(near, {}).endswith("the maps depend on what the network learnt (borderline: SSIM 0.4996 against "
                                  "the flag line of 0.5).")  # 0.489 is 0.011 below the line: not said


def test_similarity_of_maps_has_no_sign_and_ssim_sees_structure():
    rng = np.random.default_rng(0)
    a = rng.random((16, 16, 12))
    s = sanity.similarity(a, 1 - a)  # the negative of the map, scaled back to [0, 1]
    assert s["rank_correlation"] == pytest.approx(-1) and s["abs_rank_correlation"] == pytest.approx(1)
    assert sanity.ssim(a, a) == pytest.approx(1)
    assert abs(sanity.ssim(a, rng.random(a.shape))) < 0.1  # unrelated noise
    smooth = np.zeros((16, 16, 12))
    smooth[4:10, 4:10, 3:8] = 1
    assert sanity.ssim(smooth, smooth * 0.9) > 0.9 and sanity.ssim(smooth, np.roll(smooth, 6, axis=0)) < 0.5
    assert 0.9 < sanity.ssim(a[:, :, 0], a[:, :, 0] * 0.99) <= 1  # 2-D maps too
    with pytest.raises(ValueError, match="differ in shape"):
        sanity.ssim(a, a[:8])


def test_the_page_s_sentences_come_from_the_tables():
    sal = pd.DataFrame([{"model": "pet_cnn", "maps": 10, "maps checked": 8, "mass in mask": 0.123, "chance": 0.02,
                         "pointing hits": 0.5, "p (mass > chance)": 0.001},
                        {"model": "ct_cnn", "maps": 10, "maps checked": 0, "mass in mask": np.nan, "chance": np.nan,
                         "pointing hits": np.nan, "p (mass > chance)": np.nan}])
    assert ch05_words.saliency_text(sal) == (
        "In this run: `pet_cnn`: 12.3 % of the map's mass in the lesion mask against 2.0 % by chance (more than chance; "
        "Wilcoxon p = 0.001), and its maximum inside the mask in 50.0 % of 8 maps; `ct_cnn`: no map could be checked "
        "(no patient has a lesion in the mask, or the network's input has no mask channel).")
    def imp_rows(values):  # three repeats of each feature, nearly equal
        return pd.DataFrame([{"repeat": r, "feature": f, "importance": v + 0.001 * r}
                             for f, v in values.items() for r in range(3)])

    imp = importance.importance_comparison(imp_rows({"ggt": 0.3, "cga": 0.2, "alp": 0.1}),
                                           imp_rows({"ggt": 0.1, "cga": 0.1005, "alp": 0.0}))
    assert ch05_words.importance_text(imp) == (
        "Inside the fusion, `ggt` stands apart: its 95 % interval lies above every other value's; in the Random Forest "
        "of chapter 2, `cga` and `ggt` stand apart: their 95 % interval lies above every other value's (their order "
        "among themselves is not separated).")
    noisy = importance.importance_comparison(pd.DataFrame({"repeat": [0, 1, 0, 1], "feature": ["a", "a", "b", "b"],
                                                           "importance": [0.3, 0.0, 0.2, 0.05]}), None)
    assert ch05_words.importance_text(noisy) == (
        "Inside the fusion, the largest mean drop in AUROC was that of `a`, but its 95 % interval overlaps the next "
        "value's, so no laboratory value stands apart.")
    ab = pd.DataFrame({"auroc_mean": [0.8, 0.7, 0.75], "ci_low": [0.7, 0.6, 0.65], "ci_high": [0.9, 0.8, 0.85]},
                      index=["all modalities", "without SR-PET", "without CT"])
    ab["difference from all modalities"] = ab["auroc_mean"] - 0.8
    assert ch05_words.ablation_text(ab) == ("with every modality the fusion reached a test-fold AUROC of 0.80 (95 % CI "
                                         "0.70–0.90); without SR-PET 0.70 (-0.10); without CT 0.75 (-0.05). Without "
                                         "paired intervals the settings are not ordered.")
    ab["difference CI low"], ab["difference CI high"] = [np.nan, -0.15, -0.08], [np.nan, -0.05, -0.02]
    ab["p, corrected t-test"], ab["p (Holm)"] = [np.nan, 0.0004, 0.2], [np.nan, 0.0008, 0.2]
    text = ch05_words.ablation_text(ab)
    assert ("without SR-PET 0.70 (-0.10, 95 % CI -0.15 to -0.05, Holm-adjusted p <0.001); without CT 0.75 (-0.05, "
            "95 % CI -0.08 to -0.02, Holm-adjusted p = 0.200)") in text
    assert text.endswith("The differences' intervals overlap, so no hidden source can be said to cost the most.")
    ab.loc["without CT", ["difference CI low", "difference CI high"]] = [-0.04, 0.01]
    assert ch05_words.ablation_text(ab).endswith("Hiding the SR-PET cost the most: its interval lies below the "
                                                   "others'.")


def test_example_patients_by_role():
    risk = pd.Series({"a": 0.9, "b": 0.7, "c": 0.8, "d": 0.1, "e": 0.3, "f": 0.2})
    labels = pd.Series({"a": 1, "b": 1, "c": 0, "d": 0, "e": 0, "f": 1})
    assert ch05_explain.example_patients(risk, labels) == {"highest-risk true positive": "a", "true negative": "d",
                                                      "false positive": "c"}
    assert ch05_explain.example_patients(risk[["d", "e"]], labels) == {"true negative": "d"}


def test_the_page_says_whether_the_cnns_are_the_fusions_branches():
    from prrt.profiles import get_profile

    assert "also the fusions' SR-PET and CT branches" in ch05_explain.branches_text(get_profile("demo"))
    assert "encoders of their own" in ch05_explain.branches_text(get_profile("paper"))


def test_without_a_mask_channel_the_maps_are_made_and_none_is_judged(tmp_path):
    complete, y, _ = _multimodal(missing=False)
    one = base.ModelData(y, complete.table, {"pet": base.ImageSet(complete.images["pet"].x[:, :1],
                                                                      complete.images["pet"].patients)})
    s = sp.make_splits(y, 3, 1, 0)
    spec = image_model.image_spec("pet_cnn", "pet", training.TrainConfig(epochs=1, batch_size=8), "03", "PET", True)
    loop.run_models([spec], one, None, s, _Profile(), 0, tmp_path)
    sal = saliency.image_saliency([spec], one, s, 0, tmp_path, progress=False)
    assert len(sal.maps["pet_cnn"]) == len(y.dropna()) and sal.metrics["mass_in_mask"].isna().all()
    summary = saliency.summarise_saliency(sal.metrics)
    assert summary.loc[0, "maps checked"] == 0 and "no map could be checked" in ch05_words.saliency_text(summary)


# ---- saliency against its nulls ------------------------------------------------------------------------
def test_the_data_free_blob_sits_where_the_training_patients_lesions_sit():
    masks = np.zeros((3, 20, 20, 16), bool)
    masks[0, 4:6, 4:6, 3:5] = True  # small, in a corner
    masks[1, 10:16, 10:16, 8:12] = True  # large, elsewhere: weighted like the small one, not by its voxels
    blob = saliency.lesion_blob(masks)
    assert blob.shape == (20, 20, 16) and blob.min() == 0 and blob.max() == 1
    centre = np.unravel_index(blob.argmax(), blob.shape)
    np.testing.assert_allclose(centre, [(4.5 + 12.5) / 2, (4.5 + 12.5) / 2, (3.5 + 9.5) / 2], atol=1)
    assert not saliency.lesion_blob(np.zeros((2, 8, 8, 8), bool)).any()  # no lesion: an empty map


def _null_rows(mass, hits, model="m", null=None, repeats=2):
    rows = pd.DataFrame({"patient": np.tile([f"P{i}" for i in range(len(mass))], repeats),
                         "repeat": np.repeat(range(repeats), len(mass)), "model": model,
                         "mass_in_mask": np.tile(mass, repeats), "pointing_hit": np.tile(hits, repeats), "chance": 0.05})
    return rows if null is None else rows.assign(null=null)


def test_a_model_beats_a_null_only_patient_by_patient_and_after_holm():
    n = 12
    better = np.linspace(0.2, 0.4, n)
    metrics = pd.concat([_null_rows(better, np.ones(n), "good"), _null_rows(better, np.ones(n), "same"),
                         _null_rows(better[:4], np.ones(4), "few")])
    nulls = pd.concat([_null_rows(better - 0.1, np.zeros(n), "good", "blob"),
                       _null_rows(better - 0.1 * (np.arange(n) % 2 * 2 - 1), np.ones(n), "same", "blob"),
                       _null_rows(better[:4] - 0.1, np.zeros(4), "few", "blob")])
    t = saliency.compare_with_nulls(metrics, nulls).set_index("model")
    assert t.loc["good", "mass in mask"] == pytest.approx(better.mean())
    assert t.loc["good", "null: mass in mask"] == pytest.approx(better.mean() - 0.1)
    assert t.loc["good", "pointing hits"] == 1 and t.loc["good", "null: pointing hits"] == 0
    assert t.loc["good", "p (mass > null)"] == pytest.approx(1 / 2 ** 12)  # every patient better: exact p
    assert t.loc["good", "verdict"] == "beats the null"
    assert t.loc["same", "verdict"] == "does not beat the null" and np.isnan(t.loc["same", "p (hits > null)"])
    assert t.loc["few", "verdict"] == "untested" and t.loc["few", "patients"] == 4
    # Holm over every test of the table: three tests (good mass, good hits, same mass)
    tested = sorted(np.r_[t["p (mass > null)"].dropna(), t["p (hits > null)"].dropna()])
    assert len(tested) == 3
    assert t.loc["good", "p (mass > null), Holm"] == pytest.approx(min(1, 3 * t.loc["good", "p (mass > null)"]))
    assert (t["p (mass > null), Holm"].dropna() >= t["p (mass > null)"].dropna()).all()


def test_the_page_reads_the_verdict_against_the_nulls():
    summary = pd.DataFrame([{"model": "pet_cnn", "maps": 10, "maps checked": 8, "mass in mask": 0.077, "chance": 0.02,
                             "pointing hits": 0.191, "p (mass > chance)": 0.001},
                            {"model": "ct_cnn_pretrained", "maps": 10, "maps checked": 8, "mass in mask": 0.115,
                             "chance": 0.02, "pointing hits": 0.4, "p (mass > chance)": 0.001}])
    nulls = pd.DataFrame({"model": ["pet_cnn", "pet_cnn", "ct_cnn_pretrained", "ct_cnn_pretrained"],
                          "null": [saliency.RANDOMISED, saliency.BLOB] * 2, "patients": 8,
                          "mass in mask": [0.077, 0.077, 0.115, 0.115],
                          "null: mass in mask": [0.05, 0.082, 0.05, 0.082],
                          "pointing hits": [0.191, 0.191, 0.4, 0.4], "null: pointing hits": [0.1, 0.169, 0.1, 0.169],
                          "p (mass > null), Holm": [0.01, 0.9, 0.001, 0.004],
                          "p (hits > null), Holm": [0.2, 0.7, 0.01, 0.03],
                          "verdict": ["beats the null", "does not beat the null", "beats the null", "beats the null"]})
    text = ch05_words.saliency_text(summary, nulls)
    assert ("`pet_cnn`: 7.7 % of the map's mass in the lesion mask against 2.0 % by chance (more than chance; Wilcoxon "
            "p = 0.001), and its maximum inside the mask in 19.1 % of 8 maps; against the nulls, the randomised weights "
            "map (5.0 %): beats the null, the data-free blob map (8.2 %): does not beat the null;") in text
    assert text.endswith("`ct_cnn_pretrained` beats both nulls. The maps of `pet_cnn` do not beat both nulls on both "
                         "measures: where a verdict names one measure, only that one shows more of the lesions than the "
                         "null, and where it names none, neither does (on a measure not named, the map was not shown "
                         "to put more of itself in the lesions than a map that only knows where lesions usually sit in "
                         "the crop, or than the same network untrained; the table gives both numbers).")
    assert "against the nulls" not in ch05_words.saliency_text(summary)  # a run without a mask channel
    page = ch05_words.format_nulls(nulls)
    assert page.loc[("pet_cnn", saliency.BLOB)].tolist() == ["7.7 vs 8.2", "19.1 vs 16.9", "0.900, 0.700",
                                                            "does not beat the null"]
    assert [saliency.verdict(*p) for p in [(0.01, 0.02), (0.01, 0.2), (0.2, 0.01), (0.2, np.nan), (np.nan, np.nan)]] == [
        "beats the null", "beats it on the mass only", "beats it on the pointing game only", "does not beat the null",
        "untested"]
    assert ch05_explain.saliency_against_nulls(None).empty


def test_the_ablation_table_for_the_page():
    table = pd.DataFrame({"auroc_mean": [0.714, 0.736], "auroc_sd": [0.02, 0.03], "ci_low": [0.63, 0.65],
                          "ci_high": [0.79, 0.81], "difference from all modalities": [0.0, 0.0162],
                          "difference CI low": [np.nan, -0.18], "difference CI high": [np.nan, 0.21],
                          "p, corrected t-test": [np.nan, 0.5], "p (Holm)": [np.nan, 1.0]},
                         index=pd.Index(["all modalities", "without laboratory values"], name="setting"))
    page = ch05_words.format_ablation(table)
    assert page.loc["all modalities"].tolist() == ["0.71 [0.63, 0.79]", "–", "–"]
    assert page.loc["without laboratory values"].tolist() == ["0.74 [0.65, 0.81]", "+0.02 [-0.18, +0.21]", "1.000"]
    plain = ch05_words.format_ablation(table[["auroc_mean", "ci_low", "ci_high", "difference from all modalities"]])
    assert list(plain.columns) == ["AUROC [95 % CI]", "difference [95 % CI]"]
    assert plain.loc["without laboratory values", "difference [95 % CI]"] == "+0.02"
