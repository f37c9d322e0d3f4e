"""Multimodal fusion of laboratory values, SR-PET and CT: the mechanisms and their parts.

Three mechanisms (:data:`MECHANISMS`); the chapter that fits them makes each a
:class:`prrt.learn.ModelSpec` (:mod:`prrt.study.ch04_fusion`):

``late``
    Stacking (:class:`LateFusion`). The unimodal models (their own specs) are cross-validated *inside*
    the training part of each fold (stratified ``inner_folds``-fold, training patients only); a logistic
    regression learns how to weigh their out-of-fold logits, and is then applied to the logits of
    unimodal models refitted on the whole training part. The test fold is never predicted before the
    single final prediction, and no stacking weight is fitted on a test-fold prediction.
``intermediate``
    One network (:class:`FusionNet`), trained end to end by
    :class:`prrt.learn.neural_fusion.NeuralFusion`: each modality's encoder (a small MLP on the
    laboratory values, :class:`LabEncoder`; the CNN encoders for PET and CT) gives an embedding,
    projected to a common size; the projections are concatenated (a missing modality's slot is zero)
    and a linear head gives the logit.
``adaptive``
    Cross-modal adaptive fusion: the same branches, and per patient a softmax gate over the
    modalities it has; the fused embedding is the weighted sum. The gate is cross-modal: each modality's
    score is a learnt function of its own projected embedding plus a linear term of the projections of all
    of them together (a missing one zero) and of which are present, so that how much a patient's SR-PET
    counts can depend on what the CT and the laboratory values show. The cross-modal term starts at zero:
    the gate begins as a per-modality gate and learns the interactions only as far as training supports
    them. :meth:`prrt.learn.neural_fusion.NeuralFusion.modality_weights` returns the weights each
    patient's modalities received.

Missing modalities: a patient without PET, CT or laboratory values is still predicted. In the
neural fusions a missing modality is masked (its slot zeroed, or left out of the gate) and, during
training, each present *source* of a patient (laboratory values; SR-PET, i.e. the PET branch and the
lesion features together, which go missing together in practice; CT) is dropped at random
(``modality_dropout``, never all of them) so that the network learns to do without. In late fusion a
missing unimodal prediction is replaced by that model's mean inner out-of-fold logit on the training part.

The laboratory branch sees the values imputed (median) and standardised with statistics of the
fitting part only; the CNN branches see the same preprocessed inputs as chapter 03. With
``profile.fusion_pet_features`` the SR-PET part of a fusion has two branches: the PET CNN and a
small network on the lesion features of chapter 02 (``pet_features``; imputed and standardised
like the laboratory values, absent where the PET is absent), or, with ``FusionConfig.table_scores`` (the fusions
whose image branches are scores), one number: a logistic regression's score of the lesion features, cross-fitted
for the training patients like the CNNs' scores. With ``ct_weights`` the CT encoder starts
from pretrained weights (:mod:`prrt.learn.pretrain`). With the profile's ``fusion_image_branches =
"fold_models"`` the SR-PET and CT branches are given the score of the fold's unimodal CNN
(:class:`FoldModelScores`, :class:`ScoreInput`) instead of a CNN of their own, and the fusion trains
with :data:`SCORE_FUSION_TRAINING` (:func:`fusion_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .base import FitRecord, ModelSpec, TrainingPart, logit
from .loop import training_score_of
from .networks import classifier_from_checkpoint
from .training import TrainConfig, config_from_profile

MECHANISMS = ("late", "intermediate", "adaptive")
MODALITIES = ("labs", "pet_features", "pet", "ct")

#: Modalities read from the table (each with its own columns): the laboratory values, and the SR-PET
#: lesion features of chapter 02 (:data:`prrt.imaging.FEATURES`), which join the PET CNN in the
#: fusions' SR-PET part.
TABULAR = ("labs", "pet_features")

#: The source each modality belongs to: a fusion needs two sources, and a patient without PET lacks both PET parts.
SOURCE = {"labs": "labs", "pet_features": "pet", "pet": "pet", "ct": "ct"}


def mean_sd(x) -> tuple[float, float]:
    """Mean and SD of scores over the fitting patients (SD 1 when they do not vary; 0 and 1 for none)."""
    x = np.asarray(x, float)
    return (float(x.mean()), float(x.std()) or 1.0) if len(x) else (0.0, 1.0)


# ---- late fusion -------------------------------------------------------------------------------------
class LateFusion:
    """Stacking of unimodal models with a logistic regression fitted on inner out-of-fold predictions.

    ``fold_models`` (``{"pet": FoldModelScores, ...}``, cross-fitted sources only): an image base of that
    modality is not refitted inside the training part; its out-of-fold inputs to the stacking are the
    cross-fitted scores of the training patients (from CNNs that saw neither them nor the test fold), its
    inputs at prediction the fold CNN's scores, each standardised on its own scale over the training patients
    (as in :class:`prrt.learn.neural_fusion.NeuralFusion`)."""

    def __init__(self, bases: list[ModelSpec], inner_folds: int = 3,
                 fold_models: dict[str, FoldModelScores] | None = None):
        self.bases, self.inner_folds = list(bases), inner_folds
        if any(not f.cross_fitted for f in (fold_models or {}).values()):
            raise ValueError("late fusion reads only cross-fitted scores of the fold models: the fold CNN's scores of "
                             "its own training patients would teach the stacking to over-trust it")
        self.fold_models = dict(fold_models or {})
        self.trace: list[tuple[str, list[str], list[str]]] = []  # (base, trained on, predicted): for checks

    def _available(self, spec, data, patients):
        return data.with_all(patients, spec.needs, spec.columns)

    def _source(self, spec) -> str | None:
        """The modality whose fold-model scores stand in for this base (an image base of a cross-fitted source)."""
        return spec.needs[0] if len(spec.needs) == 1 and spec.needs[0] in self.fold_models else None

    def _fit_base(self, spec, data, train, seed):
        # no inner validation part: a base model only scores (its curves are not shown), and inside a training
        # part it may have few patients of a class
        part = TrainingPart(sorted(train), [])
        model = spec.build(seed)
        model.fit(data, part, seed, progress=False)
        return model

    def fit(self, data, part, seed: int, progress: bool = True, desc: str = ""):
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        train = part.all
        y = data.y.loc[train].astype(int)
        oof = np.full((len(train), len(self.bases)), np.nan)
        row = {p: i for i, p in enumerate(train)}
        cv = StratifiedKFold(self.inner_folds, shuffle=True, random_state=seed % 2**32)
        self.models, self.scale_, self.part_ = [], {}, part
        for j, spec in enumerate(self.bases):
            m = self._source(spec)
            if m is not None:  # the fold CNN and the cross-fitted scores of the training patients
                source, have = self.fold_models[m], self._available(spec, data, train)
                crossed = source.training_scores(part, data, have).to_numpy(float)
                own = source.scores(part, data, have)
                (cm, cs), self.scale_[j] = mean_sd(crossed), mean_sd(own)
                oof[[row[p] for p in have], j] = (crossed - cm) / cs
                self.models.append(source.load(part, data))
                self.trace.append((spec.name, [], have))
                continue
            for k, (tr, te) in enumerate(cv.split(np.zeros(len(train)), y)):
                fit_ids = self._available(spec, data, [train[i] for i in tr])
                pred_ids = self._available(spec, data, [train[i] for i in te])
                if not pred_ids:
                    continue
                model = self._fit_base(spec, data, fit_ids, seed + 100 * (k + 1))
                oof[[row[p] for p in pred_ids], j] = logit(model.predict(data, pred_ids))
                self.trace.append((spec.name, fit_ids, pred_ids))
            full = self._available(spec, data, train)
            self.models.append(self._fit_base(spec, data, full, seed))
            self.trace.append((spec.name, full, []))
        self.fill_ = np.nanmean(oof, axis=0)
        z = np.where(np.isnan(oof), self.fill_, oof)
        self.stack_ = LogisticRegression(C=1.0).fit(z, y)
        self.stacked_on_ = list(train)
        return FitRecord()

    def _z(self, data, patients):
        z = np.tile(self.fill_, (len(patients), 1))
        for j, (spec, m) in enumerate(zip(self.bases, self.models)):
            ids = self._available(spec, data, patients)
            if ids:
                pos = [patients.index(p) for p in ids]
                if j in self.scale_:
                    mean, sd = self.scale_[j]
                    z[pos, j] = (self.fold_models[spec.needs[0]].scores(self.part_, data, ids) - mean) / sd
                else:
                    z[pos, j] = logit(m.predict(data, ids))
        return z

    def predict(self, data, patients: list[str]) -> np.ndarray:
        return self.stack_.predict_proba(self._z(data, list(patients)))[:, 1]

    def features(self, data, patients: list[str]) -> dict[str, np.ndarray]:
        return {"unimodal_logits": self._z(data, list(patients))}

    def restore(self, data, part, checkpoint: dict):
        raise NotImplementedError("late fusion leaves no checkpoint (it refits its unimodal models inside each "
                                  "training part): fit it again on the same training part instead of restoring it")

    def stacking_weights(self) -> pd.Series:
        return pd.Series(self.stack_.coef_[0], index=[s.name for s in self.bases])


# ---- the fold's unimodal CNNs as image branches ---------------------------------------------------------
class FoldModelScores:
    """The score (logit) of a fold's unimodal CNN, read from the checkpoint that model left in the run.

    A neural fusion whose image branches are ``fold_models`` (the profile's ``fusion_image_branches``)
    gives its SR-PET or CT branch this score instead of training a CNN of its own. For each fold it
    loads the checkpoint of ``model`` (``checkpoints/<model>/r*_f*.pt``) trained on the fusion's own training
    patients, those of them with the image (:meth:`prrt.learn.base.TrainingPart.patients_digest`), so the CNN
    never saw the fold's test patients. A run without such a checkpoint is an error that
    names the model and says which chapter writes it (``chapter``, when the caller knows).
    """

    def __init__(self, run_dir, model: str, modality: str, chapter: str = "", cross_fitted: bool = False):
        self.run_dir, self.model, self.modality, self.chapter = str(run_dir), model, modality, chapter
        self.cross_fitted = cross_fitted
        self._index: dict[str, str] | None = None
        self._scores: pd.DataFrame | None = None
        # per checkpoint: the network, and the images it scored with their scores (every fusion of a chapter reads
        # the same fold CNNs: each patient is scored once per checkpoint, not once per fusion and per prediction)
        self._nets: dict[str, nn.Module] = {}
        self._seen: dict[str, tuple[object, dict[str, float]]] = {}

    def __getstate__(self):  # sent to other processes without the index, the networks and the scores
        return {**self.__dict__, "_index": None, "_scores": None, "_nets": {}, "_seen": {}}

    def _find(self, part, data) -> str:
        """The checkpoint of the fold model trained on exactly the training patients of ``part`` that have the
        image (:meth:`prrt.learn.base.TrainingPart.patients_digest`)."""
        digest = part.patients_digest(lambda p: data.has(p, self.modality))
        folder = Path(self.run_dir) / "checkpoints" / self.model
        if self._index is None or digest not in self._index:
            self._index = {}
            for path in sorted(folder.glob("r*_f*.pt")):
                ck = torch.load(path, map_location="cpu", weights_only=True)
                if ck.get("training_patients"):
                    self._index[ck["training_patients"]] = str(path)
        if digest not in self._index:
            where = f"chapter {self.chapter}" if self.chapter else ""
            raise FileNotFoundError(
                f"the fusion's {self.modality.upper()} branch reads the fold models of {self.model} ({where}), but "
                f"{folder} holds no checkpoint trained on this fold's training part: run {where or 'that model'} "
                f"first with the same splits and seed, or set the profile's fusion_image_branches to 'end_to_end'")
        return self._index[digest]

    def load(self, part, data) -> nn.Module:
        """The fold's CNN (evaluation mode, on the CPU) trained on exactly the patients of ``part`` with the image."""
        path = self._find(part, data)
        if path not in self._nets:
            self._nets[path] = classifier_from_checkpoint(torch.load(path, map_location="cpu", weights_only=True))
        return self._nets[path]

    def scores(self, part, data, patients: list[str]) -> np.ndarray:
        """The logits of the fold's CNN (:meth:`load`) for ``patients`` (who have the image). Each patient is scored
        once per checkpoint and set of images: another call with the same ``data.images`` reuses the score (as when
        only the table is shuffled, for permutation importance)."""
        path, images = self._find(part, data), data.images[self.modality]
        held, seen = self._seen.get(path, (None, {}))
        if held is not images:  # other images (another cohort's): start again
            seen = {}
            self._seen[path] = (images, seen)
        new = [p for p in dict.fromkeys(patients) if p not in seen]
        if new:
            seen.update(zip(new, network_scores(self.load(part, data), images.take(new)).tolist()))
        return np.array([seen[p] for p in patients], dtype=np.float32)

    def training_scores(self, part, data, patients: list[str]) -> pd.Series | None:
        """With ``cross_fitted``: the scores of training ``patients`` of the fold trained on ``part``, each from a
        model that saw neither the patient nor the fold's test patients (:func:`prrt.learn.loop.cross_fitted_scores`,
        read from :func:`cross_fitted_path`); None otherwise (the fold's CNN scores its own training patients)."""
        if not self.cross_fitted:
            return None
        name = Path(self._find(part, data)).stem  # r<repeat>_f<fold>
        repeat, fold = (int(x[1:]) for x in name.split("_"))
        if self._scores is None:
            path = cross_fitted_path(self.run_dir, self.model)
            if not path.is_file():
                raise FileNotFoundError(f"the fusion's {self.modality.upper()} branch needs the cross-fitted scores of "
                                        f"{self.model} ({path}); compute them with prrt.learn.cross_fitted_scores "
                                        "and write_cross_fitted first")
            self._scores = pd.read_csv(path, dtype={"patient": str})
        return training_score_of(self._scores, repeat, fold, patients)


def cross_fitted_path(run_dir, model: str):
    """Where a run keeps the cross-fitted scores of ``model``: ``predictions/cross_fitted/<model>.csv``."""
    return Path(run_dir) / "predictions" / "cross_fitted" / f"{model}.csv"


def write_cross_fitted(run_dir, model: str, scores: pd.DataFrame):
    """Write ``scores`` (:func:`prrt.learn.loop.cross_fitted_scores`) where :class:`FoldModelScores` reads them."""
    path = cross_fitted_path(run_dir, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    scores.to_csv(path, index=False)
    return path


@torch.no_grad()
def network_scores(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    out = [net(x[i:i + 32]).float() for i in range(0, len(x), 32)]
    return torch.cat(out).numpy() if out else np.zeros(0)


class ScoreInput(nn.Module):
    """The encoder of a branch that is given one number per patient (a fold model's standardised score)."""

    feature_dim = 1

    def forward(self, x):
        return x


# ---- neural fusion ----------------------------------------------------------------------------------
class LabEncoder(nn.Module):
    """A small MLP on the (imputed, standardised) laboratory values; ``width = 0``: the values themselves
    (the fusion's projection is then the branch's only layer)."""

    def __init__(self, n_inputs: int, width: int = 32, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_inputs, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width),
                                 nn.ReLU()) if width else nn.Identity()
        self.feature_dim = width or n_inputs

    def forward(self, x):
        return self.net(x)


class FusionNet(nn.Module):
    """Modality encoders → projections → concatenation (``intermediate``) or gated sum (``adaptive``) → logit."""

    def __init__(self, encoders: dict[str, nn.Module], mechanism: str, dim: int = 32, dropout: float = 0.3):
        super().__init__()
        if mechanism not in ("intermediate", "adaptive"):
            raise ValueError(f"mechanism must be 'intermediate' or 'adaptive', not {mechanism!r}")
        self.modalities = list(encoders)
        self.mechanism = mechanism
        self.encoders = nn.ModuleDict(encoders)
        self.project = nn.ModuleDict({m: nn.Sequential(nn.Linear(e.feature_dim, dim), nn.ReLU())
                                      for m, e in encoders.items()})
        # the cross-modal gate: each modality's score from its own projection, plus a term that reads every modality's
        # projection together (missing ones zero) and which are present; that term starts at zero, so the gate
        # begins as a per-modality one and learns how modalities bear on each other's weight only as far as it helps
        n = len(encoders)
        if mechanism == "adaptive":
            self.gate = nn.ModuleDict({m: nn.Linear(dim, 1) for m in encoders})
            self.cross_gate = nn.Linear(n * dim + n, n)
            nn.init.zeros_(self.cross_gate.weight)
            nn.init.zeros_(self.cross_gate.bias)
        else:
            self.gate = self.cross_gate = None
        width = dim if mechanism == "adaptive" else dim * len(encoders)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, 1))

    def embed(self, inputs: dict, present: torch.Tensor):
        """Projected embeddings (N, M, dim) with missing modalities zeroed, and the gate weights (N, M)."""
        h = torch.stack([self.project[m](self.encoders[m](inputs[m])) for m in self.modalities], dim=1)
        h = h * present.unsqueeze(-1)
        if self.gate is None:
            w = present / present.sum(dim=1, keepdim=True).clamp(min=1)
        else:
            own = torch.cat([self.gate[m](h[:, i]) for i, m in enumerate(self.modalities)], dim=1)
            score = own + self.cross_gate(torch.cat([h.flatten(1), present], dim=1))
            w = torch.softmax(score.masked_fill(present == 0, float("-inf")), dim=1)
            w = torch.nan_to_num(w, nan=0.0)  # a patient with nothing: all zero
        return h, w

    def forward(self, inputs: dict, present: torch.Tensor, return_weights: bool = False):
        h, w = self.embed(inputs, present)
        fused = (h * w.unsqueeze(-1)).sum(dim=1) if self.gate is not None else h.flatten(1)
        logit = self.head(fused).squeeze(1)
        return (logit, w) if return_weights else logit


