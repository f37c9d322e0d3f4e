"""The training engine shared by every image model.

* **Data in memory.** Preprocessed tensors come from the imaging cache once
  (:func:`image_tensors`) and stay in memory as one tensor, so an epoch re-reads no file.
* **Device.** CUDA when present, else CPU (:func:`select_device`). On a GPU: bf16 autocast, the
  ``channels_last_3d`` memory format and cuDNN autotuning; on the CPU: float32 and deterministic
  algorithms, so that the same seed gives the same predictions.
* **Class imbalance.** Binary cross-entropy with ``pos_weight = n_long / n_short`` of the training
  patients; the test predictions are then prior-corrected with the fitting part's share of short
  PFS (:func:`prrt.evaluate.prior_correction`), so that they read as risks.
* **Schedule and the kept weights.** AdamW with a cosine-annealed learning rate over the profile's
  epochs; by default (``selection = "last"``) the weights after the last epoch are kept.
  ``selection = "val_loss"`` keeps the epoch with the lowest inner-validation loss instead: on the
  tuning cohort (generator seed 7) that choice, made on ~15 validation patients, kept one of the
  first five epochs in 19 of 42 folds (see book/methods.md).
* **Inner validation.** Each training fold is split once more, stratified, into a part that fits
  the network and a validation part (``val_fraction``) whose loss and AUROC per epoch are the
  learning curves (and that selects the epoch with ``selection = "val_loss"``). The test fold is
  never seen before its single prediction.
* **Augmentation** on training batches only: a random affine (rotation up to ±0.1 rad, scaling
  ±5 %, translation ±5 % of the field of view) applied to the whole batch at once with MONAI's
  ``AffineTransform`` layer, and a random intensity scaling of ±10 %.
* **Records.** A tqdm progress bar per fold; the best checkpoint (``checkpoints/<model>/r{repeat}_f{fold}.pt``)
  and the training curve (loss and validation AUROC per epoch) per repeat and fold.
"""

from __future__ import annotations

import copy
import random
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import sklearn
from sklearn.metrics import roc_auc_score

from .evaluate import prior_correction
from .networks import ImageClassifier, build_encoder


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one image model (the profile sets ``encoder``, ``epochs`` and ``batch_size``).

    ``selection``: ``"last"`` (the weights after the last epoch) or ``"val_loss"`` (the epoch with
    the lowest inner-validation loss); ``lr_schedule``: ``"cosine"`` or ``"constant"``.
    """

    encoder: str = "compact"
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.3
    val_fraction: float = 0.2
    augment: bool = True
    selection: str = "last"
    lr_schedule: str = "cosine"
    precise_bn: bool = True
    device: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(preference: str = "auto") -> torch.device:
    """``cuda`` when available (or asked for), else ``cpu``."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def _setup_backend(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.use_deterministic_algorithms(False)
    else:
        torch.use_deterministic_algorithms(True)


