"""The image training engine: determinism, learning, no leakage, clear errors, encoders."""

from __future__ import annotations

import gzip
import re
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from prrt.evaluation import splits as sp
from prrt.evaluation.metrics import per_repeat_metrics
from prrt.learn import base, image_model, loop, networks, training
from prrt.learn.networks import ENCODERS, ImageClassifier, build_encoder


def separable(n=48, size=(24, 24, 20), seed=0, n_unlabelled=0):
    """Noise images; short-PFS ones carry a bright cube at a random place."""
    rng = np.random.default_rng(seed)
    y = pd.Series(np.r_[np.ones(18), np.zeros(n - 18), np.full(n_unlabelled, np.nan)],
                  index=[f"P{i:03d}" for i in range(n + n_unlabelled)])
    x = torch.from_numpy(rng.random((len(y), 1, *size)).astype(np.float32) * 0.3)
    for i in np.flatnonzero(y.to_numpy() == 1):
        c = rng.integers(5, 15, 3)
        x[i, 0, c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] += 0.7
    return x, y


def cv_images(name, x, y, splits, cfg, seed, run_dir=None):
    """The shared loop of prrt.learn.loop on one image tensor (one image per entry of y)."""
    data = base.ModelData(y, images={"pet": base.ImageSet(x, list(y.index))})
    spec = image_model.image_spec(name, "pet", cfg, "03", "test images", available=True)
    return loop.cross_validate(spec, data, splits, seed, run_dir=run_dir, progress=False)


def test_learns_a_trivially_separable_image_set():
    x, y = separable()
    s = sp.make_splits(y, 3, 1, 0)
    res = cv_images("sep", x, y, s, training.TrainConfig(epochs=6), seed=1)
    assert per_repeat_metrics(res.predictions)["auroc"].iloc[0] > 0.9


def test_shared_loop_gives_what_direct_training_gives():
    """The loop of prrt.learn.loop (chapter 03) against the plain definition: per repeat and fold, the
    stratified inner split of the training patients with the fold's seed, one network trained on the
    fitting part, its test predictions prior-corrected with the fitting part's share of short PFS."""
    from sklearn.model_selection import train_test_split

    from prrt.evaluation.metrics import prior_correction

    x, y = separable(n=30, size=(12, 12, 10), seed=2)
    s = sp.make_splits(y, 3, 1, 0)
    cfg = training.TrainConfig(epochs=2)
    res = cv_images("plain", x, y, s, cfg, seed=5)
    for f in sp.iter_folds(s):
        seed = 5 + 1000 * f.repeat + f.fold
        fit, val = train_test_split(sorted(f.train), test_size=0.2, stratify=y.loc[sorted(f.train)].astype(int),
                                    random_state=seed)
        fit, val = sorted(fit), sorted(val)
        take = lambda ids: x[[int(p[1:]) for p in ids]]
        out = training.train_model(take(fit), y.loc[fit].to_numpy(int), take(val), y.loc[val].to_numpy(int), cfg, seed,
                                progress=False)
        expected = prior_correction(training.predict(out.model, take(f.test)), y.loc[fit].mean())
        got = res.predictions.query("repeat == @f.repeat and fold == @f.fold").set_index("patient")["probability"]
        np.testing.assert_array_equal(got.loc[f.test].to_numpy(), expected)


def test_same_seed_gives_identical_out_of_fold_predictions_on_cpu():
    x, y = separable(seed=1)
    s = sp.make_splits(y, 3, 1, 0)
    cfg = training.TrainConfig(epochs=2)
    a = cv_images("a", x, y, s, cfg, seed=3)
    b = cv_images("a", x, y, s, cfg, seed=3)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    pd.testing.assert_frame_equal(a.curves, b.curves)
    c = cv_images("a", x, y, s, cfg, seed=4)
    assert not np.allclose(a.predictions["probability"], c.predictions["probability"])


def test_no_test_patient_reaches_training_or_inner_validation(tmp_path):
    x, y = separable(n=36, n_unlabelled=2)
    s = sp.make_splits(y, 3, 2, 5)
    res = cv_images("leak", x, y, s, training.TrainConfig(epochs=1), seed=0,
                    run_dir=tmp_path)
    for f in sp.iter_folds(s):
        val = set(res.inner_validation[(f.repeat, f.fold)])
        assert val <= set(f.train) and not val & set(f.test)
        part = loop.inner_split(f.train, y, 0.2, 0 + 1000 * f.repeat + f.fold)
        assert set(part.val) == val and not set(part.fit) & val and set(part.fit) | val == set(f.train)
        assert y.loc[list(val)].sum() >= 1  # stratified: the validation part has short-PFS patients
    # each labelled patient is predicted once per repeat, in its own test fold; unlabelled ones by every fold
    lab = res.predictions[res.predictions["fold"] >= 0].merge(s, on=["patient", "repeat"], suffixes=("", "_s"))
    assert len(lab) == len(s) and (lab["fold"] == lab["fold_s"]).all()
    assert set(res.predictions.loc[res.predictions["fold"] == -1, "patient"]) == {"P036", "P037"}
    # checkpoints and curves are written per repeat and fold, and load back
    ck = torch.load(tmp_path / "checkpoints" / "leak" / "r1_f2.pt", weights_only=False)
    model = ImageClassifier(build_encoder("compact"))
    model.load_state_dict(ck["state_dict"])
    curves = pd.read_csv(tmp_path / "checkpoints" / "leak" / "curves.csv")
    assert set(zip(curves["repeat"], curves["fold"])) == {(r, f) for r in range(2) for f in range(3)}


