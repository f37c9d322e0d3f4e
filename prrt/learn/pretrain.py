"""Self-supervised pretraining of the CT encoder, and the CT encoder's starting weights for a run.

The study pretrained its CT branch on data outside its cohort. :func:`pretrain_ct` does the same
without any outcome label, on a CT collection that is never part of a cross-validation fold:

* **Recipe** (MONAI's self-supervised recipe, Tang et al. 2022 / the MONAI SSL tutorial, on our
  CNN encoder instead of a ViT): two corrupted views of each CT input, each made by
  ``RandCoarseDropout`` (boxes of the volume blanked) and ``RandCoarseShuffle`` (voxels shuffled
  inside boxes); the encoder's feature map is decoded back to the *uncorrupted* volume (L1 loss),
  and the two views' pooled features are pulled together against the other volumes of the batch
  (MONAI's ``ContrastiveLoss``, NT-Xent). Loss = L1(view 1) + L1(view 2) + ``contrast_weight`` ×
  contrastive. One tenth of the collection is held out to show a validation loss; it selects nothing.
* **Inputs** are preprocessed exactly as the CT CNN's (the profile's region of interest, size and
  HU window, through the image cache); with the profile's mask channel, a case's lesion mask is the
  second channel (zeros when the collection has none).
* **Output**: ``ct_encoder.pt`` (the encoder's state dict, its name and input channels, the card)
  and ``ct_encoder.json``, a card with the SHA-256 of every input file, the recipe, settings, seed,
  epochs and loss curve. The result is cached under ``<cache>/pretrain/<key>/``, the key being a
  hash of the input files' content, the preprocessing settings (and the mask channel), the recipe
  settings and the seed.

Collections (:func:`ct_collection`): a data manifest (its CTs and lesion masks; nothing else is
read), a folder with one subfolder per case holding ``ct.<ext>`` and optionally
``lesion_mask.<ext>``, or a flat folder of CT files. ``prrt demo-data --pretrain-ct N`` writes a
synthetic one of N cases, disjoint from the cohort.

:func:`ct_encoder_state` gives the CT encoder of chapter 04 its starting weights: a file
(``prrt run --ct-weights``, or the manifest's ``ct_pretraining: weights``) or pretraining on the manifest's
``ct_pretraining: data``; pretrained weights whose card lists a CT file of the cohort are refused
(:func:`check_disjoint`). Loading a state dict into an encoder is :mod:`prrt.learn.weights`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import load_cohort
from ..imaging import (
    LIVER_IN_MASK_CHANNEL,
    ImageCache,
    PreprocessSettings,
    mask_channel_array,
)
from ..provenance import file_sha256
from ..timing import phase
from .networks import build_encoder
from .training import seed_everything
from .weights import load_encoder_weights, map_keys, parse_prefix_map, state_dict_of

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
RECIPE = ("MONAI self-supervised recipe on the CNN encoder: restore the CT from two views corrupted by "
          "RandCoarseDropout and RandCoarseShuffle (L1) + NT-Xent contrast between the views (ContrastiveLoss)")


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of the pretraining recipe (part of the cache key)."""

    encoder: str = "compact"
    epochs: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-5
    dropout_holes: int = 6  # boxes blanked per view
    shuffle_holes: int = 6  # boxes shuffled per view
    hole_fraction: float = 0.15  # box edge as a fraction of the input edge
    contrast_weight: float = 0.5
    temperature: float = 0.5
    val_fraction: float = 0.1


# ---- the collection -----------------------------------------------------------------------------
def _is_image(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)