class BatchAugmenter:
    """Random affine + intensity scaling of a whole batch (N, C, X, Y, Z), from a seeded generator."""

    def __init__(self, seed: int, rotate_rad: float = 0.1, scale: float = 0.05, translate: float = 0.1,
                 intensity: float = 0.1):
        from monai.networks.layers import AffineTransform

        self.g = torch.Generator().manual_seed(seed)
        self.warp = AffineTransform(normalized=True, padding_mode="border", mode="bilinear")
        self.rotate_rad, self.scale, self.translate, self.intensity = rotate_rad, scale, translate, intensity

    def _uniform(self, n, k, r):
        return (torch.rand(n, k, generator=self.g) * 2 - 1) * r

    def theta(self, n: int) -> torch.Tensor:
        from monai.transforms.utils import create_rotate

        ang, sc, tr = self._uniform(n, 3, self.rotate_rad), 1 + self._uniform(n, 3, self.scale), \
            self._uniform(n, 3, self.translate)
        out = []
        for i in range(n):
            R = torch.as_tensor(create_rotate(3, ang[i].tolist()), dtype=torch.float32)
            S = torch.diag(torch.cat([1 / sc[i], torch.ones(1)]))
            T = torch.eye(4)
            T[:3, 3] = tr[i]
            out.append((T @ R @ S)[:3])
        return torch.stack(out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        theta = self.theta(n).to(x.device)
        factor = (1 + self._uniform(n, 1, self.intensity)).to(x.device).view(n, 1, 1, 1, 1)
        return self.warp(x.float(), theta).to(x.dtype) * factor


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, device: torch.device | None = None,
            batch_size: int = 32) -> np.ndarray:
    """Probabilities of short PFS for the images ``x`` (N, C, X, Y, Z)."""
    device = device or next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with _autocast(device):
            out.append(torch.sigmoid(model(_to_device(x[i:i + batch_size], device)).float()).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


@dataclass
class TrainOutput:
    model: torch.nn.Module
    curve: pd.DataFrame  # epoch, train_loss, val_loss, val_auroc
    best_epoch: int


def train_model(x_fit: torch.Tensor, y_fit: np.ndarray, x_val: torch.Tensor, y_val: np.ndarray, cfg: TrainConfig,
                seed: int, desc: str = "training", progress: bool = True,
                init_encoder: dict | None = None) -> TrainOutput:
    """Train one CNN on images (see the module docstring for the kept weights) with :func:`fit_network`.

    ``init_encoder``: a state dict the encoder starts from (pretrained weights) instead of a random
    initialisation; it must fit the encoder exactly (:func:`prrt.pretrain.load_encoder_weights`).
    """
    device = select_device(cfg.device)
    seed_everything(seed)
    # the images stay on the device for all epochs (one transfer); augmentation runs there too
    x_fit, x_val = x_fit.to(device), x_val.to(device)
    model = ImageClassifier(build_encoder(cfg.encoder, in_channels=x_fit.shape[1]), cfg.dropout)
    if init_encoder is not None:
        from .pretrain import load_encoder_weights

        load_encoder_weights(model.encoder, init_encoder)
    aug = BatchAugmenter(seed) if cfg.augment else None

    def batch(idx, g):
        xb = x_fit[idx.to(device)]
        return (_to_device(aug(xb) if aug is not None else xb, device),)

    return fit_network(model, y_fit, y_val, cfg, seed, batch, validate=lambda: predict(model, x_val, device),
                       bn_forward=lambda rows: model(_to_device(x_fit[rows], device)), desc=desc, progress=progress)


def check_config(cfg: TrainConfig) -> None:
    if cfg.selection not in ("last", "val_loss"):
        raise ValueError(f"selection must be 'last' or 'val_loss', not {cfg.selection!r}")
    if cfg.lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', not {cfg.lr_schedule!r}")


def fit_network(model: torch.nn.Module, y_fit: np.ndarray, y_val: np.ndarray, cfg: TrainConfig, seed: int,
                batch, validate, bn_forward, *, desc: str, progress: bool) -> TrainOutput:
    """The training loop of every network (the image CNNs and the neural fusions of :mod:`prrt.fusion`).

    The caller seeds the global generators and builds ``model`` (its random initialisation);
    this function moves it to the device and trains it on the fitting patients, whose labels are
    ``y_fit``:

    * ``batch(idx, g)``: the model's inputs (a tuple, on the device) for the fitting rows ``idx``,
      with any augmentation or modality dropout drawn from the generator ``g``;
    * ``validate()``: the probabilities of the validation patients (labels ``y_val``) under the
      current weights;
    * ``bn_forward(rows)``: runs the model on the fitting rows ``rows`` (a slice) without
      augmentation, to recompute the batch-norm statistics after each epoch (``cfg.precise_bn``;
      ``None``: never).

    The loop: AdamW, a cosine or constant learning rate (``cfg.lr_schedule``), binary cross-entropy
    with ``pos_weight = n_long / n_short`` of the fitting patients, shuffled batches of
    ``cfg.batch_size`` from a generator seeded with ``seed`` (a last batch of one patient is
    skipped), then precise batch norm, the weighted validation loss and AUROC per epoch (the
    curve), and the kept weights by ``cfg.selection``: the last epoch's, or those of the epoch with
    the lowest validation loss (the last epoch's when no epoch has a finite validation loss).
    """
    from tqdm.auto import tqdm

    check_config(cfg)
    device = select_device(cfg.device)
    _setup_backend(device)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1)) \
        if cfg.lr_schedule == "cosine" else None
    y_fit_t = torch.as_tensor(np.asarray(y_fit, float), dtype=torch.float32)
    y_val = np.asarray(y_val, int)
    n_pos = float(y_fit_t.sum())
    pos_weight = torch.tensor((len(y_fit_t) - n_pos) / max(n_pos, 1.0), device=device)
    g = torch.Generator().manual_seed(seed)
    y_val_t = torch.as_tensor(y_val, dtype=torch.float32, device=device)
    rows, best, best_state, best_epoch = [], np.inf, None, cfg.epochs
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", leave=False, disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(y_fit_t), generator=g)
        total, seen = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:  # instance statistics of a single patient are not worth a step
                continue
            inputs = batch(idx, g)
            with _autocast(device):
                logits = model(*inputs)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y_fit_t[idx].to(device), pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        if cfg.precise_bn and bn_forward is not None:  # validation (and the kept weights) see these weights' statistics
            recompute_batch_norm(model, range(len(y_fit_t)), cfg.batch_size, device, forward=bn_forward)
        p_val = torch.as_tensor(validate(), dtype=torch.float32, device=device)
        # (NaN without validation patients)
        val_loss = float(F.binary_cross_entropy(p_val.clamp(1e-6, 1 - 1e-6), y_val_t,
                                                weight=torch.where(y_val_t == 1, pos_weight, 1.0)))
        with sklearn.config_context(skip_parameter_validation=True):  # its checks cost more than the AUROC
            val_auroc = roc_auc_score(y_val, p_val.cpu().numpy()) if 0 < y_val.sum() < len(y_val) else np.nan
        rows.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_loss": val_loss,
                     "val_auroc": val_auroc})
        if sched is not None:
            sched.step()
        if cfg.selection == "val_loss" and val_loss < best:
            best, best_epoch = val_loss, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{rows[-1]['train_loss']:.3f}", val_loss=f"{val_loss:.3f}")
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainOutput(model, pd.DataFrame(rows), best_epoch)


