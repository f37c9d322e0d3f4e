"""Multimodal fusion of laboratory values, SR-PET and CT behind the model interface of :mod:`prrt.models`.

Three mechanisms, each a :class:`prrt.models.ModelSpec`:

``late``
    Stacking. The unimodal models (their own specs) are cross-validated *inside* the training part
    of each fold (stratified ``inner_folds``-fold, training patients only); a logistic regression
    learns how to weigh their out-of-fold logits, and is then applied to the logits of unimodal
    models refitted on the whole training part. The test fold is never predicted before the single
    final prediction, and no stacking weight is fitted on a test-fold prediction.
``intermediate``
    One network, trained end to end: each modality's encoder (a small MLP on the laboratory
    values, the CNN encoders for PET and CT) gives an embedding, projected to a common size; the
    projections are concatenated (a missing modality's slot is zero) and a linear head gives the
    logit.
``adaptive``
    Cross-modal adaptive fusion: the same branches, and per patient a softmax gate over the
    modalities it has (a learnt score of each projected embedding); the fused embedding is the
    weighted sum. :meth:`NeuralFusion.modality_weights` returns the weights each patient's
    modalities received.

Missing modalities: a patient without PET, CT or laboratory values is still predicted. In the
neural fusions a missing modality is masked (its slot zeroed, or left out of the gate) and, during
training, each present modality of a patient is dropped at random (``modality_dropout``, never all
of them) so that the network learns to do without. In late fusion a missing unimodal prediction
is replaced by that model's mean logit on the training part.

The laboratory branch sees the values imputed (median) and standardised with statistics of the
fitting part only; the CNN branches see the same preprocessed inputs as chapter 03. With
``profile.fusion_pet_features`` the SR-PET part of a fusion has two branches: the PET CNN and a
small network on the lesion features of chapter 02 (``pet_features``; imputed and standardised
like the laboratory values, absent where the PET is). With ``ct_weights`` the CT encoder starts
from pretrained weights (:mod:`prrt.pretrain`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from .models import FitRecord, ModelSpec, inner_split
from .train import TrainConfig, _autocast, _to_device, fit_network, seed_everything, select_device

MECHANISMS = ("late", "intermediate", "adaptive")
MODALITIES = ("labs", "pet_features", "pet", "ct")
#: Modalities read from the table (each with its own columns): the laboratory values, and the SR-PET
#: lesion features of chapter 02 (:data:`prrt.pet_features.FEATURES`), which join the PET CNN in the
#: fusions' SR-PET part.
TABULAR = ("labs", "pet_features")
#: The source each modality belongs to: a fusion needs two sources, and a patient without PET lacks both PET parts.
SOURCE = {"labs": "labs", "pet_features": "pet", "pet": "pet", "ct": "ct"}


def _logit(p):
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


# ---- late fusion -------------------------------------------------------------------------------------
class LateFusion:
    """Stacking of unimodal models with a logistic regression fitted on inner out-of-fold predictions."""

    def __init__(self, bases: list[ModelSpec], inner_folds: int = 3):
        self.bases, self.inner_folds = list(bases), inner_folds
        self.trace: list[tuple[str, list[str], list[str]]] = []  # (base, trained on, predicted): for checks

    def _available(self, spec, data, patients):
        return [p for p in patients if all(data.has(p, m, spec.columns) for m in spec.needs)]

    def _fit_base(self, spec, data, train, seed):
        y = data.y
        part = inner_split(train, y, spec.val_fraction, seed)
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
        self.models = []
        for j, spec in enumerate(self.bases):
            for k, (tr, te) in enumerate(cv.split(np.zeros(len(train)), y)):
                fit_ids = self._available(spec, data, [train[i] for i in tr])
                pred_ids = self._available(spec, data, [train[i] for i in te])
                if not pred_ids:
                    continue
                m = self._fit_base(spec, data, fit_ids, seed + 100 * (k + 1))
                oof[[row[p] for p in pred_ids], j] = _logit(m.predict(data, pred_ids))
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
                z[pos, j] = _logit(m.predict(data, ids))
        return z

    def predict(self, data, patients: list[str]) -> np.ndarray:
        return self.stack_.predict_proba(self._z(data, list(patients)))[:, 1]

    def features(self, data, patients: list[str]) -> dict[str, np.ndarray]:
        return {"unimodal_logits": self._z(data, list(patients))}

    def stacking_weights(self) -> pd.Series:
        return pd.Series(self.stack_.coef_[0], index=[s.name for s in self.bases])


# ---- the fold's unimodal CNNs as image branches ---------------------------------------------------------
class FoldModelScores:
    """The score (logit) of a fold's unimodal CNN, read from the checkpoint that model left in the run.

    A neural fusion whose image branches are ``fold_models`` (the profile's ``fusion_image_branches``)
    gives its SR-PET or CT branch this score instead of training a CNN of its own. For each fold it
    loads the checkpoint of ``model`` (``checkpoints/<model>/r*_f*.pt``) whose training part is the
    fusion's own: the same fitting and validation patients (:meth:`prrt.models.TrainingPart.digest`),
    so the CNN never saw the fold's test patients. A run without such a checkpoint is an error that
    names the model and says which chapter writes it.
    """

    def __init__(self, run_dir, model: str, modality: str):
        self.run_dir, self.model, self.modality = str(run_dir), model, modality
        self._index: dict[str, str] | None = None

    def __getstate__(self):  # sent to other processes without the index
        return {**self.__dict__, "_index": None}

    def _find(self, digest: str) -> str:
        from pathlib import Path

        folder = Path(self.run_dir) / "checkpoints" / self.model
        if self._index is None or digest not in self._index:
            self._index = {}
            for path in sorted(folder.glob("r*_f*.pt")):
                ck = torch.load(path, map_location="cpu", weights_only=True)
                if ck.get("training_part"):
                    self._index[ck["training_part"]] = str(path)
        if digest not in self._index:
            where = {"pet_cnn": "chapter 03", "ct_cnn": "chapter 03", "ct_cnn_pretrained": "chapter 04"}.get(self.model, "")
            raise FileNotFoundError(
                f"the fusion's {self.modality.upper()} branch reads the fold models of {self.model} ({where}), but "
                f"{folder} holds no checkpoint trained on this fold's training part: run {where or 'that model'} "
                f"first with the same splits and seed, or set the profile's fusion_image_branches to 'end_to_end'")
        return self._index[digest]

    def load(self, part) -> nn.Module:
        """The fold's CNN (evaluation mode, on the CPU) trained on exactly ``part``."""
        from .networks import classifier_from_checkpoint

        return classifier_from_checkpoint(torch.load(self._find(part.digest()), map_location="cpu", weights_only=True))


@torch.no_grad()
def _scores(net: nn.Module, x: torch.Tensor) -> np.ndarray:
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
        self.gate = nn.ModuleDict({m: nn.Linear(dim, 1) for m in encoders}) if mechanism == "adaptive" else None
        width = dim if mechanism == "adaptive" else dim * len(encoders)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, 1))

    def embed(self, inputs: dict, present: torch.Tensor):
        """Projected embeddings (N, M, dim) with missing modalities zeroed, and the gate weights (N, M)."""
        h = torch.stack([self.project[m](self.encoders[m](inputs[m])) for m in self.modalities], dim=1)
        h = h * present.unsqueeze(-1)
        if self.gate is None:
            w = present / present.sum(dim=1, keepdim=True).clamp(min=1)
        else:
            score = torch.cat([self.gate[m](h[:, i]) for i, m in enumerate(self.modalities)], dim=1)
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