def _find(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{s}" for s in IMAGE_SUFFIXES if (folder / f"{stem}{s}").is_file()), None)


def ct_collection(source) -> list[dict]:
    """The cases of a CT collection: ``[{"case", "ct", "mask", "organs"}]`` (``mask``, ``organs`` None when there
    is none).

    ``source``: a data manifest (``.yaml``/``.yml``), a folder of case folders (``<case>/ct.<ext>``
    and optionally ``<case>/lesion_mask.<ext>`` and ``<case>/organs.<ext>``), or a flat folder of CT files.
    """
    source = Path(source)
    if source.suffix.lower() in (".yaml", ".yml"):
        c = load_cohort(source, check_images="exists")
        if "ct" not in c.modalities:
            raise ValueError(f"{source}: the manifest names no CT images to pretrain on")
        return [{"case": p, "ct": c.image_path(p, "ct"), "mask": c.image_path(p, "mask"),
                 "organs": c.image_path(p, "organs")} for p in c.data.index if c.image_path(p, "ct") is not None]
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: neither a manifest nor a folder of CT images")
    cases = []
    for d in sorted(p for p in source.iterdir() if p.is_dir()):
        ct = _find(d, "ct")
        if ct is not None:
            cases.append({"case": d.name, "ct": ct, "mask": _find(d, "lesion_mask"), "organs": _find(d, "organs")})
    if not cases:
        cases = [{"case": p.name.split(".")[0], "ct": p, "mask": None, "organs": None} for p in sorted(source.iterdir())
                 if _is_image(p) and "mask" not in p.name.lower()]
    if not cases:
        raise ValueError(f"{source}: no CT found (expected <case>/ct.nii.gz folders or CT files)")
    return cases


def collection_hashes(cases: list[dict]) -> dict[str, str]:
    """SHA-256 of every file of the collection, ``{"<case>/ct": hash, "<case>/mask": hash, ...}``."""
    return {f"{c['case']}/{m}": file_sha256(c[m]) for c in cases for m in ("ct", "mask", "organs")
            if c.get(m) is not None}


def collection_tensor(cases: list[dict], profile, cache_dir, progress: bool = True) -> torch.Tensor:
    """The cases preprocessed as the CT CNN's inputs: (N, C, X, Y, Z), C = 2 with the mask channel."""
    from tqdm.auto import tqdm


    settings = PreprocessSettings.from_profile(profile)
    cache = ImageCache(cache_dir)
    xs = []
    for c in tqdm(cases, desc="preprocessing pretraining CTs", unit="CT", disable=not progress):
        a = cache.get({"ct": c["ct"], "mask": c["mask"], "organs": c.get("organs")}, settings,
                      patient=f"pretraining case {c['case']}")
        ch = [a["ct"]]
        if profile.mask_channel:
            ch.append(mask_channel_array(a, a["ct"], profile.liver_in_mask_channel))
        xs.append(np.stack(ch).astype(np.float32))
    return torch.from_numpy(np.stack(xs))


def check_disjoint(card: dict, cohort) -> None:
    """Refuse pretrained weights whose pretraining saw one of the cohort's own CT files."""
    seen = set(card.get("data_sha256", {}).values())
    clash = [p for p in cohort.data.index
             if cohort.image_path(p, "ct") is not None and file_sha256(cohort.image_path(p, "ct")) in seen]
    if clash:
        raise ValueError(f"the CT encoder was pretrained on {len(clash)} CTs of this cohort (e.g. {clash[:3]}): "
                         "they would reach every test fold; pretrain on CTs from outside the cohort")


# ---- the network ------------------------------------------------------------------------------------
class Restorer(nn.Module):
    """Encoder + a decoder from its last feature map back to the CT channel + a projection for contrast."""

    def __init__(self, encoder: nn.Module, out_channels: int = 1, proj_dim: int = 64):
        super().__init__()
        if not hasattr(encoder, "body"):
            raise ValueError("self-supervised pretraining needs an encoder with a feature map (the compact CNNs)")
        self.encoder = encoder
        c, blocks = encoder.feature_dim, []
        while c > 8:
            blocks += [nn.ConvTranspose3d(c, c // 2, 2, stride=2), nn.BatchNorm3d(c // 2), nn.LeakyReLU(0.1)]
            c //= 2
        self.decoder = nn.Sequential(*blocks, nn.Conv3d(c, out_channels, 1))
        self.project = nn.Sequential(nn.Linear(encoder.feature_dim, proj_dim), nn.ReLU(), nn.Linear(proj_dim, proj_dim))

    def forward(self, x):
        fmap = self.encoder.body(x)
        recon = F.interpolate(self.decoder(fmap), size=x.shape[2:], mode="trilinear", align_corners=False)
        return recon, self.project(torch.flatten(self.encoder.pool(fmap), 1))


class Corrupter:
    """MONAI's RandCoarseDropout + RandCoarseShuffle on the CT channel, seeded, one volume at a time."""

    def __init__(self, cfg: PretrainConfig, size, seed: int):
        from monai.transforms import RandCoarseDropout, RandCoarseShuffle

        edge = [max(2, int(round(s * cfg.hole_fraction))) for s in size]
        self.dropout = RandCoarseDropout(holes=cfg.dropout_holes, spatial_size=edge, fill_value=0.0, prob=1.0)
        self.shuffle = RandCoarseShuffle(holes=cfg.shuffle_holes, spatial_size=edge, prob=1.0)
        self.dropout.set_random_state(seed)
        self.shuffle.set_random_state(seed + 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        for i in range(len(x)):
            ct = out[i, :1].numpy()
            ct = np.asarray(self.shuffle(self.dropout(ct)))
            out[i, :1] = torch.from_numpy(np.ascontiguousarray(ct, dtype=np.float32))
        return out


def _losses(model, x, v1, v2, contrast, cfg):
    r1, z1 = model(v1)
    r2, z2 = model(v2)
    restore = F.l1_loss(r1, x[:, :1]) + F.l1_loss(r2, x[:, :1])
    return restore + cfg.contrast_weight * contrast(z1, z2)


def train_restorer(x: torch.Tensor, cfg: PretrainConfig, seed: int, progress: bool = True):
    """Pretrain an encoder on the volumes ``x`` (N, C, X, Y, Z); returns (encoder, loss curve)."""
    import pandas as pd
    from monai.losses import ContrastiveLoss
    from tqdm.auto import tqdm

    seed_everything(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_val = max(2, int(round(cfg.val_fraction * len(x)))) if len(x) >= 8 else 0
    val, fit = order[:n_val], order[n_val:]
    model = Restorer(build_encoder(cfg.encoder, in_channels=x.shape[1]))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    contrast = ContrastiveLoss(temperature=cfg.temperature)
    corrupt = Corrupter(cfg, x.shape[2:], seed)
    g = torch.Generator().manual_seed(seed)
    rows = []
    val_views = (corrupt(x[val]), corrupt(x[val])) if n_val else None
    bar = tqdm(range(cfg.epochs), desc="pretraining the CT encoder", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        total, seen = 0.0, 0
        perm = torch.as_tensor(fit)[torch.randperm(len(fit), generator=g)]
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            if len(idx) < 2:  # a contrast needs at least two volumes
                continue
            xb = x[idx]
            loss = _losses(model, xb, corrupt(xb), corrupt(xb), contrast, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        sched.step()
        val_loss = np.nan
        if n_val:
            model.eval()
            with torch.no_grad():
                val_loss = float(_losses(model, x[val], *val_views, contrast, cfg))
        rows.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_loss": val_loss})
        bar.set_postfix(loss=f"{rows[-1]['train_loss']:.3f}")
    model.eval()
    return model.encoder, pd.DataFrame(rows)


# ---- the command --------------------------------------------------------------------------------------
def cache_key(hashes: dict, profile, cfg: PretrainConfig, seed: int) -> str:
    spec = {"data": hashes, "settings": PreprocessSettings.from_profile(profile).key(),
            "mask_channel": bool(profile.mask_channel), "recipe": asdict(cfg), "seed": int(seed)}
    if profile.mask_channel and profile.liver_in_mask_channel:  # (absent otherwise: earlier keys stay valid)
        spec["liver_in_mask_channel"] = LIVER_IN_MASK_CHANNEL
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def pretrain_ct(source, profile, cache_dir, seed: int, cfg: PretrainConfig | None = None, progress: bool = True,
                force: bool = False) -> Path:
    """Pretrain the CT encoder on the collection ``source`` (or reuse the cached result); returns the weights file."""
    cfg = cfg or PretrainConfig(encoder=profile.encoder)
    cases = ct_collection(source)
    hashes = collection_hashes(cases)
    key = cache_key(hashes, profile, cfg, seed)
    folder = Path(cache_dir) / "pretrain" / key
    weights = folder / "ct_encoder.pt"
    if weights.is_file() and not force:
        return weights
    t0 = time.perf_counter()
    x = collection_tensor(cases, profile, cache_dir, progress)
    with phase("pretraining", model="CT encoder"):
        encoder, curve = train_restorer(x, cfg, seed, progress)
    card = {
        "what": "CT encoder pretrained without outcome labels (prrt pretrain-ct)",
        "recipe": RECIPE, "config": asdict(cfg), "seed": int(seed), "epochs": cfg.epochs,
        "n_cases": len(cases), "in_channels": int(x.shape[1]), "input_size_voxels": list(x.shape[2:]),
        "profile": profile.name, "data_sha256": hashes,
        "data_sha256_combined": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest(),
        "loss_curve": curve.round(6).to_dict(orient="list"),
        "seconds": round(time.perf_counter() - t0, 1), "torch": str(torch.__version__), "key": key,
    }
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "ct_encoder.pt.partial"
    torch.save({"encoder": encoder.state_dict(), "encoder_name": cfg.encoder, "in_channels": int(x.shape[1]),
                "card": card}, tmp)
    (folder / "ct_encoder.json").write_text(json.dumps(card, indent=2))
    tmp.replace(weights)  # the weights appear only when complete
    return weights


def read_card(weights) -> dict:
    card = Path(weights).with_suffix(".json")
    if card.is_file():
        return json.loads(card.read_text())
    obj = torch.load(weights, map_location="cpu", weights_only=True)
    return obj.get("card", {}) if isinstance(obj, dict) else {}


def ct_encoder_state(cohort, profile, cache_dir, seed: int, ct_weights: str = "", key_prefixes=(),
                     progress: bool = True) -> tuple[dict | None, dict, str]:
    """The CT encoder's starting weights for chapter 04: ``(state dict or None, card, how they were made)``.

    ``ct_weights`` (``prrt run --ct-weights``) wins over the manifest's ``ct_pretraining``; its
    ``weights`` win over its ``data``. With ``data``, the encoder is pretrained (or taken from the
    cache) on that collection, which must share no CT file with the cohort. The state dict is checked
    against the profile's encoder before it is returned.
    """
    spec = dict(cohort.ct_pretraining)
    if ct_weights:
        spec = {"weights": Path(ct_weights), "key_prefixes": list(key_prefixes)}
    in_channels = 2 if profile.mask_channel else 1
    if spec.get("weights"):
        path = Path(spec["weights"])
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = map_keys(state_dict_of(obj, path), parse_prefix_map(spec.get("key_prefixes")))
        load_encoder_weights(build_encoder(profile.encoder, in_channels), state)  # fails early, listing keys
        card = obj.get("card", {}) if isinstance(obj, dict) else {}
        if card.get("data_sha256"):
            check_disjoint(card, cohort)
        return state, card, f"weights from {path.name}"
    if spec.get("data"):
        cfg = PretrainConfig(encoder=profile.encoder, epochs=profile.pretrain_epochs)
        path = pretrain_ct(spec["data"], profile, cache_dir, seed, cfg, progress=progress)
        card = read_card(path)
        check_disjoint(card, cohort)
        state = torch.load(path, map_location="cpu", weights_only=True)["encoder"]
        return state, card, f"self-supervised pretraining on {card['n_cases']} CTs outside the cohort"
    return None, {}, ""