@torch.no_grad()
def recompute_batch_norm(model: torch.nn.Module, x, batch_size: int, device: torch.device, forward=None) -> None:
    """Replace the running statistics of every batch-norm layer by their mean over ``x`` (no augmentation).

    The running averages kept during training mix the statistics of early weights and of augmented
    batches; with a few dozen steps per epoch they can be far from what the final weights produce,
    which skews every prediction (the "precise BN" step of Wu & Johnson, 2021). Only training
    images are used. ``x`` is a tensor of images, or anything with a length when ``forward(rows)``
    is given to run the model on the batch ``rows`` (a slice), as a multi-input model needs.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    forward = forward or (lambda rows: model(_to_device(x[rows], device)))
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.train()
    for i in range(0, len(x), batch_size):
        if min(len(x), i + batch_size) - i < 2:
            continue
        with _autocast(device):
            forward(slice(i, i + batch_size))
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    model.eval()


class ImageModel:
    """A CNN on one image modality: the image side of the model interface of :mod:`prrt.models`.

    ``fit`` trains on the fitting part of a fold with the inner validation part for the learning
    curve (and, with ``selection = "val_loss"``, for the kept epoch); predictions are prior-corrected
    with the fitting part's share of short PFS (``pos_weight`` trains as if both classes were equally
    frequent).
    """

    def __init__(self, modality: str, cfg: TrainConfig, encoder_weights: dict | None = None):
        self.modality, self.cfg, self.encoder_weights = modality, cfg, encoder_weights

    def fit(self, data, part, seed: int, progress: bool = True, desc: str = ""):
        from .models import FitRecord

        images, y = data.images[self.modality], data.y
        out = train_model(images.take(part.fit), y.loc[part.fit].to_numpy(int), images.take(part.val),
                          y.loc[part.val].to_numpy(int), self.cfg, seed, desc=desc or self.modality, progress=progress,
                          init_encoder=self.encoder_weights)
        self.model, self.prevalence = out.model, float(y.loc[part.fit].mean())
        self.device = select_device(self.cfg.device)
        return FitRecord(out.curve, out.best_epoch, {"state_dict": out.model.state_dict(), "config": self.cfg.to_dict(),
                                                     "best_epoch": out.best_epoch,
                                                     "in_channels": int(images.x.shape[1]),
                                                     "modality": self.modality, "training_part": part.digest()})

    def restore(self, data, part, checkpoint: dict):
        """The fold's CNN as ``fit`` left it on ``part``, from its checkpoint (no training)."""
        from .networks import classifier_from_checkpoint

        if checkpoint.get("modality", self.modality) != self.modality:
            raise ValueError(f"the checkpoint holds a {checkpoint['modality'].upper()} CNN, not a {self.modality.upper()} one")
        self.device = select_device(self.cfg.device)
        self.model = classifier_from_checkpoint(checkpoint).to(self.device)
        self.prevalence = float(data.y.loc[part.fit].mean())
        return self

    def predict(self, data, patients: list[str]) -> np.ndarray:
        x = data.images[self.modality].take(patients)
        return prior_correction(predict(self.model, x, self.device), self.prevalence)

    @torch.no_grad()
    def features(self, data, patients: list[str]) -> dict[str, np.ndarray]:
        x = data.images[self.modality].take(patients)
        self.model.eval()
        out = [self.model.features(_to_device(x[i:i + 32], self.device)).float().cpu() for i in range(0, len(x), 32)]
        return {self.modality: torch.cat(out).numpy() if out else np.zeros((0, self.model.encoder.feature_dim))}


