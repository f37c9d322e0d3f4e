"""The neural fusions (``intermediate``, ``adaptive``) behind the model interface: :class:`NeuralFusion`.

A :class:`NeuralFusion` builds a :class:`prrt.learn.fusion.FusionNet` for each fold and trains it end to
end with the loop every network shares (:func:`prrt.learn.training.fit_network`). What it learns besides
the weights comes from the fitting patients only: the median imputation and standardisation of each
table branch (laboratory values, SR-PET lesion features) and, for image branches given the scores of the
fold's unimodal CNNs, those scores' mean and SD. A source of cross-fitted scores
(:class:`prrt.learn.fusion.FoldModelScores` with ``cross_fitted``) gives the training patients the score of a
model that saw neither them nor the test fold, so that the fusion does not learn how far to trust an image
from scores a CNN gave its own training patients; the test patients keep the fold CNN's. During training
each present source of a patient (laboratory values, SR-PET with its lesion features, CT) is dropped at
random (``modality_dropout``, never all of them; :func:`drop_sources`). Its predictions are prior-corrected
with the fitting part's share of short PFS; ``predict(..., without=...)`` masks branches as if the patients
lacked them (for the modality ablation), :meth:`NeuralFusion.modality_weights` gives each patient's
weight per modality, and :meth:`NeuralFusion.features` the projected embeddings.

The mechanisms, the network and their settings are described in :mod:`prrt.learn.fusion`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..evaluation import prior_correction
from .base import FitRecord
from .fusion import (
    MODALITIES,
    SOURCE,
    TABULAR,
    FoldModelScores,
    FusionConfig,
    FusionNet,
    LabEncoder,
    ScoreInput,
    mean_sd,
)
from .networks import build_encoder
from .tabular import logistic_regression
from .training import autocast, fit_network, seed_everything, select_device, to_device
from .weights import load_encoder_weights


def drop_sources(present: torch.Tensor, of_source: torch.Tensor, n_sources: int, rate: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Modality dropout by source: each source a patient has (``present``, patients x modalities; ``of_source``
    the source index of each modality) is dropped with probability ``rate``, with all its modalities (the PET
    branch and the lesion features together), never every source of a patient."""
    has = torch.zeros((len(present), n_sources))
    has.index_add_(1, of_source, present.float())
    has = has > 0
    drop = (torch.rand(has.shape, generator=generator) < rate) & has
    drop[(has & ~drop).sum(dim=1) == 0] = False  # never drop every source of a patient
    return present * ~drop[:, of_source]


#: :func:`table_score`'s results in this process, by the content of its inputs (at most :data:`TABLE_SCORES_KEPT`)
_table_scores: dict = {}
TABLE_SCORES_KEPT = 256


def table_score(x: pd.DataFrame, y: pd.Series, fit: list[str], folds: int, cross_fitted: bool = True) -> tuple:
    """A table branch's score (``cfg.table_scores``) on the training patients ``x``, ``y`` (those with any of its
    columns): a logistic regression of all of them, their cross-fitted scores (stratified ``folds``; each patient
    scored by a model that never saw them), and the mean and SD of both on the fitting patients ``fit``:
    ``(model, oof, (mean, sd), (oof_mean, oof_sd))``. With ``cross_fitted`` False (a restored fusion, which scores
    new patients only) the cross-fitted scores are left out until asked for: ``oof`` and their mean and SD are None.

    Every fusion of a fold with the branch needs the same (chapter 04 fits several, chapter 05 restores one, each
    fold of each): it is computed once per process for the same inputs, keyed by their content. The model is
    shared, and only read (``decision_function``).
    """
    import hashlib

    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    h = hashlib.sha256()
    for part in (x, y, pd.Series(fit, dtype=str)):
        h.update(pd.util.hash_pandas_object(part, index=True).to_numpy().tobytes())
    h.update(f"{list(x.columns)}|{folds}".encode())
    key = h.hexdigest()
    entry = _table_scores.get(key)
    if entry is None:
        model = logistic_regression(0).fit(x, y)
        entry = (model, None, mean_sd(model.decision_function(x.loc[fit])), None)
    if cross_fitted and entry[1] is None:
        oof = pd.Series(cross_val_predict(logistic_regression(0), x, y, method="decision_function",
                                          cv=StratifiedKFold(folds, shuffle=True, random_state=0)), index=x.index)
        entry = (entry[0], oof, entry[2], mean_sd(oof.loc[fit].to_numpy(float)))
    if key not in _table_scores and len(_table_scores) >= TABLE_SCORES_KEPT:
        _table_scores.pop(next(iter(_table_scores)))
    _table_scores[key] = entry
    return entry


