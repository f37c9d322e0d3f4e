"""The image models: a CNN on one image modality (PET or CT) behind the model interface, and its data.

* **Data in memory.** Preprocessed tensors come from the image cache once (:func:`image_tensors`) and
  stay in memory as one tensor (N, C, X, Y, Z), so an epoch re-reads no file; with the profile's mask
  channel, the lesion mask is the second channel.
* :class:`ImageModel` trains a CNN (:func:`prrt.learn.training.train_model`) on the fitting part of a fold,
  with the inner validation part for the learning curve; its predictions are prior-corrected with the
  fitting part's share of short PFS (:func:`prrt.evaluation.prior_correction`), so that they read as
  risks. Its fold checkpoint holds the weights, the settings, the kept epoch and a fingerprint of the
  training part, from which :meth:`ImageModel.restore` takes the fold's CNN up again.
* :func:`image_spec` makes its :class:`prrt.learn.ModelSpec`; :func:`image_data` the
  :class:`prrt.learn.ModelData` with the images of every modality the manifest names.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..evaluation import prior_correction
from ..imaging import mask_channel_array, preprocess_cohort
from .base import FitRecord, ImageSet, ModelData, ModelSpec
from .networks import classifier_from_checkpoint
from .training import TrainConfig, predict, select_device, to_device, train_model


class ImageModel:
    """A CNN on one image modality: the image side of the model interface of :mod:`prrt.learn.base`.

    ``fit`` trains on the fitting part of a fold with the inner validation part for the learning
    curve (and, with ``selection = "val_loss"``, for the kept epoch); predictions are prior-corrected
    with the fitting part's share of short PFS (``pos_weight`` trains as if both classes were equally
    frequent).
    """

    def __init__(self, modality: str, cfg: TrainConfig, encoder_weights: dict | None = None):
        self.modality, self.cfg, self.encoder_weights = modality, cfg, encoder_weights

    def fit(self, data, part, seed: int, progress: bool = True, desc: str = ""):
        images, y = data.images[self.modality], data.y
        out = train_model(images.take(part.fit), y.loc[part.fit].to_numpy(int), images.take(part.val),
                          y.loc[part.val].to_numpy(int), self.cfg, seed, desc=desc or self.modality, progress=progress,
                          init_encoder=self.encoder_weights)
        self.model, self.prevalence = out.model, float(y.loc[part.fit].mean())
        self.device = select_device(self.cfg.device)
        return FitRecord(out.curve, out.best_epoch, {"state_dict": out.model.state_dict(), "config": self.cfg.to_dict(),
                                                     "best_epoch": out.best_epoch,
                                                     "in_channels": int(images.x.shape[1]),
                                                     "modality": self.modality, "training_part": part.digest(),
                                                     "training_patients": part.patients_digest()})

    def restore(self, data, part, checkpoint: dict):
        """The fold's CNN as ``fit`` left it on ``part``, from its checkpoint (no training)."""
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
        out = [self.model.features(to_device(x[i:i + 32], self.device)).float().cpu() for i in range(0, len(x), 32)]
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
    col = f"{modality}_path"
    patients = [p for p in cohort.data.index if col in cohort.data.columns and pd.notna(cohort.data.at[p, col])]
    if arrays is None:
        arrays = preprocess_cohort(cohort, profile, cache_dir, patients=patients, progress=progress, roi=roi)
    mask_channel = profile.mask_channel if mask_channel is None else mask_channel
    channels = [np.stack([arrays[p][modality] for p in patients])]
    if mask_channel:
        channels.append(np.stack([mask_channel_array(arrays[p], arrays[p][modality], profile.liver_in_mask_channel)
                                  for p in patients]))
    x = torch.from_numpy(np.stack(channels, axis=1).astype(np.float32))
    return x, patients


def image_spec(name: str, modality: str, cfg: TrainConfig, chapter: str, inputs: str, available: bool,
               bound: str | None = None, encoder_weights: dict | None = None, reason: str | None = None):
    """A :class:`prrt.learn.ModelSpec` of a CNN on ``modality`` (skipped when the manifest names no such images)."""
    build = (lambda seed: ImageModel(modality, cfg, encoder_weights)) if available else None
    return ModelSpec(name, chapter, inputs, build, reason=reason or f"the manifest names no {modality.upper()} images",
                     bound=bound, needs=(modality,), val_fraction=cfg.val_fraction)


def image_data(cohort, profile, cache_dir, arrays: dict | None = None, progress: bool = True, table=None):
    """:class:`prrt.learn.ModelData` with the preprocessed images of every modality the manifest names.

    ``arrays``: the preprocessed inputs (``{pseudonym: arrays}`` for the profile's region of
    interest), when the caller has them already.
    """
    images = {}
    for modality in ("pet", "ct"):
        if modality in cohort.modalities:
            images[modality] = ImageSet(*image_tensors(cohort, profile, cache_dir, modality, progress=progress,
                                                       arrays=arrays))
    return ModelData(cohort.data["label"], table=table, images=images)