def test_augmentation_is_seeded_and_keeps_shape():
    x = torch.rand(4, 1, 16, 16, 12)
    a, b = training.BatchAugmenter(1)(x), training.BatchAugmenter(1)(x)
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)


@pytest.mark.parametrize("name", ENCODERS)
def test_encoders_expose_their_feature_vector(name):
    torch.manual_seed(0)
    enc = build_encoder(name, in_channels=2)
    model = ImageClassifier(enc).eval()
    x = torch.rand(2, 2, 32, 32, 32)
    with torch.no_grad():
        f = model.features(x)
        out = model(x)
    assert f.shape == (2, enc.feature_dim) and out.shape == (2,)
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("vgg")


def test_cpu_is_chosen_without_cuda():
    assert training.select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert training.select_device("cpu").type == "cpu"


def test_corrupt_or_missing_image_stops_training_naming_patient_and_file(cohort_copy):
    from prrt.data.load import load_cohort
    from prrt.imaging.io import ImageError
    from prrt.profiles import get_profile

    c = load_cohort(cohort_copy / "manifest.yaml", check_images="none")
    victim = c.data.index[3]
    pet = c.image_path(victim, "pet")
    original = pet.read_bytes()
    pet.write_bytes(gzip.compress(b"garbage" * 100))
    with pytest.raises(ImageError, match=rf"patient '{victim}', image \"pet\" \(.*pet.nii.gz\): cannot be read"):
        image_model.image_tensors(c, get_profile("smoke"), cohort_copy / "cache", "pet", progress=False)
    pet.write_bytes(original)
    other = c.data.index[5]
    c.image_path(other, "ct").unlink()
    with pytest.raises(ImageError, match=rf"patient '{other}', image \"ct\" .*file not found"):
        image_model.image_tensors(c, get_profile("smoke"), cohort_copy / "cache", "ct", progress=False)


def test_image_tensors_shape_and_cache(small_cohort_dir, tmp_path):
    from prrt.data.load import load_cohort
    from prrt.profiles import get_profile

    c = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    smoke = get_profile("smoke")
    x, patients = image_model.image_tensors(c, smoke, tmp_path, "pet", progress=False)
    assert smoke.mask_channel and smoke.roi == "liver"
    assert x.shape == (26, 2, 24, 24, 20) and x.dtype == torch.float32 and patients == list(c.data.index)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    # the second channel is the lesion mask on the same grid (1; the PET is hot inside it) with the liver of
    # the organ map (0.5) where there is no lesion
    from prrt.imaging.inputs import liver_region
    from prrt.imaging.preprocess import preprocess_cohort

    arrays = preprocess_cohort(c, smoke, tmp_path, progress=False)
    for i, p in enumerate(patients):
        lesions, liver = arrays[p]["mask"] > 0, liver_region(arrays[p]["organs"] == 1)
        np.testing.assert_array_equal(x[i, 1].numpy(), np.where(lesions, 1.0, np.where(liver, 0.5, 0.0)))
        np.testing.assert_array_equal(x[i, 0].numpy(), arrays[p]["pet"])
    assert (x[:, 1] == 0.5).any()
    inside = x[:, 0][x[:, 1] == 1].mean()
    assert float(inside) > 2 * float(x[:, 0][x[:, 1] < 1].mean())
    lesions_only, _ = image_model.image_tensors(c, replace(smoke, liver_in_mask_channel=False), tmp_path, "pet",
                                                progress=False)
    np.testing.assert_array_equal(lesions_only[:, 1].numpy(), np.stack([arrays[p]["mask"] for p in patients]))
    one, _ = image_model.image_tensors(c, smoke, tmp_path, "ct", progress=False, mask_channel=False)
    assert one.shape == (26, 1, 24, 24, 20)


