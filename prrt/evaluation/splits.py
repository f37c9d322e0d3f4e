"""Cross-validation splits shared by every model of a run.

Repeated stratified k-fold at patient level (scikit-learn's ``RepeatedStratifiedKFold``, :func:`make_splits`),
k = 3 as in the study; the number of repeats comes from the profile, the seed from the run. The splits are
made once per run (:func:`ensure_splits`) and saved to ``<run_dir>/splits.csv`` with one row per labelled
patient and repeat:

=========  =====================================================================
patient    pseudonym
repeat     0 … n_repeats − 1
fold       0 … k − 1: the fold in which the patient is in the *test* part; −1
           (:data:`TRAINING_ONLY`): in the training part of every fold and in no test
           part (external validation: the development cohort, :func:`external_splits`)
=========  =====================================================================

Every model of every later notebook reads this file back (:func:`load_splits`), so that all models
are compared on exactly the same test folds, which paired tests require. :func:`iter_folds` yields each
repeat and fold as a :class:`Fold` (its training and test patients).

Patients without a label (censored before the horizon) are in no fold: they never train a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, RepeatedStratifiedKFold, StratifiedKFold

SPLITS_FILE = "splits.csv"

#: The ``fold`` of a patient who only ever trains (external validation's development cohort).
TRAINING_ONLY = -1


def make_splits(labels: pd.Series, n_folds: int, n_repeats: int, seed: int) -> pd.DataFrame:
    """Repeated stratified k-fold assignment of the labelled patients in ``labels`` (index = pseudonym)."""
    labels = labels.dropna().sort_index()
    y = labels.to_numpy().astype(int)
    counts = np.bincount(y, minlength=2)
    if counts.min() < n_folds:
        raise ValueError(f"stratified {n_folds}-fold cross-validation needs at least {n_folds} patients "
                         f"in each class; have {counts[1]} short-PFS and {counts[0]} long-PFS")
    cv = RepeatedStratifiedKFold(n_splits=n_folds, n_repeats=n_repeats, random_state=seed)
    rows = []
    for i, (_, test) in enumerate(cv.split(np.zeros(len(y)), y)):
        repeat, fold = divmod(i, n_folds)
        rows += [(p, repeat, fold) for p in labels.index[test]]
    return pd.DataFrame(rows, columns=["patient", "repeat", "fold"]).sort_values(
        ["repeat", "patient"], ignore_index=True)


@dataclass(frozen=True)
class Fold:
    """One (repeat, fold): the patients that train and the patients that are tested."""

    repeat: int
    fold: int
    train: list[str]
    test: list[str]

    def __post_init__(self):
        if set(self.train) & set(self.test):
            raise ValueError(f"repeat {self.repeat}, fold {self.fold}: a patient is in training and test")


def iter_folds(splits: pd.DataFrame):
    """Yield :class:`Fold` for every repeat and fold, in order (patients of :data:`TRAINING_ONLY` train in each)."""
    for (repeat, fold), _ in splits.groupby(["repeat", "fold"], sort=True):
        if fold == TRAINING_ONLY:
            continue
        in_repeat = splits[splits["repeat"] == repeat]
        test = sorted(in_repeat.loc[in_repeat["fold"] == fold, "patient"])
        train = sorted(in_repeat.loc[in_repeat["fold"] != fold, "patient"])
        yield Fold(int(repeat), int(fold), train, test)


#: The fold number of the cross-fitting fold that leaves out outer folds ``a < b``: ``PAIR_BASE + 10 a + b``
#: (distinct from every outer fold, so that :func:`prrt.learn.fold_seed` gives it a seed of its own).
PAIR_BASE = 100


#: Inner folds over the training-only patients when a design has a single outer fold (external validation).
SINGLE_FOLD_INNER = 3


def cross_fit_folds(splits: pd.DataFrame, y: pd.Series | None = None, seed: int = 0) -> list[Fold]:
    """The folds that give every training patient of every outer fold a score from a model that saw neither that
    patient nor the outer fold's test patients (cross-fitting aligned with the outer split).

    For each repeat and each pair of outer folds ``a < b``: train on the patients of the other folds (and those of
    :data:`TRAINING_ONLY`), test on the patients of ``a`` and ``b``. A patient ``p`` of fold ``b`` who trains in
    outer fold ``a`` is scored by the model of pair ``(a, b)``, which never saw ``p`` nor fold ``a``. With ``k``
    outer folds that is ``k (k - 1) / 2`` models per repeat, each on ``k - 2`` folds (3 models on one fold each for
    3-fold CV), shared by two outer folds. Fold numbers: :data:`PAIR_BASE` ``+ 10 a + b``.

    A repeat with a single outer fold ``a`` and training-only patients (the external design,
    :func:`external_splits`) has no second outer fold to pair with: its training-only patients are split into
    :data:`SINGLE_FOLD_INNER` folds (stratified by ``y`` where given, from ``seed``), and the model of inner fold
    ``b`` (numbered 1, 2, ...) trains on the other inner folds and scores fold ``b``: pair ``(a, b)``, again a model
    that saw neither the patient nor fold ``a``.
    """
    out = []
    for repeat, in_repeat in splits.groupby("repeat", sort=True):
        folds = sorted(f for f in in_repeat["fold"].unique() if f != TRAINING_ONLY)
        if len(folds) == 1 and (in_repeat["fold"] == TRAINING_ONLY).any():
            out += _single_fold_pairs(int(repeat), int(folds[0]), in_repeat, y, seed)
            continue
        if len(folds) < 3:
            raise ValueError(f"cross-fitting needs at least 3 outer folds (repeat {repeat} has {len(folds)}): with "
                             "2, nothing is left to train on once both are left out")
        if max(folds) > 9:
            raise ValueError(f"cross-fitting numbers pairs of folds with one digit each; repeat {repeat} has "
                             f"{len(folds)} folds")
        for i, a in enumerate(folds):
            for b in folds[i + 1:]:
                left_out = in_repeat["fold"].isin([a, b])
                out.append(Fold(int(repeat), PAIR_BASE + 10 * int(a) + int(b),
                                sorted(in_repeat.loc[~left_out, "patient"]), sorted(in_repeat.loc[left_out, "patient"])))
    return out


def _single_fold_pairs(repeat: int, a: int, in_repeat: pd.DataFrame, y: pd.Series | None, seed: int) -> list[Fold]:
    """The cross-fitting folds of a repeat with one outer fold ``a``: inner folds over its training-only patients."""
    if a > 9:
        raise ValueError(f"cross-fitting numbers pairs of folds with one digit each; the outer fold is {a}")
    train = sorted(in_repeat.loc[in_repeat["fold"] == TRAINING_ONLY, "patient"])
    if len(train) < 2 * SINGLE_FOLD_INNER:
        raise ValueError(f"cross-fitting needs at least {2 * SINGLE_FOLD_INNER} training patients, not {len(train)}")
    labels = None if y is None else y.loc[train].astype(int).to_numpy()
    cv = (StratifiedKFold if labels is not None else KFold)(SINGLE_FOLD_INNER, shuffle=True,
                                                              random_state=(seed + repeat) % 2**32)
    out = []
    for b, (rest, held) in enumerate(cv.split(np.zeros(len(train)), labels), start=1):
        out.append(Fold(repeat, PAIR_BASE + 10 * a + b, [train[i] for i in rest], [train[i] for i in held]))
    return out


def left_out_pair(fold: int) -> tuple[int, int]:
    """The two outer folds a cross-fitting fold (:func:`cross_fit_folds`) leaves out."""
    if fold < PAIR_BASE:
        raise ValueError(f"fold {fold} is an outer fold, not a cross-fitting fold")
    return divmod(fold - PAIR_BASE, 10)


def save_splits(splits: pd.DataFrame, run_dir) -> Path:
    path = Path(run_dir) / SPLITS_FILE
    splits.to_csv(path, index=False)
    return path


def load_splits(run_dir, cohort=None) -> pd.DataFrame:
    """Read ``splits.csv`` of a run; with ``cohort``, check that it belongs to that cohort's labels."""
    path = Path(run_dir) / SPLITS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the splits are made by the first model chapter "
                                "(notebooks/02_lab_random_forest.ipynb); run the notebooks in order")
    splits = pd.read_csv(path, dtype={"patient": str, "repeat": int, "fold": int})
    if cohort is not None:
        labelled = set(cohort.labelled.index)
        in_splits = set(splits["patient"])
        if in_splits != labelled:
            raise ValueError(f"{path} does not match the cohort: {len(in_splits - labelled)} patients in the "
                             f"splits are not labelled in the cohort, {len(labelled - in_splits)} labelled "
                             "patients are missing from the splits")
    return splits


