"""The one cross-validation loop of every model of the book, and a run's fold models taken up again.

:func:`cross_validate` runs one spec over the saved splits: for every repeat and fold it draws the
inner validation part from the training patients only (:func:`inner_split`), builds and fits a fresh
model, predicts the test fold once (and the unlabelled patients, who are in no fold), and collects the
predictions in the format of :mod:`prrt.evaluation.metrics`, the learning curves and, for a spec that
asks for them, permutation importances on the held-out fold. :func:`run_models` does that for a
chapter's specs, writes ``predictions/<model>.csv``, checkpoints and curves, and returns the summary
rows; a spec whose inputs the manifest lacks becomes a ``skipped`` row with its reason, and a spec that
``requires`` other models' fold checkpoints is fitted after them.

A patient without a model's inputs (a PET CNN's PET) is left out of that model's training and test patients
(:func:`folds_of`): the splits stay shared, each single-image model is fitted and scored on the patients
with its image, and the fusions, which need no one modality, predict every patient.

Seeds: the model of (repeat r, fold k) is fitted with ``seed + 1000 r + k`` (:func:`fold_seed`); the
inner validation part is drawn with the same number.

Each (model, repeat, fold) is one job (:func:`fit_fold`) that depends on nothing but the data, the
spec and the seed. An *engine* runs the jobs (:mod:`prrt.learn.engines`): ``Sequential`` (the default)
one after another in this process, ``DaskEngine`` over processes, GPUs or machines. The results are
gathered in fold order, so the files a run writes do not depend on the engine.

:func:`restore_fold_models` takes up the fold models of a run from their checkpoints
(:func:`checkpoint_path`: ``checkpoints/<model>/r{repeat}_f{fold}.pt``) and checks that they give the
run's predictions again, so that an explanation is of the model whose results the book reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation import (
    Fold,
    assemble_predictions,
    cross_fit_folds,
    fold_test_rows,
    iter_folds,
    left_out_pair,
    read_predictions,
    skipped,
    summarise,
    write_predictions,
)
from ..timing import capture, merge, phase
from .base import FitRecord, ModelData, ModelSpec, TrainingPart, logit
from .engines import Sequential


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


    if tolerance is None:
        tolerance = 2e-2 if torch.cuda.is_available() else 1e-4

    if spec.build is None:
        raise ValueError(f"{spec.name} did not run: {spec.reason}")
    saved = read_predictions(run_dir, spec.name) if check else None
    out = {}
    for fold in folds_of(spec, data, iter_folds(splits)):
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
                             f"{fold.repeat}, fold {fold.fold} of this run: another split or seed, or another share held out "
                             f"for inner validation (the profile's val_fraction, {spec.val_fraction:g} now)")
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
    return data.with_all(data.y.index, spec.needs, spec.columns)


@dataclass
class FoldOutput:
    """What fitting one spec on one (repeat, fold) gives: the job an engine runs (:func:`fit_fold`)."""

    repeat: int
    fold: int
    test: pd.DataFrame  # the test patients' rows (prrt.evaluation format)
    unlabelled: pd.Series | None  # the probabilities of the patients in no fold (index: pseudonym)
    val: list[str]  # the inner validation patients
    record: FitRecord
    permutation: pd.DataFrame | None = None
    impurity: pd.DataFrame | None = None
    model: object = None  # the fitted model, when asked for
    timings: dict | None = None  # the phases of the job (:func:`prrt.timing.capture`), wherever it ran


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
    with phase("training", model=spec.name):
        record = model.fit(data, part, s, progress=progress, desc=f"r{fold.repeat} f{fold.fold}") or FitRecord()
    with phase("prediction", model=spec.name):
        out = FoldOutput(fold.repeat, fold.fold, fold_test_rows(fold, model.predict(data, fold.test), data.y),
                         pd.Series(model.predict(data, unlabelled), index=unlabelled) if unlabelled else None,
                         part.val, record)
    if spec.permutation_repeats and hasattr(model, "permutation_importance"):
        with phase("importance", model=spec.name):
            out.permutation = model.permutation_importance(data, fold.test, spec.permutation_repeats, s)
    if hasattr(model, "impurity_importance"):
        out.impurity = model.impurity_importance()
    if keep_model:
        out.model = model
    return out


def cross_validate(spec: ModelSpec, data: ModelData, splits: pd.DataFrame, seed: int, run_dir=None,
                   progress: bool = True, keep_models: bool = False, engine=None) -> CVResult:
    """Fit ``spec`` on the training part of every repeat and fold of ``splits``; predict the test part once.

    Patients without a label are predicted by every fold model of a repeat (the mean is kept). With
    ``run_dir``, each fold's checkpoint and the learning curves go to ``checkpoints/<model>/``.
    ``engine`` runs the fold jobs (:class:`Sequential` by default; :class:`prrt.learn.engines.DaskEngine`
    spreads them over processes, GPUs or machines with the same results).
    """
    return collect(spec, fold_outputs([spec], data, splits, seed, progress, keep_models, engine)[spec.name],
                   run_dir)


def _check_inputs(spec: ModelSpec, data: ModelData, splits: pd.DataFrame) -> list[str]:
    """The unlabelled patients ``spec`` predicts (those in no fold that have its inputs)."""
    if spec.build is None:
        raise ValueError(f"{spec.name} cannot run: {spec.reason}")
    in_splits = set(splits["patient"])
    return [p for p in predictable_patients(spec, data) if p not in in_splits]


def folds_of(spec: ModelSpec, data: ModelData, folds) -> list:
    """The folds as ``spec`` sees them: a patient without its inputs (``spec.needs``: a patient without a PET for a
    PET CNN) is left out of its training and test patients, so a single-image model is fitted and scored on the
    patients with that image while the shared splits stay those of every model. An error names the fold where
    no test or no training patient is left."""
    if not spec.needs:
        return list(folds)
    able = set(predictable_patients(spec, data))
    out = []
    for f in folds:
        train, test = [p for p in f.train if p in able], [p for p in f.test if p in able]
        for what, kept in (("training", train), ("test", test)):
            if not kept:
                raise ValueError(f"{spec.name}: repeat {f.repeat}, fold {f.fold} has no {what} patient with its inputs "
                                 f"({', '.join(spec.needs)})")
        out.append(Fold(f.repeat, f.fold, train, test))
    return out


def fold_outputs(specs: list[ModelSpec], data: ModelData, splits: pd.DataFrame, seed: int, progress: bool = True,
                 keep_models: bool = False, engine=None, folds=None) -> dict[str, list[FoldOutput]]:
    """Every (model, repeat, fold) job of ``specs``, run by ``engine``; ``{model: outputs in fold order}``.

    ``folds``: the folds to fit (default: those of ``splits``; :func:`cross_fitted_scores` gives its own)."""
    from functools import partial

    engine = engine or Sequential()
    folds = list(iter_folds(splits)) if folds is None else list(folds)
    jobs = []
    for spec in specs:  # the unlabelled patients and the spec's view of the folds, once per spec
        unlabelled = _check_inputs(spec, data, splits)
        jobs += [(spec, f, unlabelled) for f in folds_of(spec, data, folds)]
    desc = specs[0].name if len(specs) == 1 else f"{len(specs)} models"
    # the jobs' own (epoch) progress bars only where they reach this terminal
    local = isinstance(engine, Sequential)
    outs = engine.map(partial(_run_job, seed=seed, keep_model=keep_models, progress=progress and local),
                      jobs, data, progress=progress, desc=desc)
    by_model = {spec.name: [] for spec in specs}
    for (spec, _, _), out in zip(jobs, outs):
        merge(out.timings)
        by_model[spec.name].append(out)
    return by_model


def cross_fitted_scores(spec: ModelSpec, data: ModelData, splits: pd.DataFrame, seed: int, progress: bool = True,
                        engine=None) -> pd.DataFrame:
    """Each training patient's score from a model of ``spec`` that saw neither that patient nor the test fold.

    Fits ``spec`` on the cross-fitting folds of ``splits`` (:func:`prrt.evaluation.cross_fit_folds`: for each
    repeat and pair of outer folds, the other folds train and the pair is predicted) through the same fold jobs as
    :func:`cross_validate` (with a single outer fold, as in external validation, inner folds over its training
    patients instead of pairs), each model fitted on all its training patients (no inner validation part). Rows:
    ``repeat``, ``fold_a``, ``fold_b`` (the pair left out), ``patient`` and
    ``logit`` (of the prior-corrected probability: the correction only shifts every logit of a model by one
    constant). A fusion reads the score of training patient ``p`` (outer fold ``b``) in outer fold ``a`` from the
    row of pair ``(a, b)``: a stacked input free of ``p``'s label and of the test fold's (:func:`training_score_of`).
    """
    folds = cross_fit_folds(splits, data.y, seed)
    # no inner validation part: these models only score, and each trains on fewer patients than a fold model
    spec = replace(spec, val_fraction=0.0, permutation_repeats=0)
    outs = fold_outputs([spec], data, splits, seed, progress, False, engine, folds=folds)[spec.name]
    parts = []
    for out in outs:
        a, b = left_out_pair(out.fold)
        parts.append(pd.DataFrame({"repeat": out.repeat, "fold_a": a, "fold_b": b,
                                   "patient": out.test["patient"].to_numpy(), "logit": logit(out.test["probability"])}))
    return pd.concat(parts, ignore_index=True)


def training_score_of(scores: pd.DataFrame, repeat: int, fold: int, patients: list[str]) -> pd.Series:
    """The cross-fitted scores (:func:`cross_fitted_scores`) of training ``patients`` of outer ``fold`` in
    ``repeat``: each from the model that left out that fold and the patient's own. An error names a patient with
    no such score (a test patient of ``fold``, or another split)."""
    rows = scores[(scores["repeat"] == repeat) & ((scores["fold_a"] == fold) | (scores["fold_b"] == fold))]
    rows = rows[rows["patient"].isin(patients)]
    # a patient of fold ``fold`` itself is in the test part of every pair with it: it has no training score
    rows = rows[~rows.duplicated("patient", keep=False)]
    found = rows.set_index("patient")["logit"]
    missing = [p for p in patients if p not in found.index]
    if missing:
        raise ValueError(f"no cross-fitted score of repeat {repeat}, fold {fold} for {len(missing)} training patients "
                         f"(e.g. {missing[:3]}): a test patient of that fold, or scores of another split")
    return found.loc[list(patients)]


def _run_job(job, data: ModelData, seed: int, keep_model: bool, progress: bool) -> FoldOutput:
    spec, fold, unlabelled = job
    with capture() as timings:  # handed back with the results: the job may run in another process
        out = fit_fold(spec, data, fold, seed, unlabelled, progress=progress, keep_model=keep_model)
    out.timings = timings
    return out


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
    (:class:`prrt.learn.engines.DaskEngine`) gets every (model, repeat, fold) job of the chapter at once.
    """
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
        with phase("statistics", model=spec.name):
            rows.append({"model": spec.name, "chapter": spec.chapter, "inputs": spec.inputs, "status": "ran",
                         **summarise(results[spec.name].predictions, cohort, n_boot=profile.n_bootstrap, seed=seed)})
    results = {spec.name: results[spec.name] for spec in runnable}
    return results, rows