def test_training_options_are_checked():
    x, y = separable(n=24)
    with pytest.raises(ValueError, match="selection must be"):
        training.train_model(x[:12], y.iloc[:12].to_numpy(int), x[12:], y.iloc[12:].to_numpy(int),
                          training.TrainConfig(epochs=1, selection="best_auc"), seed=0, progress=False)
    with pytest.raises(ValueError, match="lr_schedule must be 'cosine' or 'constant', not 'step'"):
        training.check_config(training.TrainConfig(lr_schedule="step"))
    with pytest.raises(ValueError, match="selection must be 'last' or 'val_loss', not 'best_auc'"):
        training.check_config(training.TrainConfig(selection="best_auc"))


def test_one_class_validation_part_gives_no_auroc_and_no_warning():
    """A validation part with a single class has no AUROC (NaN in the curve) and training says nothing about it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for y_val in ([0, 0], [1, 1]):
            out, _, _ = _fit_frozen(8, 4, np.r_[np.ones(3), np.zeros(5)], y_val, [0.6, 0.3], epochs=1, seed=0)
            assert np.isnan(out.curve["val_auroc"].iloc[0]) and np.isfinite(out.curve["val_loss"].iloc[0])


def test_batch_norm_statistics_come_from_the_kept_weights():
    """After training, the running statistics equal those of the final weights on the fitting images."""
    x, y = separable(n=30)
    cfg = training.TrainConfig(epochs=3, augment=True)
    out = training.train_model(x[:20], y.iloc[:20].to_numpy(int), x[20:], y.iloc[20:].to_numpy(int), cfg, seed=0,
                            progress=False)
    bn = next(m for m in out.model.modules() if isinstance(m, torch.nn.BatchNorm3d))
    first_conv = out.model.encoder.body[0]
    with torch.no_grad():
        act = first_conv(x[:20])
    # recomputed in batches of 8, 8 and 4 without augmentation: the average of the batch means
    expected = torch.stack([act[i:i + 8].mean(dim=(0, 2, 3, 4)) for i in (0, 8, 16)]).mean(dim=0)
    np.testing.assert_allclose(bn.running_mean.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_cnn_predictions_are_prior_corrected_to_the_fitting_prevalence():
    """Noise images with labels unrelated to them: a pos_weighted network says about 0.5 for
    everyone; after the prior correction the predictions sit near the share of short PFS."""
    rng = np.random.default_rng(2)
    n = 45
    y = pd.Series(np.r_[np.ones(16), np.zeros(n - 16)], index=[f"P{i:03d}" for i in range(n)])
    x = torch.from_numpy(rng.random((n, 1, 12, 12, 10)).astype(np.float32))
    s = sp.make_splits(y, 3, 1, 0)
    res = cv_images("null", x, y, s, training.TrainConfig(epochs=2), seed=0)
    assert abs(res.predictions["probability"].mean() - 16 / 45) < 0.08


def test_training_never_receives_a_test_fold_image(monkeypatch):
    """Each patient's image is filled with its own number; the wrapped training function records
    which patients it was given to fit and to validate on."""
    n = 30
    y = pd.Series(np.r_[np.ones(11), np.zeros(n - 11)], index=[f"P{i:03d}" for i in range(n)])
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1, 1).expand(n, 1, 8, 8, 6).contiguous()
    s = sp.make_splits(y, 3, 2, 0)
    seen = []
    real = training.train_model

    def spy(x_fit, y_fit, x_val, y_val, cfg, seed, **kw):
        seen.append(({int(v) for v in x_fit[:, 0, 0, 0, 0]}, {int(v) for v in x_val[:, 0, 0, 0, 0]}))
        return real(x_fit, y_fit, x_val, y_val, cfg, seed, **kw)

    monkeypatch.setattr(image_model, "train_model", spy)  # where ImageModel.fit looks it up
    cv_images("spy", x, y, s, training.TrainConfig(epochs=1, augment=False), seed=0)
    folds = list(sp.iter_folds(s))
    assert len(seen) == len(folds)
    for (fit, val), f in zip(seen, folds):
        test = {int(p[1:]) for p in f.test}
        train_ids = {int(p[1:]) for p in f.train}
        assert not (fit | val) & test and fit | val == train_ids and not fit & val


def test_val_loss_selection_keeps_the_best_epoch_not_the_last():
    # noise with labels unrelated to it: the network memorises, and the validation loss rises
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.random((36, 1, 12, 12, 10)).astype(np.float32))
    y = pd.Series(rng.permutation(np.r_[np.ones(13), np.zeros(23)]))
    cfg = training.TrainConfig(epochs=12, selection="val_loss", lr_schedule="constant", lr=1e-3, augment=False)
    out = training.train_model(x[:24], y.iloc[:24].to_numpy(int), x[24:], y.iloc[24:].to_numpy(int), cfg, seed=0,
                            progress=False)
    best = int(out.curve["val_loss"].idxmin()) + 1
    assert out.best_epoch == best and best != cfg.epochs, out.curve  # this set has its minimum before the end
    # the returned weights are those of that epoch: their validation loss is the curve's minimum
    p = torch.as_tensor(training.predict(out.model, x[24:]))
    yv = torch.as_tensor(y.iloc[24:].to_numpy(), dtype=torch.float32)
    pw = (24 - y.iloc[:24].sum()) / y.iloc[:24].sum()
    loss = torch.nn.functional.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), yv, weight=torch.where(yv == 1, pw, 1.0))
    assert float(loss) == pytest.approx(out.curve["val_loss"].min(), rel=1e-4)
    last = training.train_model(x[:24], y.iloc[:24].to_numpy(int), x[24:], y.iloc[24:].to_numpy(int),
                             training.TrainConfig(epochs=3), seed=0, progress=False)
    assert last.best_epoch == 3


def test_training_settings_reach_the_optimiser_schedule_augmentation_and_network(monkeypatch):
    """Each setting of TrainConfig changes what is built: a spy records the optimiser's and the
    schedule's arguments and whether augmentation is made."""
    x = torch.rand(12, 2, 16, 16, 16)
    y = np.r_[np.ones(4), np.zeros(8)].astype(int)
    seen = {}
    real_adamw, real_cos, real_aug = torch.optim.AdamW, torch.optim.lr_scheduler.CosineAnnealingLR, training.BatchAugmenter

    def adamw(params, **kw):
        seen["adamw"] = kw
        return real_adamw(params, **kw)

    def cosine(opt, **kw):
        seen["cosine"] = kw
        return real_cos(opt, **kw)

    def augmenter(seed, *a, **k):
        seen["augment_seed"] = seed
        return real_aug(seed, *a, **k)

    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    monkeypatch.setattr(torch.optim.lr_scheduler, "CosineAnnealingLR", cosine)
    monkeypatch.setattr(training, "BatchAugmenter", augmenter)
    cfg = training.TrainConfig(epochs=3, lr=3e-4, weight_decay=0.02, dropout=0.45, augment=True)
    out = training.train_model(x[:8], y[:8], x[8:], y[8:], cfg, seed=5, progress=False)
    assert seen["adamw"] == {"lr": 3e-4, "weight_decay": 0.02}
    assert seen["cosine"] == {"T_max": 3} and seen["augment_seed"] == 5
    assert out.model.head[0].p == 0.45 and out.model.encoder.body[0].in_channels == 2
    assert isinstance(out.model.encoder, networks.build_encoder("compact").__class__)
    seen.clear()
    out = training.train_model(x[:8], y[:8], x[8:], y[8:], replace_cfg(cfg, lr_schedule="constant", augment=False,
                                                                    encoder="compact_instance", epochs=1),
                            seed=5, progress=False)
    assert "cosine" not in seen and "augment_seed" not in seen
    assert isinstance(out.model.encoder.body[1], torch.nn.InstanceNorm3d)
    # one epoch: the schedule still has a positive period
    seen.clear()
    training.train_model(x[:8], y[:8], x[8:], y[8:], replace_cfg(cfg, epochs=1), seed=5, progress=False)
    assert seen["cosine"] == {"T_max": 1}


