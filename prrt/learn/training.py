"""The training engine shared by every network: the image CNNs and the neural fusions.

* **Device.** CUDA when present, else CPU (:func:`select_device`). On a GPU: bf16 autocast and cuDNN
  autotuning; on the CPU: float32 and deterministic algorithms, so that the same seed gives the same
  predictions. Images and convolution weights are channels-last (``channels_last_3d``) on both (3D
  convolutions and pooling run faster so); a network without convolutions trains on one CPU thread
  (:func:`threads_for`).
* **Class imbalance.** Binary cross-entropy with ``pos_weight = n_long / n_short`` of the fitting
  patients; the models then prior-correct their predictions with the fitting part's share of short
  PFS (:func:`prrt.evaluation.prior_correction`), so that they read as risks.
* **Schedule and the kept weights.** AdamW with a cosine-annealed learning rate over the profile's
  epochs (or a constant one, ``lr_schedule``); by default (``selection = "last"``) the weights after the
  last epoch are kept. ``selection = "val_loss"`` keeps the epoch with the lowest inner-validation loss
  instead: on the tuning cohort (generator seed 7) that choice, made on ~15 validation patients, kept one
  of the first five epochs in 19 of 42 folds (see benchmarks/DESIGN.md).
* **Inner validation.** Each training fold is split once more, stratified, into a part that fits
  the network and a validation part (``val_fraction``; the split is drawn by :mod:`prrt.learn.loop`)
  whose loss and AUROC per epoch are the learning curves (and that selects the epoch with
  ``selection = "val_loss"``). The test fold is never seen before its single prediction.
* **Precise batch norm.** The batch-norm statistics are recomputed on the fitting patients without
  augmentation (:func:`recompute_batch_norm`; ``precise_bn``) after each epoch that is validated (the
  inner validation part is scored), and after the last one. Training itself never reads them (in
  training mode batch norm uses each batch's statistics) and the recomputation draws no random numbers,
  so without validation patients computing them once at the end gives the same weights and predictions
  as after every epoch, for a third less of the training's time.
* **Augmentation** of the CNNs' training batches only (:class:`BatchAugmenter`): a random affine (rotation
  up to ±0.1 rad, scaling ±5 %, translation ±5 % of the field of view) applied to the whole batch at once
  with MONAI's ``AffineTransform`` layer, and a random intensity scaling of ±10 %.
* **Records.** A tqdm progress bar of the epochs per fit; the training curve (loss, validation loss and
  AUROC per epoch) and the kept epoch (:class:`TrainOutput`). The loop writes each fold's weights to
  ``checkpoints/<model>/r{repeat}_f{fold}.pt`` and the curves to ``checkpoints/<model>/curves.csv``.

:func:`fit_network` is the loop every network shares; :func:`train_model` trains one CNN on images with
it. :class:`TrainConfig` holds the settings (:func:`config_from_profile`).
"""

from __future__ import annotations