def image_tensors(cohort, profile, cache_dir, modality: str, progress: bool = True, roi: str | None = None,
                  mask_channel: bool | None = None, arrays: dict | None = None) -> tuple[torch.Tensor, list[str]]:
    """All patients' preprocessed ``modality`` (``"pet"`` or ``"ct"``) as one (N, C, X, Y, Z) tensor.

    ``roi`` and ``mask_channel`` default to the profile's; with a mask channel, C = 2 and the second
    channel is the lesion mask (or the PET threshold segmentation a ``lesions`` box fell back to;
    zeros for a patient with neither). ``arrays`` (``{pseudonym: arrays}`` from
    :func:`prrt.imaging.preprocess_cohort`) skips the cache lookup. Patients without that image are
    left out. A missing or corrupt file raises :class:`prrt.imaging.ImageError` naming the patient
    and the file, before any training starts.
    """
    from .imaging import preprocess_cohort

    col = f"{modality}_path"
    patients = [p for p in cohort.data.index if col in cohort.data.columns and pd.notna(cohort.data.at[p, col])]
    if arrays is None:
        arrays = preprocess_cohort(cohort, profile, cache_dir, patients=patients, progress=progress, roi=roi)
    mask_channel = profile.mask_channel if mask_channel is None else mask_channel
    channels = [np.stack([arrays[p][modality] for p in patients])]
    if mask_channel:
        channels.append(np.stack([arrays[p]["mask"] if "mask" in arrays[p] else np.zeros_like(arrays[p][modality])
                                  for p in patients]))
    x = torch.from_numpy(np.stack(channels, axis=1).astype(np.float32))
    return x, patients


#: The unimodal image models of chapter 03: name -> (modality, description, oracle key).
IMAGE_MODELS = {"pet_cnn": ("pet", "SR-PET, 3D CNN", "pet"), "ct_cnn": ("ct", "CT, 3D CNN", "ct")}


def config_from_profile(profile, **overrides) -> TrainConfig:
    return TrainConfig(encoder=profile.encoder, epochs=profile.epochs, batch_size=profile.batch_size, **overrides)


def input_description(profile, base: str) -> str:
    """``base`` (e.g. "SR-PET, 3D CNN") with the input the profile gives it: mask channel and region."""
    modality, _, net = base.partition(", ")
    mask = " + lesion mask" if profile.mask_channel else ""
    where = "lesion-centred" if profile.roi == "lesions" else "whole body"
    return f"{modality}{mask} ({where}), {net}"


def image_spec(name: str, modality: str, cfg: TrainConfig, chapter: str, inputs: str, available: bool,
               oracle: str | None = None, encoder_weights: dict | None = None, reason: str | None = None):
    """A :class:`prrt.models.ModelSpec` of a CNN on ``modality`` (skipped when the manifest names no such images)."""
    from .models import ModelSpec

    build = (lambda seed: ImageModel(modality, cfg, encoder_weights)) if available else None
    return ModelSpec(name, chapter, inputs, build, reason=reason or f"the manifest names no {modality.upper()} images",
                     oracle=oracle, needs=(modality,), val_fraction=cfg.val_fraction)


def image_specs(cohort, profile, chapter: str = "03") -> list:
    """The PET CNN and the CT CNN of chapter 03."""
    cfg = config_from_profile(profile)
    return [image_spec(name, modality, cfg, chapter, input_description(profile, description),
                       modality in cohort.modalities, oracle)
            for name, (modality, description, oracle) in IMAGE_MODELS.items()]


def image_data(cohort, profile, cache_dir, arrays: dict | None = None, progress: bool = True, table=None):
    """:class:`prrt.models.ModelData` with the preprocessed images of every modality the manifest names.

    ``arrays``: the preprocessed inputs (``{pseudonym: arrays}`` for the profile's region of
    interest), when the caller has them already.
    """
    from .models import ImageSet, ModelData

    images = {}
    for modality in ("pet", "ct"):
        if modality in cohort.modalities:
            images[modality] = ImageSet(*image_tensors(cohort, profile, cache_dir, modality, progress=progress,
                                                       arrays=arrays))
    return ModelData(cohort.data["label"], table=table, images=images)


def count_weights(cfg: TrainConfig, in_channels: int = 1) -> int:
    """Trainable weights of the network that ``cfg`` builds."""
    model = ImageClassifier(build_encoder(cfg.encoder, in_channels=in_channels), cfg.dropout)
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