def replace_cfg(cfg, **kw):
    from dataclasses import replace

    return replace(cfg, **kw)


def test_the_constant_and_cosine_schedules_end_at_different_learning_rates(monkeypatch):
    """With a cosine schedule the last epoch's steps are taken at almost no learning rate."""
    lrs = []
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    x = torch.rand(12, 1, 8, 8, 6)
    y = np.r_[np.ones(4), np.zeros(8)].astype(int)
    training.train_model(x[:8], y[:8], x[8:], y[8:], training.TrainConfig(epochs=4, lr=1e-3), seed=0, progress=False)
    assert lrs[0] == 1e-3 and lrs[-1] < 0.2e-3
    lrs.clear()
    training.train_model(x[:8], y[:8], x[8:], y[8:], training.TrainConfig(epochs=4, lr=1e-3, lr_schedule="constant"), seed=0,
                      progress=False)
    assert set(lrs) == {1e-3}


def test_pos_weight_for_a_single_short_pfs_patient(monkeypatch):
    """n_long / n_short with one short-PFS patient is n_long itself (not halved)."""
    weights = []
    real = torch.nn.functional.binary_cross_entropy_with_logits

    def spy(logits, target, pos_weight=None, **k):
        weights.append(float(pos_weight))
        return real(logits, target, pos_weight=pos_weight, **k)

    monkeypatch.setattr(training.F, "binary_cross_entropy_with_logits", spy)
    x = torch.rand(10, 1, 8, 8, 6)
    y = np.r_[1, np.zeros(7), 1, 0].astype(int)
    training.train_model(x[:8], y[:8], x[8:], y[8:], training.TrainConfig(epochs=1, augment=False), seed=0, progress=False)
    assert set(weights) == {7.0}


