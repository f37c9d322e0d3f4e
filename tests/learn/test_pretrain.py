"""CT-encoder pretraining: collections, the weights file and its card, the cache, loading weights."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from prrt.data.phantoms import generate_ct_collection
from prrt.learn import pretrain, weights
from prrt.learn.networks import build_encoder
from prrt.profiles import get_profile


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return generate_ct_collection(tmp_path_factory.mktemp("ctset"), 10, seed=3, geometry="small", progress=False)


def test_collection_forms(collection, tmp_path, small_cohort_dir):
    cases = pretrain.ct_collection(collection)
    assert [c["case"] for c in cases] == [f"C{i:03d}" for i in range(1, 11)]
    assert all(c["ct"].name == "ct.nii.gz" and c["mask"].name == "lesion_mask.nii.gz"
               and c["organs"].name == "organs.nii.gz" for c in cases)
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(collection / "C001" / "ct.nii.gz", flat / "a.nii.gz")
    shutil.copy(collection / "C001" / "lesion_mask.nii.gz", flat / "a_mask.nii.gz")
    assert [(c["case"], c["mask"]) for c in pretrain.ct_collection(flat)] == [("a", None)]
    from_manifest = pretrain.ct_collection(small_cohort_dir / "manifest.yaml")
    assert len(from_manifest) == 26 and all(c["ct"].is_file() and c["organs"].is_file() for c in from_manifest)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no CT found"):
        pretrain.ct_collection(tmp_path / "empty")


def test_pretraining_writes_weights_and_card_and_is_cached(collection, tmp_path, monkeypatch):
    prof = get_profile("smoke")
    cfg = pretrain.PretrainConfig(epochs=6)
    w = pretrain.pretrain_ct(collection, prof, tmp_path, seed=1, cfg=cfg, progress=False)
    card = json.loads(w.with_suffix(".json").read_text())
    hashes = pretrain.collection_hashes(pretrain.ct_collection(collection))
    assert card["data_sha256"] == hashes and len(hashes) == 30  # every CT, lesion mask and organ map
    assert card["n_cases"] == 10 and card["epochs"] == 6 and card["seed"] == 1 and card["in_channels"] == 2
    assert card["recipe"] == pretrain.RECIPE and card["config"]["contrast_weight"] == cfg.contrast_weight
    loss = card["loss_curve"]["train_loss"]
    assert len(loss) == 6 and loss[-1] < loss[0]  # the restoration is learnt
    # the weights load into a fresh encoder of the same kind
    enc = build_encoder("compact", in_channels=2)
    weights.load_encoder_weights(enc, w)
    saved = torch.load(w, weights_only=True)["encoder"]
    assert all(torch.equal(enc.state_dict()[k], v) for k, v in saved.items())
    # the same inputs and settings come from the cache, without training
    monkeypatch.setattr(pretrain, "train_restorer", lambda *a, **k: pytest.fail("trained again"))
    assert pretrain.pretrain_ct(collection, prof, tmp_path, seed=1, cfg=cfg, progress=False) == w
    # another seed is another result, and so is a mask channel without the liver
    assert pretrain.cache_key(hashes, prof, cfg, 2) != pretrain.cache_key(hashes, prof, cfg, 1)
    assert pretrain.cache_key(hashes, replace(prof, liver_in_mask_channel=False), cfg, 1) != \
        pretrain.cache_key(hashes, prof, cfg, 1)


def test_same_seed_same_pretrained_weights(collection, tmp_path):
    prof = get_profile("smoke")
    x = pretrain.collection_tensor(pretrain.ct_collection(collection), prof, tmp_path, progress=False)
    # the second channel shows the lesions (1) and the liver of the organ map (0.5), as the CT CNN's does
    assert x.shape[1] == 2 and set(np.unique(x[:, 1].numpy())) == {0.0, 0.5, 1.0}
    cfg = pretrain.PretrainConfig(epochs=2)
    a, ca = pretrain.train_restorer(x, cfg, seed=4, progress=False)
    b, cb = pretrain.train_restorer(x, cfg, seed=4, progress=False)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert ca.equals(cb)


def test_weights_that_do_not_fit_are_listed(tmp_path):
    enc = build_encoder("compact", in_channels=2)
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    state.pop("body.0.weight")  # missing
    state["head.bias"] = torch.zeros(1)  # unexpected
    state["body.1.weight"] = torch.ones(5)  # wrong shape (8 channels)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(weights.WeightsError) as e:
        weights.load_encoder_weights(build_encoder("compact", in_channels=2), path)
    msg = str(e.value)
    assert "missing from the file (1): body.0.weight" in msg
    assert "unexpected in the file (1): head.bias" in msg
    assert "shape mismatch: body.1.weight: file (5,) vs encoder (8,)" in msg
    assert str(path) in msg


def test_prefixes_are_mapped_for_weights_from_elsewhere(tmp_path):
    # a DataParallel checkpoint of our encoder
    enc = build_encoder("compact", in_channels=1)
    torch.save({f"module.{k}": v for k, v in enc.state_dict().items()}, tmp_path / "dp.pt")
    with pytest.raises(weights.WeightsError, match="map key prefixes"):
        weights.load_encoder_weights(build_encoder("compact", in_channels=1), tmp_path / "dp.pt")
    other = build_encoder("compact", in_channels=1)
    weights.load_encoder_weights(other, tmp_path / "dp.pt", weights.parse_prefix_map(["module.="]))
    assert all(torch.equal(other.state_dict()[k], v) for k, v in enc.state_dict().items())
    # a bare MONAI ResNet-10 state dict goes into our wrapper with the prefix 'net.'
    from monai.networks import nets

    resnet = nets.resnet10(spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type="A",
                           bias_downsample=True)
    torch.save(resnet.state_dict(), tmp_path / "resnet10.pt")
    wrapped = build_encoder("resnet10", in_channels=1)
    weights.load_encoder_weights(wrapped, tmp_path / "resnet10.pt", weights.parse_prefix_map(["=net."]))
    assert torch.equal(wrapped.net.conv1.weight, resnet.conv1.weight)
    with pytest.raises(ValueError, match="must read OLD=NEW"):
        weights.parse_prefix_map(["module."])


def test_pretraining_on_cohort_ct_is_refused(small_cohort_dir):
    from prrt.data.load import load_cohort
    from prrt.provenance import file_sha256

    c = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    p = c.data.index[3]
    pretrain.check_disjoint({"data_sha256": {"x/ct": "0" * 64}}, c)  # outside the cohort: fine
    with pytest.raises(ValueError, match=rf"pretrained on 1 CTs of this cohort \(e.g. \['{p}'\]\)"):
        pretrain.check_disjoint({"data_sha256": {"x/ct": file_sha256(c.image_path(p, "ct"))}}, c)


def test_the_collection_is_the_same_written_by_one_process_or_two(tmp_path):
    """Each case draws from its own seed: worker processes change nothing in what is written."""
    import nibabel as nib

    one = generate_ct_collection(tmp_path / "one", 4, seed=5, geometry="small", progress=False, workers=1)
    two = generate_ct_collection(tmp_path / "two", 4, seed=5, geometry="small", progress=False, workers=2)
    files = sorted(p.relative_to(one) for p in one.rglob("*.nii.gz"))
    assert len(files) == 12 and files == sorted(p.relative_to(two) for p in two.rglob("*.nii.gz"))
    for f in files:
        a, b = nib.load(one / f), nib.load(two / f)
        assert np.array_equal(a.affine, b.affine) and np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)), f