@dataclass(frozen=True)
class FusionConfig:
    """Settings of a neural fusion; ``train`` holds the shared training settings (epochs, lr, ...)."""

    train: TrainConfig
    mechanism: str = "intermediate"
    dim: int = 32
    modality_dropout: float = 0.2
    lab_width: int = 32
    #: table branches given one number per patient instead of their values: the score of a penalised logistic
    #: regression of the branch's columns (:func:`prrt.learn.tabular.logistic_regression`), cross-fitted for the
    #: training patients (``table_score_folds``-fold, inside the training part), the model of all training
    #: patients for prediction
    table_scores: tuple[str, ...] = ()
    table_score_folds: int = 3


#: Training of a fusion whose image branches are the fold models' scores: only small networks on a
#: few numbers per patient learn, so many more, larger steps than a CNN's (chosen on a tuning cohort
#: of another seed, benchmarks/tune_frozen_fusion.py; never on the demo's test folds).
SCORE_FUSION_TRAINING = {"epochs": 150, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-2}

#: ... and its network: each table branch a single projection of the values, to 16 numbers; the SR-PET lesion
#: features, like the CNNs, enter as one cross-fitted score (``table_scores``). Given their eight values, the network
#: learnt to trust lesion features that carried nothing: on the demo cohort with its image sets moved among patients
#: (benchmarks/shuffled_images.py) the fusion fell 0.052 below the laboratory model; given the score, 0.020.
SCORE_FUSION_NETWORK = {"lab_width": 0, "dim": 16, "table_scores": ("pet_features",)}


#: The profile's ``fusion_image_branches`` values whose image branches are the fold models' scores
#: (``cross_fitted``: the training patients' scores from cross-fitted models, :class:`FoldModelScores`).
SCORE_BRANCHES = ("fold_models", "cross_fitted")


def fusion_config(profile, mechanism: str, **train_overrides) -> FusionConfig:
    """The settings of a neural fusion under ``profile`` (its epochs and batch size, or, with image
    branches from the fold models, :data:`SCORE_FUSION_TRAINING`)."""
    base = config_from_profile(profile)
    if getattr(profile, "fusion_image_branches", "end_to_end") in SCORE_BRANCHES:
        epochs = {"epochs": getattr(profile, "fusion_score_epochs", SCORE_FUSION_TRAINING["epochs"])}
        return FusionConfig(train=replace(base, **{**SCORE_FUSION_TRAINING, **epochs, **train_overrides}),
                            mechanism=mechanism, **SCORE_FUSION_NETWORK)
    return FusionConfig(train=replace(base, **train_overrides), mechanism=mechanism)