def test_image_model_checkpoint_record(tmp_path):
    x, y = separable(n=30, size=(12, 12, 10), seed=3)
    s = sp.make_splits(y, 3, 1, 0)
    cfg = training.TrainConfig(epochs=2, selection="val_loss", augment=False)
    res = cv_images("ck", torch.cat([x, x], dim=1), y, s, cfg, seed=0, run_dir=tmp_path)
    ck = torch.load(tmp_path / "checkpoints" / "ck" / "r0_f1.pt", weights_only=False)
    assert set(ck) == {"state_dict", "config", "best_epoch", "in_channels", "modality", "training_part",
                       "training_patients"}
    assert ck["config"] == cfg.to_dict() and ck["in_channels"] == 2
    fold = [f for f in sp.iter_folds(s) if (f.repeat, f.fold) == (0, 1)][0]
    part = loop.inner_split(fold.train, y, cfg.val_fraction, loop.fold_seed(0, 0, 1))
    assert ck["training_part"] == part.digest() and len(part.digest()) == 16
    assert ck["training_patients"] == part.patients_digest() == base.TrainingPart(part.all, []).patients_digest()
    curve = res.curves.query("repeat == 0 and fold == 1")
    assert ck["best_epoch"] == int(curve.loc[curve["best"], "epoch"].iloc[0]) == int(curve["val_loss"].idxmin() % 2) + 1


def test_model_data_knows_who_has_what():
    y = pd.Series([1.0, 0.0, 1.0], index=["P1", "P2", "P3"])
    table = pd.DataFrame({"a": [1.0, np.nan, np.nan], "b": [np.nan, 2.0, np.nan]}, index=y.index)
    data = base.ModelData(y, table=table, images={"pet": base.ImageSet(torch.zeros(2, 1, 2, 2, 2), ["P1", "P3"])})
    assert [data.has(p, "table", ["a", "b"]) for p in y.index] == [True, True, False]
    assert [data.has(p, "table", ["a"]) for p in y.index] == [True, False, False]
    assert [data.has(p, "pet") for p in y.index] == [True, False, True]
    assert not data.has("P1", "ct") and not data.has("P9", "table", ["a"])
    assert not base.ModelData(y).has("P1", "table", ["a"])
    # the same answers for many patients at once (a patient the table lacks, and one asked twice, included)
    many = ["P3", "P9", "P1", "P2", "P1"]
    for modality, columns in (("table", ["a", "b"]), ("table", ["a"]), ("pet", None), ("ct", None)):
        assert data.have(many, modality, columns).tolist() == [data.has(p, modality, columns) for p in many]
    assert not base.ModelData(y).have(["P1"], "table", ["a"]).any() and data.have([], "table", ["a"]).size == 0
    assert data.with_all(many, ["table", "pet"], ["a", "b"]) == ["P1", "P1"] and data.with_all(many, []) == many
    with pytest.raises(ValueError, match="^2 images for 3 patients$"):
        base.ImageSet(torch.zeros(2, 1, 2, 2, 2), ["P1", "P2", "P3"])


def test_pretrained_encoder_weights_are_where_training_starts():
    """With a learning rate of zero, the trained encoder still holds the given weights: they were
    loaded before the first step (ImageModel hands them to train_model)."""
    from prrt.learn.networks import build_encoder

    pre = {k: (v + 0.25 if v.is_floating_point() else v) for k, v in build_encoder("compact", 1).state_dict().items()}
    x, y = separable(n=24, size=(12, 12, 10), seed=4)
    data = base.ModelData(y, images={"ct": base.ImageSet(x, list(y.index))})
    m = image_model.ImageModel("ct", training.TrainConfig(epochs=1, lr=0.0, weight_decay=0.0, augment=False), encoder_weights=pre)
    m.fit(data, loop.inner_split(list(y.index), y, 0.2, 0), seed=0, progress=False)
    got = m.model.encoder.state_dict()
    for k, v in pre.items():
        if "running" not in k and "num_batches" not in k:  # batch-norm statistics are recomputed
            assert torch.equal(got[k], v), k
    fresh = image_model.ImageModel("ct", training.TrainConfig(epochs=1, lr=0.0, weight_decay=0.0, augment=False))
    fresh.fit(data, loop.inner_split(list(y.index), y, 0.2, 0), seed=0, progress=False)
    assert not torch.equal(fresh.model.encoder.state_dict()["body.0.weight"], pre["body.0.weight"])


# ---- the shared training loop (fit_network), with a model whose every output is known ----------------

class _Linear(torch.nn.Module):
    """No dropout, no batch norm: with lr = 0 its outputs never change, so every loss is known in advance."""

    def __init__(self, d=3):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(d, 1)

    def forward(self, x):
        return self.lin(x).squeeze(1)