import copy
import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import sklearn
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from ..timing import phase
from .networks import ImageClassifier, build_encoder
from .weights import load_encoder_weights


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
        with phase("augmentation"):
            n = x.shape[0]
            theta = self.theta(n).to(x.device)
            factor = (1 + self._uniform(n, 1, self.intensity)).to(x.device).view(n, 1, 1, 1, 1)
            return self.warp(x.float(), theta).to(x.dtype) * factor


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if x.dim() == 5:  # images (N, C, X, Y, Z)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, device: torch.device | None = None,
            batch_size: int = 32) -> np.ndarray:
    """Probabilities of short PFS for the images ``x`` (N, C, X, Y, Z)."""
    device = device or next(model.parameters()).device
    model.to(memory_format=torch.channels_last_3d).eval()
    out = []
    for i in range(0, len(x), batch_size):
        with autocast(device):
            out.append(torch.sigmoid(model(to_device(x[i:i + batch_size], device)).float()).cpu())
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
    initialisation; it must fit the encoder exactly (:func:`prrt.learn.weights.load_encoder_weights`).
    """
    device = select_device(cfg.device)
    seed_everything(seed)
    # the images stay on the device for all epochs (one transfer); augmentation runs there too
    x_fit, x_val = x_fit.to(device), x_val.to(device)
    model = ImageClassifier(build_encoder(cfg.encoder, in_channels=x_fit.shape[1]), cfg.dropout)
    if init_encoder is not None:
        load_encoder_weights(model.encoder, init_encoder)
    aug = BatchAugmenter(seed) if cfg.augment else None

    def batch(idx, g):
        xb = x_fit[idx.to(device)]
        return (to_device(aug(xb) if aug is not None else xb, device),)

    return fit_network(model, y_fit, y_val, cfg, seed, batch, validate=lambda: predict(model, x_val, device),
                       bn_forward=lambda rows: model(to_device(x_fit[rows], device)), desc=desc, progress=progress)


def check_config(cfg: TrainConfig) -> None:
    if cfg.selection not in ("last", "val_loss"):
        raise ValueError(f"selection must be 'last' or 'val_loss', not {cfg.selection!r}")
    if cfg.lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', not {cfg.lr_schedule!r}")


def fit_network(model: torch.nn.Module, y_fit: np.ndarray, y_val: np.ndarray, cfg: TrainConfig, seed: int,
                batch, validate, bn_forward, *, desc: str, progress: bool) -> TrainOutput:
    """The training loop of every network (the image CNNs and the neural fusions of :mod:`prrt.learn.neural_fusion`).

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
    model = model.to(device, memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1)) \
        if cfg.lr_schedule == "cosine" else None
    y_fit_t = torch.as_tensor(np.asarray(y_fit, float), dtype=torch.float32)
    y_val = np.asarray(y_val, int)
    n_pos = float(y_fit_t.sum())
    pos_weight = torch.tensor((len(y_fit_t) - n_pos) / max(n_pos, 1.0), device=device)
    g = torch.Generator().manual_seed(seed)
    y_val_t = torch.as_tensor(y_val, dtype=torch.float32, device=device)
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", leave=False, disable=not progress)
    rows, best, best_state, best_epoch = [], np.inf, None, cfg.epochs
    validated = len(y_val) > 0 or cfg.selection != "last"  # does any epoch but the last need its statistics?
    with threads_for(model, device):
        for epoch in bar:
            model.train()
            order = torch.randperm(len(y_fit_t), generator=g)
            total, seen = 0.0, 0
            for i in range(0, len(order), cfg.batch_size):
                idx = order[i:i + cfg.batch_size]
                if len(idx) < 2:  # instance statistics of a single patient are not worth a step
                    continue
                inputs = batch(idx, g)
                with autocast(device):
                    logits = model(*inputs)
                loss = F.binary_cross_entropy_with_logits(logits.float(), y_fit_t[idx].to(device),
                                                          pos_weight=pos_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            # validation (and the kept weights) see these weights' statistics
            if cfg.precise_bn and bn_forward is not None and (validated or epoch == cfg.epochs - 1):
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


@contextmanager
def threads_for(model: torch.nn.Module, device: torch.device):
    """One CPU thread while ``model`` trains if it has no convolution (the neural fusions' small networks): their
    operations are too small to share between threads, and waiting for a second, busy core made them two to three
    times slower (``benchmarks/DESIGN.md``). Convolutional networks keep the process's threads."""
    before = torch.get_num_threads()
    small = device.type == "cpu" and not any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def recompute_batch_norm(model: torch.nn.Module, x, batch_size: int, device: torch.device, forward=None) -> None:
    """Replace the running statistics of every batch-norm layer by their mean over ``x`` (no augmentation).

    The running averages kept during training mix the statistics of early weights and of augmented
    batches; with a few dozen steps per epoch they can be far from what the final weights produce,
    which skews every prediction (the "precise BN" step of Wu & Johnson, 2021). Only training
    images are used. Dropout is off during the pass (the statistics are those the network sees when it
    predicts), so that it draws no random numbers: training goes on exactly as without it. ``x`` is a
    tensor of images, or anything with a length when ``forward(rows)`` is given to run the model on the
    batch ``rows`` (a slice), as a multi-input model needs.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    forward = forward or (lambda rows: model(to_device(x[rows], device)))
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.eval()
    for i in range(0, len(x), batch_size):
        if min(len(x), i + batch_size) - i < 2:
            continue
        with autocast(device):
            forward(slice(i, i + batch_size))
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    model.eval()


def config_from_profile(profile, **overrides) -> TrainConfig:
    return TrainConfig(**{"encoder": profile.encoder, "epochs": profile.epochs, "batch_size": profile.batch_size,
                          "val_fraction": profile.val_fraction,
                          "selection": getattr(profile, "selection", TrainConfig.selection), **overrides})


def count_weights(cfg: TrainConfig, in_channels: int = 1) -> int:
    """Trainable weights of the network that ``cfg`` builds."""
    model = ImageClassifier(build_encoder(cfg.encoder, in_channels=in_channels), cfg.dropout)
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