class NeuralFusion:
    """Intermediate or adaptive fusion, trained end to end (the model interface of :mod:`prrt.models`)."""

    def __init__(self, modalities: list[str], lab_columns: list[str] | None, cfg: FusionConfig,
                 ct_weights: dict | None = None, pet_feature_columns: list[str] | None = None,
                 fold_models: dict[str, FoldModelScores] | None = None):
        unknown = set(modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; choose from {MODALITIES}")
        self.modalities, self.cfg, self.ct_weights = list(modalities), cfg, ct_weights
        # image branches given the score of the fold's unimodal CNN instead of a CNN of their own
        self.fold_models = {m: f for m, f in (fold_models or {}).items() if m in self.modalities}
        self.columns = {"labs": lab_columns, "pet_features": pet_feature_columns}  # each table branch's columns
        for m in TABULAR:
            if m in self.modalities and not self.columns[m]:
                raise ValueError(f"the fusion's {MODALITY_NAMES[m]} branch needs its table columns")

    # -- inputs
    def _present(self, data, patients) -> torch.Tensor:
        cols = []
        for m in self.modalities:
            key = "table" if m in TABULAR else m
            cols.append([data.has(p, key, self.columns.get(m)) for p in patients])
        return torch.tensor(np.array(cols, dtype=np.float32).T.reshape(len(patients), len(self.modalities)))

    def _inputs(self, data, patients) -> dict:
        out = {}
        for m in self.modalities:
            if m in TABULAR:
                imputer, scaler = self.tables_[m]
                x = scaler.transform(imputer.transform(data.table.loc[patients, self.columns[m]]))
                out[m] = torch.as_tensor(np.nan_to_num(x), dtype=torch.float32)
            elif m in self.fold_models:
                x = torch.zeros((len(patients), 1))
                have = [i for i, p in enumerate(patients) if data.has(p, m)]
                if have:
                    mean, sd = self.score_scale_[m]
                    z = (self._raw_scores(data, m, [patients[i] for i in have]) - mean) / sd
                    x[have, 0] = torch.as_tensor(z, dtype=torch.float32)
                out[m] = x
            else:
                images = data.images.get(m)
                shape = self.shapes_[m]
                x = torch.zeros((len(patients), *shape))
                for i, p in enumerate(patients):
                    if images is not None and images.has(p):
                        x[i] = images.take([p])[0]
                out[m] = x
        return out

    def _build(self, data) -> FusionNet:
        from .networks import build_encoder

        encoders = {}
        for m in self.modalities:
            if m in TABULAR:
                encoders[m] = LabEncoder(len(self.columns[m]), self.cfg.lab_width)
            elif m in self.fold_models:
                encoders[m] = ScoreInput()
            else:
                enc = build_encoder(self.cfg.train.encoder, in_channels=self.shapes_[m][0])
                if m == "ct" and self.ct_weights is not None:
                    from .pretrain import load_encoder_weights

                    load_encoder_weights(enc, self.ct_weights)
                encoders[m] = enc
        return FusionNet(encoders, self.cfg.mechanism, self.cfg.dim, self.cfg.train.dropout)

    # -- interface
    def _prepare(self, data, part) -> FusionNet:
        """Everything a fold's fusion learns besides its weights, from the fitting patients only (the
        imputers and scalers of the table branches, the fold models' scores and their scale); returns
        the freshly initialised network."""
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import StandardScaler

        self.device = select_device(self.cfg.train.device)
        self.shapes_ = {m: tuple(data.images[m].x.shape[1:]) for m in self.modalities if m in data.images}
        for m in self.modalities:
            if m not in TABULAR and m not in self.shapes_:
                raise ValueError(f"fusion needs {m.upper()} images for some patients; the data has none")
        # the fold's CNNs; the training patients' scores, computed once; their mean and SD on the fitting part
        self.scorers_ = {m: source.load(part) for m, source in self.fold_models.items()}
        self._known, self.score_scale_ = {}, {}
        self.remember_scores(data, part.fit + part.val)
        for m in self.fold_models:
            fit_scores = np.array([self._known[m][p] for p in part.fit if p in self._known[m]])
            self.score_scale_[m] = (float(fit_scores.mean()), float(fit_scores.std()) or 1.0) if len(fit_scores) else (0.0, 1.0)
        self.tables_ = {}  # each tabular branch: imputer and scaler fitted on the fitting patients only
        for m in [m for m in self.modalities if m in TABULAR]:
            x = data.table.loc[part.fit, self.columns[m]]
            imputer = SimpleImputer(strategy="median", keep_empty_features=True).fit(x)
            self.tables_[m] = (imputer, StandardScaler().fit(imputer.transform(x)))
        return self._build(data)

    def fit(self, data, part, seed: int, progress: bool = True, desc: str = ""):
        cfg = self.cfg.train
        seed_everything(seed)
        model = self._prepare(data, part)
        y_fit = data.y.loc[part.fit].to_numpy(float)
        x_fit, pr_fit = self._inputs(data, part.fit), self._present(data, part.fit)
        x_val, pr_val = self._inputs(data, part.val), self._present(data, part.val)
        self.model, self.prevalence = model, float(y_fit.mean())
        device = self.device

        def batch(idx, g):
            present = pr_fit[idx].clone()
            if self.cfg.modality_dropout and len(self.modalities) > 1:
                drop = (torch.rand(present.shape, generator=g) < self.cfg.modality_dropout) & (present > 0)
                keep_one = (present * ~drop).sum(dim=1) == 0  # never drop every modality of a patient
                drop[keep_one] = False
                present = present * ~drop
            return {m: _to_device(v[idx], device) for m, v in x_fit.items()}, present.to(device)

        out = fit_network(model, y_fit, data.y.loc[part.val].to_numpy(int), cfg, seed, batch,
                          validate=lambda: self._raw(x_val, pr_val),
                          bn_forward=lambda rows: model({m: _to_device(v[rows], device) for m, v in x_fit.items()},
                                                        pr_fit[rows].to(device)),
                          desc=desc or "fusion", progress=progress)
        self.model, self._known = out.model, {}
        return FitRecord(out.curve, out.best_epoch, {"state_dict": out.model.state_dict(),
                                                     "modalities": self.modalities,
                                                     "mechanism": self.cfg.mechanism,
                                                     "fold_models": {m: f.model for m, f in self.fold_models.items()},
                                                     "training_part": part.digest()})

    def restore(self, data, part, checkpoint: dict):
        """The fold's fusion as ``fit`` left it on ``part``, from its checkpoint (no training): what it
        learnt besides the weights is recomputed from the same fitting patients."""
        if list(checkpoint["modalities"]) != self.modalities:
            raise ValueError(f"the checkpoint's fusion has the branches {checkpoint['modalities']}, this one {self.modalities}")
        model = self._prepare(data, part)
        model.load_state_dict(checkpoint["state_dict"])
        self.model, self.prevalence = model.to(self.device).eval(), float(data.y.loc[part.fit].mean())
        return self

    def remember_scores(self, data, patients: list[str]) -> None:
        """Compute the fold models' scores of ``patients`` once and keep them (the images do not change
        while the table is shuffled for permutation importance)."""
        for m in self.fold_models:
            known = self._known.setdefault(m, {})
            ids = [p for p in patients if p not in known and data.has(p, m)]
            if ids:
                known.update(zip(ids, _scores(self.scorers_[m], data.images[m].take(ids))))

    def _raw_scores(self, data, m: str, patients: list[str]) -> np.ndarray:
        """The fold CNN's scores of ``patients`` (those computed while fitting are not computed again)."""
        known = getattr(self, "_known", {}).get(m, {})
        if all(p in known for p in patients):
            return np.array([known[p] for p in patients], dtype=np.float32)
        return _scores(self.scorers_[m], data.images[m].take(patients))

    @torch.no_grad()
    def _raw(self, x, present, weights: bool = False):
        self.model.eval()
        out, ws = [], []
        for i in range(0, len(present), 32):
            sl = slice(i, i + 32)
            with _autocast(self.device):
                logit, w = self.model({m: _to_device(v[sl], self.device) for m, v in x.items()},
                                      present[sl].to(self.device), return_weights=True)
            out.append(torch.sigmoid(logit.float()).cpu())
            ws.append(w.float().cpu())
        p = torch.cat(out).numpy() if out else np.zeros(0)
        return (p, torch.cat(ws).numpy()) if weights else p

    def predict(self, data, patients: list[str], without: tuple[str, ...] = ()) -> np.ndarray:
        """The probability of short PFS; ``without`` names branches masked as if the patients lacked
        them (the missing-modality path; for the modality ablation of chapter 05)."""
        from .evaluate import prior_correction

        present = self._present(data, patients)
        for m in without:
            if m not in self.modalities:
                raise ValueError(f"the fusion has no {m!r} branch; it has {self.modalities}")
            present[:, self.modalities.index(m)] = 0
        p = self._raw(self._inputs(data, patients), present)
        return prior_correction(p, self.prevalence)

    @torch.no_grad()
    def features(self, data, patients: list[str]) -> dict[str, np.ndarray]:
        x, present = self._inputs(data, patients), self._present(data, patients)
        self.model.eval()
        h, _ = self.model.embed({m: _to_device(v, self.device) for m, v in x.items()}, present.to(self.device))
        return {m: h[:, i].float().cpu().numpy() for i, m in enumerate(self.modalities)}

    def modality_weights(self, data, patients: list[str]) -> pd.DataFrame:
        """Each patient's weight per modality (adaptive: the gate; intermediate: equal over present ones)."""
        _, w = self._raw(self._inputs(data, patients), self._present(data, patients), weights=True)
        return pd.DataFrame(w, index=list(patients), columns=self.modalities)


# ---- specs -----------------------------------------------------------------------------------------
#: How the inputs column names a modality (the fusion modalities).
MODALITY_NAMES = {"labs": "laboratory values", "pet_features": "SR-PET lesion features", "pet": "SR-PET", "ct": "CT"}


def _without(inputs: str, missing: list[str]) -> str:
    """``inputs`` with the modalities it lacks in this manifest named, so that the summary tells the truth."""
    if not missing:
        return inputs
    return f"{inputs}; without {' or '.join(MODALITY_NAMES.get(m, m) for m in missing)} (not in the manifest)"


def late_fusion_spec(name: str, chapter: str, inputs: str, bases: list[ModelSpec], inner_folds: int = 3,
                     oracle: str | None = None) -> ModelSpec:
    runnable = [b for b in bases if b.build is not None]
    if len(runnable) < 2:
        return ModelSpec(name, chapter, inputs, None, reason="fewer than two of its modalities are in the manifest")
    # the image bases need their modality; the tabular base (laboratory values) declares none
    missing = [b.needs[0] if b.needs else "labs" for b in bases if b.build is None]
    return ModelSpec(name, chapter, _without(inputs, missing), lambda seed: LateFusion(runnable, inner_folds),
                     oracle=oracle)


def neural_fusion_spec(name: str, chapter: str, inputs: str, modalities: list[str], cohort, cfg: FusionConfig,
                       ct_weights: dict | None = None, oracle: str | None = None,
                       fold_models: dict[str, FoldModelScores] | None = None) -> ModelSpec:
    """A neural fusion over the ``modalities`` the manifest has (skipped if they come from fewer than
    two sources: laboratory values, SR-PET, CT). ``pet_features`` reads the columns of
    :data:`prrt.pet_features.FEATURES` from the data's table (see :func:`chapter_table`).
    ``fold_models`` (``{"pet": FoldModelScores, ...}``): those image branches read the fold's unimodal
    CNN instead of training their own (the spec then ``requires`` that model)."""
    from .pet_features import FEATURES

    sources = {"labs": bool(cohort.labs), "pet": "pet" in cohort.modalities, "ct": "ct" in cohort.modalities}
    have = [m for m in modalities if sources[SOURCE[m]]]
    if len({SOURCE[m] for m in have}) < 2:
        return ModelSpec(name, chapter, inputs, None, reason="fewer than two of its modalities are in the manifest")
    labs = list(cohort.labs) if "labs" in have else None
    pet = list(FEATURES) if "pet_features" in have else None
    missing = list(dict.fromkeys(SOURCE[m] for m in modalities if m not in have))
    fold_models = {m: f for m, f in (fold_models or {}).items() if m in have}
    return ModelSpec(name, chapter, _without(inputs, missing),
                     lambda seed: NeuralFusion(have, labs, cfg, ct_weights, pet_feature_columns=pet,
                                               fold_models=fold_models),
                     oracle=oracle, val_fraction=cfg.train.val_fraction,
                     requires=tuple(f.model for f in fold_models.values()))


def chapter_table(cohort, run_dir, progress: bool = True) -> pd.DataFrame:
    """The table chapter 04 reads: laboratory values, numeric clinical variables and, where the manifest
    names PET images, the SR-PET lesion features that chapter 02 wrote (computed here if it did not)."""
    from pathlib import Path

    from .pet_features import cohort_features
    from .tabular import feature_table

    if "pet" not in cohort.modalities:
        return feature_table(cohort)
    path = Path(run_dir) / "features" / "pet_features.csv"
    if path.is_file():
        pet = pd.read_csv(path, index_col=0)
        pet.index = pet.index.astype(str)
    else:
        pet = cohort_features(cohort, progress=progress)
    return feature_table(cohort, pet)


#: Training of a fusion whose image branches are the fold models' scores: only small networks on a
#: few numbers per patient learn, so many more, larger steps than a CNN's (chosen on a tuning cohort
#: of another seed, benchmarks/tune_frozen_fusion.py; never on the demo's test folds).
SCORE_FUSION_TRAINING = {"epochs": 150, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-2}
#: ... and its network: each table branch a single projection of the values, to 16 numbers.
SCORE_FUSION_NETWORK = {"lab_width": 0, "dim": 16}


def fusion_config(profile, mechanism: str, **train_overrides) -> FusionConfig:
    """The settings of a neural fusion under ``profile`` (its epochs and batch size, or, with image
    branches from the fold models, :data:`SCORE_FUSION_TRAINING`)."""
    from .train import config_from_profile

    base = config_from_profile(profile)
    if getattr(profile, "fusion_image_branches", "end_to_end") == "fold_models":
        epochs = {"epochs": getattr(profile, "fusion_score_epochs", SCORE_FUSION_TRAINING["epochs"])}
        return FusionConfig(train=replace(base, **{**SCORE_FUSION_TRAINING, **epochs, **train_overrides}),
                            mechanism=mechanism, **SCORE_FUSION_NETWORK)
    return FusionConfig(train=replace(base, **train_overrides), mechanism=mechanism)


#: The models of chapter 04 besides the unimodal ones of chapters 02-03: name -> (modalities, description).
FUSIONS = {
    "lab_pet_fusion": (["labs", "pet"], "laboratory values + SR-PET"),
    "lab_ct_fusion": (["labs", "ct"], "laboratory values + CT"),
    "pet_ct_fusion": (["pet", "ct"], "SR-PET + CT"),
    "lab_pet_ct_fusion": (["labs", "pet", "ct"], "laboratory values + SR-PET + CT"),
}
HEADLINE = "lab_pet_ct_fusion"


def fusion_modalities(mods: list[str], profile) -> list[str]:
    """The branches of a fusion of ``mods``: SR-PET is the CNN and, with ``profile.fusion_pet_features``,
    also the lesion features of chapter 02."""
    if not profile.fusion_pet_features or "pet" not in mods:
        return list(mods)
    i = mods.index("pet")
    return [*mods[:i], "pet_features", *mods[i:]]


def chapter_specs(cohort, profile, ct_state: dict | None, chapter: str = "04", run_dir=None) -> list[ModelSpec]:
    """The models chapter 04 trains: the pretrained CT CNN, the four fusions (the profile's mechanism,
    pretrained CT branch) and, for laboratory values + SR-PET + CT, the other two mechanisms.

    With ``profile.fusion_image_branches == "fold_models"`` the neural fusions' image branches are the
    scores of the fold models that ``run_dir`` holds: the PET CNN of chapter 03 and the pretrained CT
    CNN of this chapter (the CT CNN of chapter 03 when there is no pretraining)."""
    from .tabular import make_model, table_spec
    from .train import config_from_profile, image_spec, input_description

    cfg = config_from_profile(profile)
    no_weights = "no CT pretraining in the manifest (ct_pretraining) or the run (--ct-weights)"
    specs = [image_spec("ct_cnn_pretrained", "ct", cfg, chapter,
                        input_description(profile, "CT, 3D CNN") + ", encoder pretrained",
                        "ct" in cohort.modalities and ct_state is not None, oracle="ct", encoder_weights=ct_state,
                        reason=None if "ct" in cohort.modalities else "the manifest names no CT images")]
    if "ct" in cohort.modalities and ct_state is None:
        specs[0].reason = no_weights
    mech = profile.fusion_mechanism
    pretrained = " (CT branch pretrained)" if ct_state is not None else ""

    branches = getattr(profile, "fusion_image_branches", "end_to_end")
    if branches not in ("end_to_end", "fold_models"):
        raise ValueError(f"fusion_image_branches must be 'end_to_end' or 'fold_models', not {branches!r}")
    fold_models = None
    if branches == "fold_models":
        if run_dir is None:
            raise ValueError("fusions with image branches from the fold models need the run folder (run_dir)")
        ct_source = "ct_cnn_pretrained" if ct_state is not None else "ct_cnn"
        fold_models = {"pet": FoldModelScores(run_dir, "pet_cnn", "pet"), "ct": FoldModelScores(run_dir, ct_source, "ct")}
        pretrained = " (CT CNN pretrained)" if ct_state is not None else ""

    def text_of(mods, text, mechanism):
        cnn = "CNN score" if fold_models else "CNN"
        lesions = f" ({cnn} and lesion features)" if "pet_features" in fusion_modalities(mods, profile) else ""
        images = ", image branches: the fold's unimodal CNN scores" if fold_models and {"pet", "ct"} & set(mods) else ""
        return (text.replace("SR-PET", f"SR-PET{lesions}") + f", {mechanism} fusion"
                + (pretrained if "ct" in mods else "") + images)

    for name, (mods, text) in FUSIONS.items():
        specs.append(neural_fusion_spec(name, chapter, text_of(mods, text, mech), fusion_modalities(mods, profile),
                                        cohort, fusion_config(profile, mech), ct_weights=ct_state,
                                        oracle="all" if len(mods) == 3 else None, fold_models=fold_models))
    mods, text = FUSIONS[HEADLINE]
    for other in [m for m in ("intermediate", "adaptive") if m != mech]:
        specs.append(neural_fusion_spec(f"lab_pet_ct_{other}", chapter, text_of(mods, text, other),
                                        fusion_modalities(mods, profile), cohort, fusion_config(profile, other),
                                        ct_weights=ct_state, oracle="all", fold_models=fold_models))
    labs = list(cohort.labs)
    bases = [table_spec("lab_rf", chapter, "labs", labs or None, lambda s: make_model("rf", s, profile)),
             image_spec("pet_cnn", "pet", cfg, chapter, "PET", "pet" in cohort.modalities),
             image_spec("ct_cnn", "ct", cfg, chapter, "CT", "ct" in cohort.modalities,
                        encoder_weights=ct_state)]
    specs.append(late_fusion_spec("lab_pet_ct_late", chapter, "laboratory values + SR-PET + CT, late fusion "
                                  "(stacking of the unimodal models)", bases, profile.late_inner_folds, oracle="all"))
    subsets = {"headline": {"ct_cnn_pretrained", HEADLINE, "lab_pet_ct_late"},  # one model of each kind
               "fusion": {"ct_cnn_pretrained", HEADLINE},  # without the nested CNN training of late fusion
               "neural": {s.name for s in specs} - {"lab_pet_ct_late"}}
    if profile.fusion_models in subsets:
        keep = subsets[profile.fusion_models]
        specs = [s if s.name in keep or s.build is None else
                 replace(s, build=None, reason=f"not trained in the {profile.name} profile "
                                               f"(fusion_models = {profile.fusion_models})")
                 for s in specs]
    elif profile.fusion_models != "all":
        raise ValueError(f"fusion_models must be 'all', 'neural', 'headline' or 'fusion', not {profile.fusion_models!r}")
    return specs


# ---- what chapter 04 shows ---------------------------------------------------------------------------
def image_branches_text(profile, ct_pretrained: bool) -> str:
    """How this run's neural fusions get their SR-PET and CT branches, in a sentence or two (Markdown)."""
    if getattr(profile, "fusion_image_branches", "end_to_end") == "fold_models":
        ct = "the pretrained CT CNN above" if ct_pretrained else "the CT CNN of chapter 3"
        return ("In this run (profile setting `fusion_image_branches: fold_models`) the fusions train no CNN of their "
                "own: their SR-PET and CT branches are given the score of the fold's unimodal CNN (the PET CNN of "
                f"chapter 3 and {ct}), standardised on the fitting patients. That CNN was trained on exactly the "
                "same training patients: a fingerprint of the two patient lists is saved with every checkpoint and "
                "checked, so no test patient of the fold reached it. Only the fusion's small networks learn, which "
                "keeps the chapter within minutes on a laptop CPU; the paper profile trains the encoders end to end.")
    start = " (the CT encoder from the pretrained weights)" if ct_pretrained else ""
    return f"In this run the fusions train their SR-PET and CT encoders end to end{start}, with the rest of the network."


SEVEN = ["lab_rf", "pet_cnn", "ct_cnn", "lab_pet_fusion", "lab_ct_fusion", "pet_ct_fusion", HEADLINE]
UNIMODAL = ["lab_rf", "pet_cnn", "ct_cnn", "ct_cnn_pretrained"]
#: The strongest classical baseline of chapter 02 (Random Forest on laboratory values + PET features).
CLASSICAL = "lab_pet_features_rf"


def headline_comparisons(run_dir, summary: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """Paired tests (corrected resampled t-test, DeLong) of the fusion against the best unimodal model
    and the classical baseline, and of the pretrained CT CNN against the CT CNN from scratch."""
    from .evaluate import _fmt_p, compare_models
    from .results import read_predictions

    ran = set(summary.loc[summary["status"] == "ran", "model"])
    auroc = summary.set_index("model")["auroc_mean"]
    pairs = []
    uni = [m for m in UNIMODAL if m in ran]
    if HEADLINE in ran and uni:
        best = max(uni, key=lambda m: auroc[m])
        pairs.append((HEADLINE, best, "fusion vs the best unimodal model"))
    if HEADLINE in ran and CLASSICAL in ran:
        pairs.append((HEADLINE, CLASSICAL, "fusion vs the classical baseline (labs + PET features, Random Forest)"))
    if {"ct_cnn_pretrained", "ct_cnn"} <= ran:
        pairs.append(("ct_cnn_pretrained", "ct_cnn", "CT CNN: pretrained encoder vs from scratch"))
    rows = []
    for a, b, what in pairs:
        c = compare_models(read_predictions(run_dir, a), read_predictions(run_dir, b), splits)
        rows.append({"comparison": what, "model": a, "versus": b,
                     "AUROC": f"{auroc[a]:.2f} vs {auroc[b]:.2f}",
                     "difference (mean over folds)": f"{c['auroc_difference']:+.3f}",
                     "p, corrected resampled t-test": _fmt_p(c["p_corrected_t"]), "p, DeLong": _fmt_p(c["p_delong"])})
    return pd.DataFrame(rows).set_index("comparison") if rows else pd.DataFrame()


def headline_text(summary: pd.DataFrame, comparisons: pd.DataFrame) -> str:
    """The chapter's result in a sentence or two (Markdown), from the summary rows and the paired tests."""
    from .evaluate import p_phrase

    rows = summary.set_index("model")
    if HEADLINE not in rows.index or rows.loc[HEADLINE, "status"] != "ran":
        why = rows.loc[HEADLINE, "status"] if HEADLINE in rows.index else "not in the summary"
        return f"The laboratory + SR-PET + CT fusion did not run ({why}), so there is no fusion result to report."

    def score(m):
        r = rows.loc[m]
        return f"{r['auroc_mean']:.2f} ± {r['auroc_sd']:.2f}"

    r = rows.loc[HEADLINE]
    out = [f"In this run the laboratory + SR-PET + CT fusion reached an AUROC of {score(HEADLINE)} "
           f"(AUPRC {r['auprc_mean']:.2f} ± {r['auprc_sd']:.2f}; mean ± SD over {int(r['n_repeats'])} repeats)."]
    for _, c in comparisons.iterrows() if not comparisons.empty else []:
        if c["model"] != HEADLINE:
            continue
        kind = "the best unimodal model" if c["versus"] in UNIMODAL else "the classical baseline"
        p = p_phrase(c["p, corrected resampled t-test"])
        out.append(f"Against {kind}, `{c['versus']}` ({score(c['versus'])}), the per-fold AUROCs differ on average "
                   f"by {c['difference (mean over folds)']} (corrected resampled t-test p {p}).")
    return " ".join(out)


def modality_weights(result, data) -> pd.DataFrame:
    """Each patient's modality weights in a neural fusion, from the fold models that tested them (mean over repeats)."""
    parts = []
    for (repeat, fold), model in result.models.items():
        test = result.predictions.query("repeat == @repeat and fold == @fold")["patient"].tolist()
        if test and hasattr(model, "modality_weights"):
            parts.append(model.modality_weights(data, test))
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts).groupby(level=0).mean()


def stacking_weights(result) -> pd.DataFrame:
    """The late fusion's logistic-regression coefficients per fold (on each unimodal model's logit)."""
    rows = [m.stacking_weights().rename((r, f)) for (r, f), m in result.models.items() if hasattr(m, "stacking_weights")]
    return pd.DataFrame(rows) if rows else pd.DataFrame()
