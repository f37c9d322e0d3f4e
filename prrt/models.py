"""One model interface and one cross-validation loop for every model of the book.

Every model, tabular, image or fusion, is described by a :class:`ModelSpec`: its name, the chapter
that reports it, a description of its inputs, the data it needs, and how to build it. ``build(seed)``
returns a fresh, unfitted object with three methods:

``fit(data, part, seed, progress=..., desc=...)``
    learn from the training part of one fold (``part.fit``; a model that selects or monitors
    epochs uses ``part.val``, an inner validation part drawn from the same training patients);
    returns a :class:`FitRecord` (learning curve, kept epoch, weights to save) or ``None``.
``predict(data, patients)``
    the probability of short PFS for these patients.
``features(data, patients)``
    per-modality embeddings ``{modality: array (n, d)}``: what a fusion model or an explanation
    can build on.

:func:`cross_validate` runs one spec over the saved splits: for every repeat and fold it draws the
inner validation part from the training patients only, builds and fits a fresh model, predicts the
test fold once (and the unlabelled patients, who are in no fold), and collects the predictions in
the format of :mod:`prrt.evaluate`, the learning curves and, for a spec that asks for them,
permutation importances on the held-out fold. :func:`run_models` does that for a chapter's specs,
writes ``predictions/<model>.csv``, checkpoints and curves, and returns the summary rows; a spec
whose inputs the manifest lacks becomes a ``skipped`` row with its reason.

Seeds: the model of (repeat r, fold k) is fitted with ``seed + 1000 r + k``; the inner validation
part is drawn with the same number.

Each (model, repeat, fold) is one job (:func:`fit_fold`) that depends on nothing but the data, the
spec and the seed. An *engine* runs the jobs: :class:`Sequential` (the default) one after another
in this process; :class:`prrt.parallel.DaskEngine` spreads them over processes, GPUs or machines.
The results are gathered in fold order, so the files a run writes do not depend on the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np
import pandas as pd

from .evaluate import assemble_predictions, fold_test_rows
from .splits import iter_folds

if TYPE_CHECKING:
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
            return (self.table is not None and patient in self.table.index
                    and bool(self.table.loc[patient, columns].notna().any()))
        return modality in self.images and self.images[modality].has(patient)


@dataclass
class TrainingPart:
    """The training patients of one fold: ``fit`` trains the weights, ``val`` is the inner validation part."""

    fit: list[str]
    val: list[str]

    @property
    def all(self) -> list[str]:
        return sorted(self.fit + self.val)

    def digest(self) -> str:
        """A fingerprint of the two parts (saved with a fold's checkpoint, so that a model that reuses a
        fold model can check that it was trained on exactly these patients; the IDs are not stored)."""
        import hashlib

        text = "fit:" + ",".join(sorted(self.fit)) + "|val:" + ",".join(sorted(self.val))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class FitRecord:
    """What fitting one fold leaves behind besides the model."""

    curve: pd.DataFrame | None = None  # epoch, train_loss, val_loss, val_auroc
    best_epoch: int | None = None
    checkpoint: dict | None = None  # saved as checkpoints/<model>/r{repeat}_f{fold}.pt


class Model(Protocol):
    def fit(self, data: ModelData, part: TrainingPart, seed: int, progress: bool = True,
            desc: str = "") -> FitRecord | None: ...

    def predict(self, data: ModelData, patients: list[str]) -> np.ndarray: ...

    def features(self, data: ModelData, patients: list[str]) -> dict[str, np.ndarray]: ...


@dataclass
class ModelSpec:
    """A model of the book: what it is called, what it sees, and how to build it.

    ``build(seed)`` returns a fresh unfitted :class:`Model`; ``None`` means the manifest lacks its
    inputs and ``reason`` says which. ``needs`` lists the modalities a patient must have to be
    predicted (``"table"``, ``"pet"``, ``"ct"``); a model that copes with a missing modality (the
    fusion models) lists none. ``val_fraction`` > 0 draws an inner validation part from each training
    fold. ``permutation_repeats`` > 0 computes permutation importance on each held-out fold.
    ``requires`` names models whose fold checkpoints this one reads (see
    :class:`prrt.fusion.FoldModelScores`): :func:`run_models` fits those first.
    """

    name: str
    chapter: str
    inputs: str
    build: Callable[[int], Model] | None
    reason: str = ""
    oracle: str | None = None
    needs: tuple[str, ...] = ()
    val_fraction: float = 0.0
    permutation_repeats: int = 0
    columns: list[str] | None = None  # the table columns the model reads (for importances)
    requires: tuple[str, ...] = ()


# ---- fold models back from a run ------------------------------------------------------------------
def checkpoint_path(run_dir, model: str, repeat: int, fold: int) -> Path:
    return Path(run_dir) / "checkpoints" / model / f"r{repeat}_f{fold}.pt"


def restore_fold_models(spec: ModelSpec, data: ModelData, splits: pd.DataFrame, seed: int, run_dir,
                        repeats=None, check: bool = True, tolerance: float | None = None) -> dict:
    """The fold models that :func:`run_models` fitted for ``spec``, taken up from their checkpoints.

    ``{(repeat, fold): model}`` for the ``repeats`` asked for (default: all). Each fold's training part
    is drawn again exactly as when fitting; a checkpoint of other training patients (another split or
    seed) is an error, as is a missing one. With ``check``, every restored model predicts its test
    fold again and must give the probabilities of ``predictions/<model>.csv`` (within ``tolerance``;
    default 1e-4 on the CPU, where the numbers are deterministic, and 2e-2 with CUDA, where bf16 and
    cuDNN's choice of algorithm move the last digits), so that an explanation is always of the model
    whose results the book reports.
    """
    import torch

    from .results import read_predictions

    if tolerance is None:
        tolerance = 2e-2 if torch.cuda.is_available() else 1e-4

    if spec.build is None:
        raise ValueError(f"{spec.name} did not run: {spec.reason}")
    saved = read_predictions(run_dir, spec.name) if check else None
    out = {}
    for fold in iter_folds(splits):
        if repeats is not None and fold.repeat not in repeats:
            continue
        s = fold_seed(seed, fold.repeat, fold.fold)
        part = inner_split(fold.train, data.y, spec.val_fraction, s)
        path = checkpoint_path(run_dir, spec.name, fold.repeat, fold.fold)
        if not path.is_file():
            raise FileNotFoundError(f"{spec.name}: no checkpoint of repeat {fold.repeat}, fold {fold.fold} ({path}); "
                                    f"run chapter {spec.chapter} first with the same splits and seed")
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if ck.get("training_part") != part.digest():
            raise ValueError(f"{spec.name}: the checkpoint {path} was trained on other patients than repeat "
                             f"{fold.repeat}, fold {fold.fold} of this run (another split or seed?)")
        model = spec.build(seed)
        model.restore(data, part, ck)
        if check:
            want = saved.query("repeat == @fold.repeat and fold == @fold.fold").set_index("patient")["probability"]
            if sorted(want.index) != sorted(fold.test):
                raise ValueError(f"{spec.name}: predictions/{spec.name}.csv does not hold the test patients of repeat "
                                 f"{fold.repeat}, fold {fold.fold}; the run folder mixes results of different runs")
            diff = float(np.max(np.abs(model.predict(data, list(want.index)) - want.to_numpy())))
            if diff > tolerance:
                raise ValueError(f"{spec.name}: the checkpoint {path} does not reproduce predictions/{spec.name}.csv "
                                 f"for repeat {fold.repeat}, fold {fold.fold} (largest difference {diff:.2g}); "
                                 "the run folder mixes results of different runs")
        out[(fold.repeat, fold.fold)] = model
    return out


# ---- the loop --------------------------------------------------------------------------------------
@dataclass
class CVResult:
    """Out-of-fold predictions and what each fold's model left behind."""

    name: str
    predictions: pd.DataFrame
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)  # repeat, fold, epoch, ..., best
    permutation: pd.DataFrame = field(default_factory=pd.DataFrame)  # repeat, fold, feature, importance
    impurity: pd.DataFrame = field(default_factory=pd.DataFrame)  # repeat, fold, feature, importance
    inner_validation: dict = field(default_factory=dict)  # (repeat, fold) -> validation patients
    features: list[str] = field(default_factory=list)
    models: dict = field(default_factory=dict, repr=False)