def ensure_splits(cohort, profile, seed: int, run_dir) -> pd.DataFrame:
    """The run's splits: read back if this run already made them, else made from the profile and seed."""
    path = Path(run_dir) / SPLITS_FILE
    if path.is_file():
        return load_splits(run_dir, cohort)
    splits = make_splits(cohort.data["label"], profile.n_folds, profile.n_repeats, seed)
    save_splits(splits, run_dir)
    return splits


def mean_training_patients(splits: pd.DataFrame) -> int:
    """Training patients per fold, averaged over every repeat and fold (rounded)."""
    folds = list(iter_folds(splits))
    return int(round(sum(len(f.train) for f in folds) / len(folds))) if folds else 0


def splits_table(splits: pd.DataFrame, cohort) -> pd.DataFrame:
    """:func:`describe_splits` for the book: one column per (repeat, fold), counts as whole numbers."""
    return describe_splits(splits, cohort).astype(object).T


def describe_splits(splits: pd.DataFrame, cohort) -> pd.DataFrame:
    """Test-part size and short-PFS count of every repeat and fold (a check of the stratification)."""
    d = splits.join(cohort.data["label"], on="patient")
    g = d.groupby(["repeat", "fold"])["label"]
    return pd.DataFrame({"test patients": g.size(), "short PFS": g.sum().astype(int),
                         "short PFS share": g.mean().round(2)})


def external_splits(cohort, external: list[str]) -> pd.DataFrame:
    """The external design in the format of ``splits.csv``: repeat 0 has one test fold (fold 0), the
    labelled patients of ``external``; every other labelled patient only trains (:data:`TRAINING_ONLY`)."""
    ext = set(external)
    labelled = cohort.data["label"].dropna().sort_index()
    rows = [(p, 0, 0 if p in ext else TRAINING_ONLY) for p in labelled.index]
    splits = pd.DataFrame(rows, columns=["patient", "repeat", "fold"])
    if not (splits["fold"] == 0).any() or not (splits["fold"] == TRAINING_ONLY).any():
        raise ValueError("external validation needs labelled patients in both cohorts")
    return splits


# ---- the test patients of each fold ---------------------------------------------------------------------------
def fold_tests(splits: pd.DataFrame) -> dict:
    return {(f.repeat, f.fold): f.test for f in iter_folds(splits)}