class NeuralFusion:
    """Intermediate or adaptive fusion, trained end to end (the model interface of :mod:`prrt.learn.base`)."""

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
        self.table_models_: dict = {}  # the table branches given as scores (cfg.table_scores), set by each fit
        for m in TABULAR:
            if m in self.modalities and not self.columns[m]:
                raise ValueError(f"the fusion's {m!r} branch needs its table columns")

    # -- inputs
    def _present(self, data, patients) -> torch.Tensor:
        cols = []
        for m in self.modalities:
            key = "table" if m in TABULAR else m
            cols.append(data.have(patients, key, self.columns.get(m)))
        return torch.tensor(np.array(cols, dtype=np.float32).T.reshape(len(patients), len(self.modalities)))

    def _inputs(self, data, patients, training: bool = False) -> dict:
        """The branches' inputs of ``patients``; ``training``: they are the fold's training patients, whose image
        scores come from the cross-fitted models where the source has them (:meth:`FoldModelScores.training_scores`)
        instead of from the fold's CNN, which saw their labels."""
        out = {}
        for m in self.modalities:
            if m in self.table_models_:
                out[m] = self._table_score(data, m, patients, training)
            elif m in TABULAR:
                if not len(patients):  # an empty inner validation part (the profile's val_fraction 0)
                    out[m] = torch.zeros((0, len(self.columns[m])))
                    continue
                imputer, scaler = self.tables_[m]
                x = scaler.transform(imputer.transform(data.table.loc[patients, self.columns[m]]))
                out[m] = torch.as_tensor(np.nan_to_num(x), dtype=torch.float32)
            elif m in self.fold_models:
                x = torch.zeros((len(patients), 1))
                have = [i for i, p in enumerate(patients) if data.has(p, m)]
                if have:
                    ids = [patients[i] for i in have]
                    if training and m in self.cross_fitted_:
                        mean, sd = self.cross_fitted_scale_[m]
                        z = (self.cross_fitted_[m].loc[ids].to_numpy(np.float32) - mean) / sd
                    else:
                        mean, sd = self.score_scale_[m]
                        z = (self.fold_models[m].scores(self.part_, data, ids) - mean) / sd
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

    def _table_score(self, data, m: str, patients: list[str], training: bool) -> torch.Tensor:
        """The standardised score of table branch ``m`` (``cfg.table_scores``): training patients' cross-fitted, the
        others' from the model of all training patients; 0 where a patient has none of the branch's columns."""
        x = torch.zeros((len(patients), 1))
        have = [int(i) for i in np.flatnonzero(data.have(patients, "table", self.columns[m]))]
        if have:
            ids = [patients[i] for i in have]
            if training and self.table_models_[m][1] is None:  # a restored fusion asked for training scores
                self.table_models_[m] = table_score(*self.table_inputs_[m])
            model, oof, (full_mean, full_sd), oof_scale = self.table_models_[m]
            if training:
                z = (oof.loc[ids].to_numpy(float) - oof_scale[0]) / oof_scale[1]
            else:
                z = (model.decision_function(data.table.loc[ids, self.columns[m]]) - full_mean) / full_sd
            x[have, 0] = torch.as_tensor(z, dtype=torch.float32)
        return x

    def _fit_table_scores(self, data, part, cross_fitted: bool = True) -> None:
        """For each table branch of ``cfg.table_scores``: a logistic regression of its columns on the training
        patients who have any of them, and their cross-fitted scores (stratified inner folds of the training part;
        each patient scored by a model that never saw them; with ``cross_fitted`` False only when first asked for),
        each with its mean and SD on the fitting part."""
        self.table_models_, self.table_inputs_ = {}, {}
        for m in [m for m in self.cfg.table_scores if m in self.modalities]:
            cols = self.columns[m]
            ids = data.with_all(part.all, ["table"], cols)
            y = data.y.loc[ids].astype(int)
            folds = min(self.cfg.table_score_folds, int(y.value_counts().min()) if y.nunique() == 2 else 0)
            if folds < 2:
                raise ValueError(f"the fusion's {m!r} score needs at least two training patients of each outcome "
                                 f"with {m.replace('_', ' ')}; this training part has {dict(y.value_counts())}")
            self.table_inputs_[m] = (data.table.loc[ids, cols], y, [p for p in part.fit if p in ids], folds)
            self.table_models_[m] = table_score(*self.table_inputs_[m], cross_fitted=cross_fitted)

    def _build(self, data) -> FusionNet:
        encoders = {}
        for m in self.modalities:
            if m in self.table_models_ or m in self.fold_models:  # one score per patient
                encoders[m] = ScoreInput()
            elif m in TABULAR:
                encoders[m] = LabEncoder(len(self.columns[m]), self.cfg.lab_width)
            else:
                enc = build_encoder(self.cfg.train.encoder, in_channels=self.shapes_[m][0])
                if m == "ct" and self.ct_weights is not None:
                    load_encoder_weights(enc, self.ct_weights)
                encoders[m] = enc
        return FusionNet(encoders, self.cfg.mechanism, self.cfg.dim, self.cfg.train.dropout)

    # -- interface
    def _prepare(self, data, part, seed: int | None = None, restoring: bool = False) -> FusionNet:
        """Everything a fold's fusion learns besides its weights, from the fitting patients only (the
        imputers and scalers of the table branches, the fold models' scores and their scale); returns
        the freshly initialised network, its weights drawn from ``seed`` (when given) whatever ran before: loading
        a fold CNN draws random numbers too, and the sources load each CNN once for all the fusions of a process.
        ``restoring``: for :meth:`restore`, whose fusion scores new patients: the table branches' cross-fitted
        scores of the training patients are computed only if asked for."""
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import StandardScaler

        self.device = select_device(self.cfg.train.device)
        self.shapes_ = {m: tuple(data.images[m].x.shape[1:]) for m in self.modalities if m in data.images}
        for m in self.modalities:
            if m not in TABULAR and m not in self.shapes_:
                raise ValueError(f"fusion needs {m.upper()} images for some patients; the data has none")
        # the fold's CNNs' scores of the fitting patients: their mean and SD
        self.part_, self.score_scale_ = part, {}
        for m, source in self.fold_models.items():
            self.score_scale_[m] = mean_sd(source.scores(part, data, [p for p in part.fit if data.has(p, m)]))
        # cross-fitted sources: the training patients' scores from models that never saw them, standardised on the
        # fitting part by their own mean and SD (the fold CNN's scores of test patients by the fold CNN's: each
        # source on its own scale, so that the fusion learns a weight, not a scale)
        self.cross_fitted_, self.cross_fitted_scale_ = {}, {}
        for m, source in self.fold_models.items():
            training = [p for p in part.all if data.has(p, m)]
            scores = source.training_scores(part, data, training)
            if scores is None:
                continue
            self.cross_fitted_[m] = scores
            self.cross_fitted_scale_[m] = mean_sd(scores.loc[[p for p in part.fit if p in scores.index]].to_numpy(float))
        self._fit_table_scores(data, part, cross_fitted=not restoring)
        self.tables_ = {}  # each tabular branch: imputer and scaler fitted on the fitting patients only
        for m in [m for m in self.modalities if m in TABULAR and m not in self.table_models_]:
            x = data.table.loc[part.fit, self.columns[m]]
            imputer = SimpleImputer(strategy="median", keep_empty_features=True).fit(x)
            self.tables_[m] = (imputer, StandardScaler().fit(imputer.transform(x)))
        if seed is not None:
            seed_everything(seed)
        return self._build(data)

    def fit(self, data, part, seed: int, progress: bool = True, desc: str = ""):
        cfg = self.cfg.train
        model = self._prepare(data, part, seed)
        y_fit = data.y.loc[part.fit].to_numpy(float)
        x_fit, pr_fit = self._inputs(data, part.fit, training=True), self._present(data, part.fit)
        x_val, pr_val = self._inputs(data, part.val, training=True), self._present(data, part.val)
        self.model, self.prevalence = model, float(y_fit.mean())
        device = self.device

        sources = sorted({SOURCE[m] for m in self.modalities})
        of_source = torch.tensor([sources.index(SOURCE[m]) for m in self.modalities])

        def batch(idx, g):
            present = pr_fit[idx].clone()
            if self.cfg.modality_dropout and len(sources) > 1:
                present = drop_sources(present, of_source, len(sources), self.cfg.modality_dropout, g)
            return {m: to_device(v[idx], device) for m, v in x_fit.items()}, present.to(device)

        out = fit_network(model, y_fit, data.y.loc[part.val].to_numpy(int), cfg, seed, batch,
                          validate=lambda: self._raw(x_val, pr_val),
                          bn_forward=lambda rows: model({m: to_device(v[rows], device) for m, v in x_fit.items()},
                                                        pr_fit[rows].to(device)),
                          desc=desc or "fusion", progress=progress)
        self.model = out.model
        return FitRecord(out.curve, out.best_epoch, {"state_dict": out.model.state_dict(),
                                                     "modalities": self.modalities,
                                                     "mechanism": self.cfg.mechanism,
                                                     "fold_models": {m: f.model for m, f in self.fold_models.items()},
                                                     "cross_fitted": sorted(self.cross_fitted_),
                                                     "training_part": part.digest()})

    def restore(self, data, part, checkpoint: dict):
        """The fold's fusion as ``fit`` left it on ``part``, from its checkpoint (no training): what it
        learnt besides the weights is recomputed from the same fitting patients."""
        if list(checkpoint["modalities"]) != self.modalities:
            raise ValueError(f"the checkpoint's fusion has the branches {checkpoint['modalities']}, this one {self.modalities}")
        model = self._prepare(data, part, restoring=True)
        model.load_state_dict(checkpoint["state_dict"])
        self.model, self.prevalence = model.to(self.device).eval(), float(data.y.loc[part.fit].mean())
        return self

    @torch.no_grad()
    def _raw(self, x, present, weights: bool = False):
        self.model.eval()
        out, ws = [], []
        for i in range(0, len(present), 32):
            sl = slice(i, i + 32)
            with autocast(self.device):
                logit, w = self.model({m: to_device(v[sl], self.device) for m, v in x.items()},
                                      present[sl].to(self.device), return_weights=True)
            out.append(torch.sigmoid(logit.float()).cpu())
            ws.append(w.float().cpu())
        p = torch.cat(out).numpy() if out else np.zeros(0)
        return (p, torch.cat(ws).numpy()) if weights else p

    def predict(self, data, patients: list[str], without: tuple[str, ...] = ()) -> np.ndarray:
        """The probability of short PFS; ``without`` names branches masked as if the patients lacked
        them (the missing-modality path; for the modality ablation of chapter 05)."""
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
        h, _ = self.model.embed({m: to_device(v, self.device) for m, v in x.items()}, present.to(self.device))
        return {m: h[:, i].float().cpu().numpy() for i, m in enumerate(self.modalities)}

    def modality_weights(self, data, patients: list[str]) -> pd.DataFrame:
        """Each patient's weight per modality (adaptive: the gate; intermediate: equal over present ones)."""
        _, w = self._raw(self._inputs(data, patients), self._present(data, patients), weights=True)
        return pd.DataFrame(w, index=list(patients), columns=self.modalities)