def fold_seed(seed: int, repeat: int, fold: int) -> int:
    return seed + 1000 * repeat + fold


def inner_split(train: list[str], y: pd.Series, val_fraction: float, seed: int) -> TrainingPart:
    """Split a fold's training patients into a fitting and a validation part, stratified by label."""
    from sklearn.model_selection import train_test_split

    train = sorted(train)
    if not val_fraction:
        return TrainingPart(train, [])
    fit, val = train_test_split(train, test_size=val_fraction, stratify=y.loc[train].astype(int),
                                random_state=seed % 2**32)
    return TrainingPart(sorted(fit), sorted(val))


def predictable_patients(spec: ModelSpec, data: ModelData) -> list[str]:
    """The patients the model can predict: those with every modality in ``spec.needs``."""
    return [p for p in data.y.index if all(data.has(p, m, spec.columns) for m in spec.needs)]


@dataclass
class FoldOutput:
    """What fitting one spec on one (repeat, fold) gives: the job an engine runs (:func:`fit_fold`)."""

    repeat: int
    fold: int
    test: pd.DataFrame  # the test patients' rows (prrt.evaluate format)
    unlabelled: pd.Series | None  # the probabilities of the patients in no fold (index: pseudonym)
    val: list[str]  # the inner validation patients
    record: FitRecord
    permutation: pd.DataFrame | None = None
    impurity: pd.DataFrame | None = None
    model: object = None  # the fitted model, when asked for