def _bce_logits(z, y, pw):
    p = 1 / (1 + np.exp(-z))
    return -(pw * y * np.log(p) + (1 - y) * np.log(1 - p))


def _fit_frozen(n, batch_size, y_fit, y_val, p_val, epochs=2, seed=11, selection="last", kw_bn={}, **kw):
    """fit_network with lr = 0 on n random rows; returns the output, the batches each epoch received
    and the logits of every fitting row."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 3, generator=g)
    model = _Linear()
    with torch.no_grad():
        z = model(x).numpy().astype(float)
    seen = []

    def batch(idx, gen):
        seen.append((idx.tolist(), gen.initial_seed()))
        return (x[idx],)

    cfg = training.TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.0, weight_decay=0.0, selection=selection,
                            lr_schedule="constant", **kw)
    out = training.fit_network(model, np.asarray(y_fit), np.asarray(y_val), cfg, seed, batch,
                            validate=lambda: np.asarray(p_val, float), bn_forward=kw_bn.get("bn_forward"),
                            desc="test", progress=False)
    return out, seen, z


def test_fit_network_computes_the_loss_in_float32(monkeypatch):
    """Logits, targets and class weight reach the loss as float32 (as on a GPU under autocast), not float64."""
    seen = []
    real = training.F.binary_cross_entropy_with_logits

    def bce(logits, target, pos_weight=None):
        seen.append((logits.dtype, target.dtype, pos_weight.dtype))
        return real(logits, target, pos_weight=pos_weight)

    monkeypatch.setattr(training.F, "binary_cross_entropy_with_logits", bce)
    _fit_frozen(12, 5, np.r_[np.ones(3), np.zeros(9)], [1, 0], [0.6, 0.3], epochs=1, seed=0)
    assert seen and set(seen) == {(torch.float32, torch.float32, torch.float32)}


@pytest.mark.parametrize("n, batch_size, sizes", [(12, 5, [5, 5, 2]), (11, 5, [5, 5])])
def test_fit_network_batches_and_training_loss_by_hand(n, batch_size, sizes):
    """Each epoch: one seeded permutation of the fitting rows cut into batches (a last batch of a single
    patient is skipped, one of two is kept); the curve's training loss is the patient-weighted mean of
    the batch losses, each the BCE with pos_weight = n_long / n_short."""
    y = np.r_[np.ones(3), np.zeros(n - 3)]
    out, seen, z = _fit_frozen(n, batch_size, y, [1, 0], [0.6, 0.3], epochs=2, seed=11)
    g = torch.Generator().manual_seed(11)
    expected_batches, losses = [], []
    for _ in range(2):
        order = torch.randperm(n, generator=g).tolist()
        batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        batches = [b for b in batches if len(b) >= 2]
        expected_batches += batches
        pw = (n - 3) / 3
        total = sum(_bce_logits(z[b], y[b], pw).mean() * len(b) for b in batches)
        losses.append(total / sum(len(b) for b in batches))
    assert [b for b, _ in seen] == expected_batches
    assert [len(b) for b, _ in seen[:len(sizes)]] == sizes
    assert {s for _, s in seen} == {11}  # the batch function draws from the loop's generator, seeded with the seed
    np.testing.assert_allclose(out.curve["train_loss"], losses, rtol=1e-5)
    assert list(out.curve.columns) == ["epoch", "train_loss", "val_loss", "val_auroc"]
    assert out.curve["epoch"].tolist() == [1, 2]


def test_fit_network_validation_loss_auroc_and_clipping_by_hand():
    """Validation loss: BCE of the probabilities clipped to [1e-6, 1 - 1e-6], positives weighted by
    pos_weight of the fitting part; AUROC only when the validation part has both classes."""
    y_fit = np.r_[np.ones(2), np.zeros(6)]  # pos_weight 3
    p = np.array([0.0, 1.0, 0.3, 0.8])
    out, _, _ = _fit_frozen(8, 4, y_fit, [1, 0, 1, 0], p, epochs=1)
    q = np.clip(p, 1e-6, 1 - 1e-6)
    yv = np.array([1, 0, 1, 0])
    expected = np.mean(-(3 * yv * np.log(q) + (1 - yv) * np.log(1 - q)))
    assert out.curve["val_loss"].iloc[0] == pytest.approx(expected, rel=1e-3)  # float32: 1 - 1e-6 is inexact
    assert out.curve["val_auroc"].iloc[0] == 0.0  # both positives below both negatives
    # exactly one positive: an AUROC; one class only: none (and no error)
    one, _, _ = _fit_frozen(8, 4, y_fit, [1, 0, 0], [0.9, 0.2, 0.4], epochs=1)
    assert one.curve["val_auroc"].iloc[0] == 1.0
    for y_val in ([0, 0, 0], [1, 1, 1]):
        out, _, _ = _fit_frozen(8, 4, y_fit, y_val, [0.9, 0.2, 0.4], epochs=1)
        assert np.isnan(out.curve["val_auroc"].iloc[0])
    # no short-PFS patient in the fitting part: pos_weight n / 1
    none, _, _ = _fit_frozen(8, 4, np.zeros(8), [1, 0], [0.5, 0.5], epochs=1)
    assert none.curve["val_loss"].iloc[0] == pytest.approx(np.mean([8 * -np.log(0.5), -np.log(0.5)]), rel=1e-5)


def test_fit_network_keeps_the_first_of_tied_best_epochs_and_the_last_without_validation():
    y_fit = np.r_[np.ones(2), np.zeros(6)]
    tied, _, _ = _fit_frozen(8, 4, y_fit, [1, 0], [0.6, 0.3], epochs=3, selection="val_loss")
    assert tied.curve["val_loss"].nunique() == 1 and tied.best_epoch == 1
    last, _, _ = _fit_frozen(8, 4, y_fit, [1, 0], [0.6, 0.3], epochs=3, selection="last")
    assert last.best_epoch == 3
    empty, _, _ = _fit_frozen(8, 4, y_fit, np.zeros(0, int), np.zeros(0), epochs=3, selection="val_loss")
    assert empty.curve["val_loss"].isna().all() and empty.best_epoch == 3


def test_images_and_convolutions_are_channels_last_and_other_tensors_stay_as_they_are():
    """3D convolutions and pooling run faster channels-last, on the CPU too (benchmarks/training_cost.py): the
    trained CNN's convolution weights and every image batch have that layout; a table's rows (a fusion's lab
    branch) go to the device untouched, since the layout needs five dimensions."""
    x, y = separable(n=24, size=(8, 8, 8))
    x = torch.cat([x, 1 - x], dim=1)  # two channels (with one, both layouts have the same strides)
    out = training.train_model(x[::2], y.iloc[::2].to_numpy(int), x[1::2], y.iloc[1::2].to_numpy(int),
                            training.TrainConfig(epochs=1, batch_size=4, augment=False), seed=0, progress=False)
    def channels_last(model):
        convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
        return convs and all(w.is_contiguous(memory_format=torch.channels_last_3d) and not w.is_contiguous()
                             for w in convs)

    assert channels_last(out.model)
    # the training loop itself gives the network the layout (not only predict, which validation calls)
    net = ImageClassifier(build_encoder("compact", 2))
    training.fit_network(net, y.iloc[:8].to_numpy(float), np.zeros(0), training.TrainConfig(epochs=1, batch_size=8),
                         0, lambda idx, g: (training.to_device(x[idx], torch.device("cpu")),),
                         validate=lambda: np.zeros(0), bn_forward=None, desc="t", progress=False)
    assert channels_last(net)
    batch = training.to_device(x[:3], torch.device("cpu"))
    assert batch.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(batch, x[:3])
    table = torch.rand(3, 4)
    assert training.to_device(table, torch.device("cpu")) is table
    # a model restored contiguous predicts as the trained one (predict gives it the layout of its inputs)
    restored = ImageClassifier(build_encoder("compact", 2))
    restored.load_state_dict(out.model.state_dict())
    restored = restored.to(memory_format=torch.contiguous_format)
    np.testing.assert_allclose(training.predict(restored, x[1::2]), training.predict(out.model, x[1::2]), atol=1e-6)


def test_training_shows_one_progress_bar_that_it_clears(capfd):
    """A bar named after the model (or "training"), counting epochs, with the losses; gone when done.
    progress=False shows nothing."""
    x, y = separable(n=24, size=(8, 8, 8))
    cfg = training.TrainConfig(epochs=2, batch_size=4, augment=False)
    args = (x[::2], y.iloc[::2].to_numpy(int), x[1::2], y.iloc[1::2].to_numpy(int), cfg)
    training.train_model(*args, seed=0)
    err = capfd.readouterr().err
    assert "training:" in err and "epoch/s" in err
    assert re.search(r"[ ,]loss=\d\.\d{3}", err) and re.search(r"val_loss=\d\.\d{3}", err)  # both, as numbers
    assert err.endswith("\r") and err.rsplit("\r", 2)[-2].strip() == ""  # the line cleared, not left
    training.train_model(*args, seed=0, progress=False)
    assert capfd.readouterr().err == ""
    data = base.ModelData(y, images={"pet": base.ImageSet(x, list(y.index))})
    part = base.TrainingPart(list(y.index[::2]), list(y.index[1::2]))
    image_model.ImageModel("pet", cfg).fit(data, part, seed=0)
    assert "pet:" in capfd.readouterr().err
    image_model.ImageModel("pet", cfg).fit(data, part, seed=0, progress=False)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("precise_bn", [True, False])
def test_batch_norm_is_recomputed_after_each_validated_epoch_only_when_asked(monkeypatch, precise_bn):
    calls = []
    monkeypatch.setattr(training, "recompute_batch_norm", lambda *a, **k: calls.append(k["forward"]))
    forward = object()
    _fit_frozen(8, 4, np.r_[np.ones(2), np.zeros(6)], [1, 0], [0.6, 0.3], epochs=3, precise_bn=precise_bn,
                kw_bn={"bn_forward": forward})
    assert calls == ([forward] * 3 if precise_bn else [])
    calls.clear()
    # one validation patient is a validation part too: each epoch's score reads recomputed statistics
    _fit_frozen(8, 4, np.r_[np.ones(2), np.zeros(6)], [1], [0.6], epochs=3, precise_bn=precise_bn,
                kw_bn={"bn_forward": forward})
    assert calls == ([forward] * 3 if precise_bn else [])
    calls.clear()
    # no validation patients: no epoch but the last is scored, so the statistics are computed once, at the end
    _fit_frozen(8, 4, np.r_[np.ones(2), np.zeros(6)], [], [], epochs=3, precise_bn=precise_bn,
                kw_bn={"bn_forward": forward})
    assert calls == ([forward] if precise_bn else [])
    calls.clear()
    _fit_frozen(8, 4, np.r_[np.ones(2), np.zeros(6)], [1, 0], [0.6, 0.3], epochs=3, precise_bn=precise_bn)
    assert calls == []  # nothing to run the batch norm with


def test_validation_patients_change_neither_the_kept_weights_nor_the_statistics():
    """With the last epoch's weights kept, scoring validation patients after each epoch (and recomputing the
    batch-norm statistics for it) leaves training as it is: the same weights, running statistics and
    predictions as one recomputation at the end, although the network has dropout."""
    x, y = separable(n=30, size=(12, 12, 10))
    cfg = training.TrainConfig(epochs=3, augment=True, dropout=0.5)
    y_fit = y.iloc[:20].to_numpy(int)
    with_val = training.train_model(x[:20], y_fit, x[20:], y.iloc[20:].to_numpy(int), cfg, seed=4, progress=False)
    without = training.train_model(x[:20], y_fit, x[:0], y_fit[:0], cfg, seed=4, progress=False)
    assert with_val.curve["val_loss"].notna().all() and without.curve["val_loss"].isna().all()
    a, b = with_val.model.state_dict(), without.model.state_dict()
    assert list(a) == list(b) and any("running_var" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    np.testing.assert_array_equal(training.predict(with_val.model, x[20:]), training.predict(without.model, x[20:]))


def test_recomputing_batch_norm_draws_no_random_numbers():
    """Dropout is off while the statistics are recomputed: the global generator is where it was."""
    torch.manual_seed(0)
    model = ImageClassifier(build_encoder("compact", 1), dropout=0.5)
    x = torch.rand(6, 1, 8, 8, 8)
    state = torch.get_rng_state()
    training.recompute_batch_norm(model, x, 4, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)
    assert not model.training


@pytest.mark.parametrize("augment", [True, False])
def test_every_training_batch_is_augmented_only_when_asked(monkeypatch, augment):
    seen = []
    real = training.BatchAugmenter.__call__
    monkeypatch.setattr(training.BatchAugmenter, "__call__", lambda self, x: seen.append(len(x)) or real(self, x))
    x, y = separable(n=24, size=(8, 8, 8))
    training.train_model(x[:20], y.iloc[:20].to_numpy(int), x[20:], y.iloc[20:].to_numpy(int),
                      training.TrainConfig(epochs=2, batch_size=8, augment=augment), seed=0, progress=False)
    assert seen == ([8, 8, 4] * 2 if augment else [])


def test_a_network_without_convolutions_trains_on_one_thread_and_gives_the_threads_back():
    """The fusions' small networks train on one CPU thread (their operations are too small to share); a CNN keeps
    the process's threads; either way the process has its threads again afterwards."""
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, y = separable(n=24, size=(8, 8, 8))

        class Probe(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, *a):
                seen.append(torch.get_num_threads())
                return self.net(*a)

        cnn = Probe(ImageClassifier(build_encoder("compact", 1)))
        mlp = Probe(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 ** 3, 1), torch.nn.Flatten(0)))
        cfg = training.TrainConfig(epochs=1, batch_size=8, precise_bn=False)
        for model, threads in ((cnn, 2), (mlp, 1)):
            seen.clear()
            training.fit_network(model, y.to_numpy(float), np.zeros(0), cfg, 0, lambda idx, g: (x[idx],),
                                 validate=lambda: np.zeros(0), bn_forward=None, desc="t", progress=False)
            assert seen and set(seen) == {threads}
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
