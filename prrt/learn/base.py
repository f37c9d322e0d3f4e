"""The model interface of the book: what a model is (:class:`ModelSpec`, :class:`Model`), what it is given
(:class:`ModelData`, :class:`TrainingPart`) and what fitting leaves behind (:class:`FitRecord`).

Every model, tabular, image or fusion, is described by a :class:`ModelSpec`: its name, the chapter
that reports it, a description of its inputs, the data it needs, and how to build it. ``build(seed)``
returns a fresh, unfitted object with four methods:

``fit(data, part, seed, progress=..., desc=...)``
    learn from the training part of one fold (``part.fit``; a model that selects or monitors
    epochs uses ``part.val``, an inner validation part drawn from the same training patients);
    returns a :class:`FitRecord` (learning curve, kept epoch, weights to save) or ``None``.
``predict(data, patients)``
    the probability of short PFS for these patients.
``features(data, patients)``
    per-modality embeddings ``{modality: array (n, d)}``: what a fusion model or an explanation
    can build on.
``restore(data, part, checkpoint)``
    the model that ``fit`` on ``part`` left as ``checkpoint``, without training (a model that leaves
    no checkpoint raises :class:`NotImplementedError`).

:class:`ModelData` holds what a model may read, for every patient: the labels, the table and the images
(one :class:`ImageSet` per modality). The one cross-validation loop that runs a spec is
:mod:`prrt.learn.loop`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # for the annotations only: importing torch costs seconds
    import torch


# ---- data ------------------------------------------------------------------------------------------
@dataclass
class ImageSet:
    """Preprocessed images of one modality: one entry of ``x`` (C, X, Y, Z) per pseudonym in ``patients``."""

    x: torch.Tensor
    patients: list[str]

    def __post_init__(self):
        if len(self.x) != len(self.patients):
            raise ValueError(f"{len(self.x)} images for {len(self.patients)} patients")
        self._row = {p: i for i, p in enumerate(self.patients)}

    def has(self, patient: str) -> bool:
        return patient in self._row

    def take(self, patients: list[str]):
        return self.x[[self._row[p] for p in patients]]


@dataclass
class ModelData:
    """Everything a model may read, for every patient of the cohort (index: pseudonym).

    ``y``: the label (1 short PFS, 0 long PFS, NaN unlabelled). ``table``: tabular inputs (laboratory
    values, numeric clinical variables, PET features), NaN where missing. ``images``: ``{modality:
    ImageSet}``; a patient without that image is absent from it.
    """

    y: pd.Series
    table: pd.DataFrame | None = None
    images: dict[str, ImageSet] = field(default_factory=dict)

    def has(self, patient: str, modality: str, columns: list[str] | None = None) -> bool:
        """Whether ``patient`` has ``modality`` (``"table"`` with ``columns``: any of them measured)."""
        if modality == "table":
            return bool(self.have([patient], "table", columns)[0])
        return modality in self.images and self.images[modality].has(patient)

    def have(self, patients: list[str], modality: str, columns: list[str] | None = None) -> np.ndarray:
        """:meth:`has` of each of ``patients``, as booleans (one look at the table for all of them)."""
        patients = list(patients)
        if modality == "table":
            if self.table is None:
                return np.zeros(len(patients), bool)
            return self.table.reindex(patients)[list(columns)].notna().any(axis=1).to_numpy(bool)
        images = self.images.get(modality)
        return np.array([images is not None and images.has(p) for p in patients], bool)

    def with_all(self, patients: list[str], modalities, columns: list[str] | None = None) -> list[str]:
        """Those of ``patients`` who have every one of ``modalities`` (the table with any of ``columns``)."""
        patients = list(patients)
        keep = np.ones(len(patients), bool)
        for m in modalities:
            keep &= self.have(patients, m, columns)
        return [p for p, k in zip(patients, keep) if k]


@dataclass
class TrainingPart:
    """The training patients of one fold: ``fit`` trains the weights, ``val`` is the inner validation part."""

    fit: list[str]
    val: list[str]

    @property
    def all(self) -> list[str]:
        return sorted(self.fit + self.val)

    def digest(self) -> str:
        """A fingerprint of the two parts (saved with a fold's checkpoint, so that restoring a fold model can
        check that it was trained on exactly these patients; the IDs are not stored)."""
        text = "fit:" + ",".join(sorted(self.fit)) + "|val:" + ",".join(sorted(self.val))
        return _sha(text)

    def patients_digest(self, keep=None) -> str:
        """A fingerprint of the training patients, both parts together (``keep``: only those for which it is
        true, e.g. those with a PET): a fusion that reads a fold's image model finds it by this, the model
        trained on exactly the fold's training patients that have its image."""
        return _sha("all:" + ",".join(p for p in self.all if keep is None or keep(p)))