def fit_fold(spec: ModelSpec, data: ModelData, fold, seed: int, unlabelled: list[str], progress: bool = False,
             keep_model: bool = False) -> FoldOutput:
    """Fit ``spec`` on the training part of one fold and predict its test patients (and the unlabelled) once.

    Everything random inside derives from :func:`fold_seed`, so a fold gives the same numbers
    wherever it runs (on one device type).
    """
    s = fold_seed(seed, fold.repeat, fold.fold)
    part = inner_split(fold.train, data.y, spec.val_fraction, s)
    if set(fold.test) & set(part.all) or set(part.all) != set(fold.train):
        raise AssertionError(f"repeat {fold.repeat}, fold {fold.fold}: the training part is not the fold's training set")
    model = spec.build(seed)
    record = model.fit(data, part, s, progress=progress, desc=f"r{fold.repeat} f{fold.fold}") or FitRecord()
    out = FoldOutput(fold.repeat, fold.fold, fold_test_rows(fold, model.predict(data, fold.test), data.y),
                     pd.Series(model.predict(data, unlabelled), index=unlabelled) if unlabelled else None,
                     part.val, record)
    if spec.permutation_repeats and hasattr(model, "permutation_importance"):
        out.permutation = model.permutation_importance(data, fold.test, spec.permutation_repeats, s)
    if hasattr(model, "impurity_importance"):
        out.impurity = model.impurity_importance()
    if keep_model:
        out.model = model
    return out


class Sequential:
    """The default engine: the fold jobs one after another in this process, with a progress bar."""

    def map(self, fn, jobs: list, data: ModelData, progress: bool = True, desc: str = "") -> list:
        from tqdm.auto import tqdm

        return [fn(job, data) for job in tqdm(jobs, desc=desc, unit="fold", disable=not progress)]


def cross_validate(spec: ModelSpec, data: ModelData, splits: pd.DataFrame, seed: int, run_dir=None,
                   progress: bool = True, keep_models: bool = False, engine=None) -> CVResult:
    """Fit ``spec`` on the training part of every repeat and fold of ``splits``; predict the test part once.

    Patients without a label are predicted by every fold model of a repeat (the mean is kept). With
    ``run_dir``, each fold's checkpoint and the learning curves go to ``checkpoints/<model>/``.
    ``engine`` runs the fold jobs (:class:`Sequential` by default; :mod:`prrt.parallel` spreads them
    over processes, GPUs or machines with the same results).
    """
    return collect(spec, fold_outputs([spec], data, splits, seed, progress, keep_models, engine)[spec.name],
                   run_dir)


def _check_inputs(spec: ModelSpec, data: ModelData, splits: pd.DataFrame) -> list[str]:
    """The unlabelled patients ``spec`` predicts; an error when a patient of the splits lacks its inputs."""
    if spec.build is None:
        raise ValueError(f"{spec.name} cannot run: {spec.reason}")
    in_splits = set(splits["patient"])
    available = predictable_patients(spec, data)
    missing = in_splits - set(available)
    if missing:
        raise ValueError(f"{spec.name}: {len(missing)} patients of the splits lack its inputs "
                         f"({', '.join(spec.needs)}), e.g. {sorted(missing)[:3]}")
    return [p for p in available if p not in in_splits]


def fold_outputs(specs: list[ModelSpec], data: ModelData, splits: pd.DataFrame, seed: int, progress: bool = True,
                 keep_models: bool = False, engine=None) -> dict[str, list[FoldOutput]]:
    """Every (model, repeat, fold) job of ``specs``, run by ``engine``; ``{model: outputs in fold order}``."""
    from functools import partial

    engine = engine or Sequential()
    folds = list(iter_folds(splits))
    jobs = [(spec, f, _check_inputs(spec, data, splits)) for spec in specs for f in folds]
    desc = specs[0].name if len(specs) == 1 else f"{len(specs)} models"
    # the jobs' own (epoch) progress bars only where they reach this terminal
    local = isinstance(engine, Sequential)
    outs = engine.map(partial(_run_job, seed=seed, keep_model=keep_models, progress=progress and local),
                      jobs, data, progress=progress, desc=desc)
    by_model = {spec.name: [] for spec in specs}
    for (spec, _, _), out in zip(jobs, outs):
        by_model[spec.name].append(out)
    return by_model


def _run_job(job, data: ModelData, seed: int, keep_model: bool, progress: bool) -> FoldOutput:
    spec, fold, unlabelled = job
    return fit_fold(spec, data, fold, seed, unlabelled, progress=progress, keep_model=keep_model)


def collect(spec: ModelSpec, outs: list[FoldOutput], run_dir=None) -> CVResult:
    """The :class:`CVResult` of one spec from its fold outputs; writes checkpoints and curves to ``run_dir``."""
    import torch

    preds, extra, curves, perm, imp, inner, models = [], {}, [], [], [], {}, {}
    unlabelled = []
    for out in outs:
        preds.append(out.test)
        if out.unlabelled is not None:
            unlabelled = list(out.unlabelled.index)
            extra.setdefault(out.repeat, []).append(out.unlabelled.to_numpy())
        inner[(out.repeat, out.fold)] = out.val
        if out.permutation is not None:
            perm.append(out.permutation.assign(repeat=out.repeat, fold=out.fold))
        if out.impurity is not None:
            imp.append(out.impurity.assign(repeat=out.repeat, fold=out.fold))
        record = out.record
        if record.curve is not None:
            curves.append(record.curve.assign(repeat=out.repeat, fold=out.fold,
                                              best=lambda d, b=record.best_epoch: d["epoch"] == b))
        if run_dir is not None and record.checkpoint is not None:
            ck = checkpoint_path(run_dir, spec.name, out.repeat, out.fold)
            ck.parent.mkdir(parents=True, exist_ok=True)
            torch.save(record.checkpoint, ck)
        if out.model is not None:
            models[(out.repeat, out.fold)] = out.model
    order = ["repeat", "fold", "feature", "importance"]
    curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    if run_dir is not None and curves:
        curves_df.to_csv(Path(run_dir) / "checkpoints" / spec.name / "curves.csv", index=False)
    return CVResult(spec.name, assemble_predictions(preds, unlabelled, extra), curves_df,
                    pd.concat(perm, ignore_index=True)[order] if perm else pd.DataFrame(),
                    pd.concat(imp, ignore_index=True)[order] if imp else pd.DataFrame(),
                    inner, list(spec.columns or []), models)


def run_models(specs: list[ModelSpec], data: ModelData, cohort, splits: pd.DataFrame, profile, seed: int, run_dir,
               progress: bool = True, keep_models: bool = False, engine=None) -> tuple[dict[str, CVResult], list[dict]]:
    """Cross-validate every spec that can run, write its predictions; return the results and summary rows.

    ``engine``: :class:`Sequential` (default) runs the models one after another; another engine
    (:mod:`prrt.parallel`) gets every (model, repeat, fold) job of the chapter at once.
    """
    from .evaluate import summarise
    from .results import skipped, write_predictions

    engine = engine or Sequential()
    runnable = [spec for spec in specs if spec.build is not None]
    # models that read other models' fold checkpoints (``requires``) wait until those are written:
    # each wave holds the models whose required models of this call have all been fitted
    results, pending = {}, list(runnable)
    while pending:
        waiting = {spec.name for spec in pending}
        wave = [spec for spec in pending if not set(spec.requires) & waiting]
        if not wave:
            raise ValueError(f"these models require each other in a circle: {sorted(waiting)}")
        pending = [spec for spec in pending if spec.name not in {w.name for w in wave}]
        if isinstance(engine, Sequential):  # one progress bar per model
            outs = {}
            for spec in wave:
                outs.update(fold_outputs([spec], data, splits, seed, progress, keep_models, engine))
        else:
            outs = fold_outputs(wave, data, splits, seed, progress, keep_models, engine)
        for spec in wave:
            results[spec.name] = res = collect(spec, outs[spec.name], run_dir)
            write_predictions(run_dir, spec.name, res.predictions)
    rows = []
    for spec in specs:
        if spec.build is None:
            rows.append(skipped(spec.name, spec.chapter, spec.inputs, spec.reason))
            continue
        rows.append({"model": spec.name, "chapter": spec.chapter, "inputs": spec.inputs, "status": "ran",
                     **summarise(results[spec.name].predictions, cohort, n_boot=profile.n_bootstrap, seed=seed)})
    results = {spec.name: results[spec.name] for spec in runnable}
    return results, rows