def logit(p) -> np.ndarray:
    """The log-odds of probabilities ``p``, clipped to [1e-6, 1 - 1e-6] first so that a certain one stays finite."""
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class FitRecord:
    """What fitting one fold leaves behind besides the model."""

    curve: pd.DataFrame | None = None  # epoch, train_loss, val_loss, val_auroc
    best_epoch: int | None = None
    checkpoint: dict | None = None  # saved as checkpoints/<model>/r{repeat}_f{fold}.pt


class Model(Protocol):
    """What the loop (:mod:`prrt.learn.loop`) calls on a model; every model of the book implements all four.

    Optional, looked up with ``hasattr``: ``permutation_importance(data, patients, repeats, seed)`` and
    ``impurity_importance()`` (collected by the loop), ``modality_weights`` and ``stacking_weights`` (read
    by the chapters).
    """

    def fit(self, data: ModelData, part: TrainingPart, seed: int, progress: bool = True,
            desc: str = "") -> FitRecord | None:
        """Learn from ``part`` (its ``fit`` patients; ``val`` for models that monitor epochs)."""

    def predict(self, data: ModelData, patients: list[str]) -> np.ndarray:
        """The probability of the positive class (short PFS) for ``patients``."""

    def features(self, data: ModelData, patients: list[str]) -> dict[str, np.ndarray]:
        """Per-modality embeddings ``{modality: (n, d) array}``."""

    def restore(self, data: ModelData, part: TrainingPart, checkpoint: dict) -> Model:
        """The model that :meth:`fit` on ``part`` left as ``checkpoint`` (:func:`prrt.learn.restore_fold_models`);
        a model that leaves no checkpoint raises :class:`NotImplementedError` saying so."""


@dataclass
class ModelSpec:
    """A model of the book: what it is called, what it sees, and how to build it.

    ``build(seed)`` returns a fresh unfitted :class:`Model`; ``None`` means the manifest lacks its
    inputs and ``reason`` says which. ``needs`` lists the modalities a patient must have to be
    predicted (``"table"``, ``"pet"``, ``"ct"``); a model that copes with a missing modality (the
    fusion models) lists none. ``val_fraction`` > 0 draws an inner validation part from each training
    fold. ``permutation_repeats`` > 0 computes permutation importance on each held-out fold.
    ``requires`` names models whose fold checkpoints this one reads (see
    :class:`prrt.learn.FoldModelScores`): :func:`prrt.learn.loop.run_models` fits those first.
    ``bound`` names the input set whose achievable AUROC a synthetic cohort's report gives for it.
    ``one_core``: a fit uses one core (a scikit-learn model, a network without convolutions), so an engine may run
    several at once (:class:`prrt.learn.engines.SplitEngine`).
    """

    name: str
    chapter: str
    inputs: str
    build: Callable[[int], Model] | None
    reason: str = ""
    bound: str | None = None
    needs: tuple[str, ...] = ()
    val_fraction: float = 0.0
    permutation_repeats: int = 0
    columns: list[str] | None = None  # the table columns the model reads (for importances)
    requires: tuple[str, ...] = ()
    one_core: bool = False


class FewerLabels:
    """A model fitted on a stratified share (``fraction``) of each training part's fitting patients, the others'
    labels left unused (for learning curves in the number of labels, such as chapter 04's pretraining figure).

    The share is drawn with the fold's seed, so two models wrapped with the same ``fraction`` see the same
    patients in a fold (a paired comparison); the inner validation part is kept whole. Everything else is
    the wrapped model's.
    """

    def __init__(self, model: Model, fraction: float):
        if not 0 < fraction <= 1:
            raise ValueError(f"the share of labels must be in (0, 1], not {fraction}")
        self.model, self.fraction = model, fraction

    def subsample(self, data: ModelData, fit: list[str], seed: int) -> list[str]:
        """The patients of ``fit`` whose labels are used (all with ``fraction`` 1; both classes kept)."""
        if self.fraction == 1:
            return list(fit)
        from sklearn.model_selection import train_test_split

        n = max(2, round(self.fraction * len(fit)))
        kept, _ = train_test_split(sorted(fit), train_size=n, stratify=data.y.loc[sorted(fit)].astype(int),
                                   random_state=seed % 2**32)
        return sorted(kept)

    def fit(self, data: ModelData, part: TrainingPart, seed: int, progress: bool = True, desc: str = ""):
        return self.model.fit(data, TrainingPart(self.subsample(data, part.fit, seed), part.val), seed,
                              progress=progress, desc=desc)

    def predict(self, data: ModelData, patients: list[str]) -> np.ndarray:
        return self.model.predict(data, patients)

    def features(self, data: ModelData, patients: list[str]) -> dict[str, np.ndarray]:
        return self.model.features(data, patients)

    def restore(self, data: ModelData, part: TrainingPart, checkpoint: dict):
        raise NotImplementedError("a model fitted on a share of the labels leaves no checkpoint to restore")
