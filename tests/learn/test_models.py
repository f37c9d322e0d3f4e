"""`prrt.learn.run_models`: what a chapter's call writes and returns, checked against the parts it is made of."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from prrt.data.load import load_cohort
from prrt.evaluation import splits as sp
from prrt.evaluation.metrics import summarise
from prrt.evaluation.results import read_predictions
from prrt.learn import base, engines, image_model, loop, tabular, training
from prrt.profiles import get_profile


@pytest.fixture(scope="module")
def chapter(small_cohort_dir):
    """A cohort, its labs and tiny noise 'PET' images; a logistic regression, a skipped spec, a CNN."""
    cohort = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    ids = list(cohort.data.index)
    x = torch.from_numpy(np.random.default_rng(0).random((len(ids), 1, 8, 8, 6)).astype(np.float32))
    data = base.ModelData(cohort.data["label"], table=tabular.feature_table(cohort),
                            images={"pet": base.ImageSet(x, ids)})
    splits = sp.make_splits(cohort.data["label"], 3, 2, seed=3)
    # a plain logistic regression (the chapter's one tunes its penalty by an inner CV: slower, same loop)
    lab = tabular.table_spec("lab_lr", "02", "labs", list(cohort.labs),
                             lambda s: make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                                                       LogisticRegression()),
                             permutation_repeats=1)
    gone = base.ModelSpec("pet_thing", "02", "PET", None, reason="the manifest names no PET images")
    cnn = image_model.image_spec("tiny_cnn", "pet", training.TrainConfig(epochs=1, batch_size=8), "03", "PET", available=True)
    profile = replace(get_profile("smoke"), n_bootstrap=50)
    return cohort, data, splits, [lab, gone, cnn], profile


class Inline:
    """An engine that is not :class:`prrt.learn.engines.Sequential`: runs the jobs here and notes how it was called."""

    def __init__(self):
        self.calls = []

    def map(self, fn, jobs, data, progress=True, desc=""):
        self.calls.append((len(jobs), progress, desc))
        return [fn(job, data) for job in jobs]


def test_run_models_returns_and_writes_what_the_loop_and_summarise_give(chapter, tmp_path, capsys):
    cohort, data, splits, specs, profile = chapter
    results, rows = loop.run_models(specs, data, cohort, splits, profile, 8, tmp_path, progress=False)
    assert capsys.readouterr().err == ""
    assert list(results) == ["lab_lr", "tiny_cnn"]
    # the rows in the order of the specs; the skipped one says why
    assert [r["model"] for r in rows] == ["lab_lr", "pet_thing", "tiny_cnn"]
    assert rows[1] == {"model": "pet_thing", "chapter": "02", "inputs": "PET",
                       "status": "skipped: the manifest names no PET images"}
    for spec, row in [(specs[0], rows[0]), (specs[2], rows[2])]:
        alone = loop.cross_validate(spec, data, splits, 8, progress=False)
        res = results[spec.name]
        pd.testing.assert_frame_equal(res.predictions, alone.predictions)
        pd.testing.assert_frame_equal(res.permutation, alone.permutation)
        pd.testing.assert_frame_equal(res.curves, alone.curves)
        written = read_predictions(tmp_path, spec.name)
        np.testing.assert_allclose(written["probability"], res.predictions["probability"], rtol=0, atol=1e-12)
        assert list(written["patient"]) == list(res.predictions["patient"])
        expected = {"model": spec.name, "chapter": spec.chapter, "inputs": spec.inputs, "status": "ran",
                    **summarise(res.predictions, cohort, n_boot=50, seed=8)}
        assert list(row) == list(expected)
        for k, v in expected.items():
            assert row[k] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(row[k])), k
        assert row["n_patients_survival"] == len(cohort.data) and not math.isnan(row["c_index"])
        assert res.models == {}  # fold models are kept only when asked
    assert not (tmp_path / "predictions" / "pet_thing.csv").exists()
    # the CNN's checkpoints and learning curves go to the run folder
    ck = tmp_path / "checkpoints" / "tiny_cnn"
    assert sorted(p.name for p in ck.glob("*.pt")) == [f"r{r}_f{f}.pt" for r in range(2) for f in range(3)]
    curves = results["tiny_cnn"].curves
    assert curves.index.equals(pd.RangeIndex(6)) and len(curves) == 6  # one epoch per fold
    pd.testing.assert_frame_equal(pd.read_csv(ck / "curves.csv"), curves, check_dtype=False)
    assert results["tiny_cnn"].name == "tiny_cnn" and results["lab_lr"].features == list(cohort.labs)
    assert not (tmp_path / "checkpoints" / "lab_lr").exists()


def test_the_loop_times_each_models_fits_predictions_importances_and_statistics(chapter, tmp_path, monkeypatch):
    """prrt.timing: every fold job's phases under the model's name, once each, handed back through the engine."""
    from prrt import timing

    cohort, data, splits, specs, profile = chapter
    monkeypatch.setattr(timing, "_sums", {})
    monkeypatch.setenv(timing.ENV, str(tmp_path / "timings"))
    monkeypatch.setenv(timing.CHAPTER_ENV, "02_x.ipynb")
    engine = Inline()
    loop.run_models(specs, data, cohort, splits, profile, 8, tmp_path, progress=False, engine=engine)
    rows = timing.read_timings(tmp_path / "timings")
    calls = rows.set_index(["model", "phase"])["calls"].to_dict()
    assert calls == {("lab_lr", "training"): 6, ("lab_lr", "prediction"): 6, ("lab_lr", "importance"): 6,
                     ("lab_lr", "statistics"): 1, ("tiny_cnn", "training"): 6, ("tiny_cnn", "prediction"): 6,
                     ("tiny_cnn", "augmentation"): 6 * 2, ("tiny_cnn", "statistics"): 1}  # 2 batches a fold
    assert set(rows["chapter"]) == {"02_x.ipynb"} and (rows["wall_s"] > 0).all() and rows["in_notebook"].all()


def test_run_models_keeps_the_fold_models_when_asked_and_shows_one_bar_per_model(chapter, tmp_path, capsys):
    cohort, data, splits, specs, profile = chapter
    results, _ = loop.run_models([specs[0], specs[0].__class__(**{**specs[0].__dict__, "name": "lab_lr2"})],
                                   data, cohort, splits, profile, 8, tmp_path, keep_models=True)
    assert sorted(results["lab_lr"].models) == [(r, f) for r in range(2) for f in range(3)]
    err = capsys.readouterr().err  # progress bars by default, one per model, counting folds
    assert "lab_lr:" in err and "lab_lr2:" in err and "6/6" in err and "2 models" not in err
    assert re.search(r"fold/s|s/fold", err)


def test_another_engine_gets_every_job_of_the_chapter_at_once_with_the_same_results(chapter, tmp_path, capsys):
    cohort, data, splits, specs, profile = chapter
    engine = Inline()
    results, rows = loop.run_models(specs, data, cohort, splits, profile, 8, tmp_path / "a", engine=engine)
    assert engine.calls == [(12, True, "2 models")]
    assert "r0 f0" not in capsys.readouterr().err  # no epoch bars from jobs that may run elsewhere
    ref, ref_rows = loop.run_models(specs, data, cohort, splits, profile, 8, tmp_path / "b", progress=False)
    for name in ref:
        pd.testing.assert_frame_equal(results[name].predictions, ref[name].predictions)
    assert [r["status"] for r in rows] == [r["status"] for r in ref_rows]
    assert loop.run_models(specs, data, cohort, splits, profile, 8, tmp_path / "c", engine=engine,
                             progress=False)[0].keys() == ref.keys()
    assert engine.calls[-1] == (12, False, "2 models")


def test_the_engine_given_is_the_engine_used_and_keeps_the_models_when_asked(chapter, tmp_path):
    cohort, data, splits, specs, profile = chapter

    class Recording(engines.Sequential):  # a sequential engine of one's own (e.g. another progress display)
        calls = []

        def map(self, fn, jobs, data, progress=True, desc=""):
            self.calls.append(desc)
            return super().map(fn, jobs, data, progress, desc)

    engine = Recording()
    loop.run_models(specs, data, cohort, splits, profile, 8, tmp_path / "a", progress=False, engine=engine)
    assert engine.calls == ["lab_lr", "tiny_cnn"]  # one call per model, as the default engine
    results, _ = loop.run_models(specs[:1], data, cohort, splits, profile, 8, tmp_path / "b", progress=False,
                                   keep_models=True, engine=Inline())
    assert sorted(results["lab_lr"].models) == [(r, f) for r in range(2) for f in range(3)]


def test_run_models_without_a_runnable_spec_writes_nothing(chapter, tmp_path):
    cohort, data, splits, specs, profile = chapter
    for engine in (None, Inline()):
        results, rows = loop.run_models([specs[1]], data, cohort, splits, profile, 8, tmp_path, progress=False,
                                          engine=engine)
        assert results == {} and [r["status"] for r in rows] == ["skipped: the manifest names no PET images"]
        assert not (tmp_path / "predictions").exists()
    assert engine.calls == []


def test_cross_validate_defaults_and_the_engine_it_is_given(chapter, capsys):
    cohort, data, splits, specs, profile = chapter
    res = loop.cross_validate(specs[2], data, splits, 8)
    err = capsys.readouterr().err
    assert "tiny_cnn:" in err and "r0 f0" in err  # progress by default: the folds and each fold's epochs
    assert res.models == {}  # fold models only when asked
    loop.cross_validate(specs[2], data, splits, 8, progress=False)
    assert capsys.readouterr().err == ""
    engine = Inline()
    loop.cross_validate(specs[0], data, splits, 8, engine=engine)
    assert engine.calls == [(6, True, "lab_lr")]


def test_fit_fold_refuses_a_training_part_that_is_not_the_folds_training_set(chapter, monkeypatch, capsys):
    cohort, data, splits, specs, profile = chapter
    fold = next(sp.iter_folds(splits))
    loop.fit_fold(specs[2], data, fold, 8, [])
    assert capsys.readouterr().err == ""  # a fold alone trains quietly unless asked
    out = loop.fit_fold(specs[0], data, fold, 8, [])
    assert out.model is None and len(out.test) == len(fold.test)
    real = loop.inner_split
    for wrong in (lambda part: base.TrainingPart(part.fit[1:], part.val),  # a training patient left out
                  lambda part: base.TrainingPart(part.fit + fold.test[:1], part.val)):  # a test patient let in
        monkeypatch.setattr(loop, "inner_split", lambda *a, w=wrong: w(real(*a)))
        with pytest.raises(AssertionError, match=rf"repeat {fold.repeat}, fold {fold.fold}: the training part is "
                                                 "not the fold's training set"):
            loop.fit_fold(specs[0], data, fold, 8, [])


def test_a_model_that_needs_table_columns_predicts_the_patients_with_one_of_them(chapter):
    cohort, data, splits, specs, profile = chapter
    y = pd.Series([1.0, 0.0, 1.0], index=["A", "B", "C"])
    table = pd.DataFrame({"a": [1.0, np.nan, np.nan], "b": [np.nan, np.nan, 2.0]}, index=y.index)
    spec = base.ModelSpec("t", "02", "a", lambda s: None, needs=("table",), columns=["a"])
    assert loop.predictable_patients(spec, base.ModelData(y, table=table)) == ["A"]
    assert loop.predictable_patients(replace(spec, columns=["a", "b"]), base.ModelData(y, table=table)) == ["A", "C"]


def test_fold_outputs_defaults_show_progress_and_keep_no_model(chapter, capsys):
    cohort, data, splits, specs, profile = chapter
    outs = loop.fold_outputs([specs[0]], data, splits, 8)
    assert [o.model for o in outs["lab_lr"]] == [None] * 6
    assert "lab_lr:" in capsys.readouterr().err


def test_a_model_is_fitted_and_scored_on_the_patients_with_its_inputs_on_the_shared_splits(chapter, tmp_path):
    """A patient without a PET stays in the shared splits; the PET CNN leaves it out of its training and test patients,
    the summary counts whom it scored, and restoring its fold models finds the same training parts."""
    cohort, data, splits, specs, profile = chapter
    ids = list(data.y.index)
    no_pet = ids[:4]
    few = base.ModelData(data.y, table=data.table, images={"pet": base.ImageSet(data.images["pet"].x[4:], ids[4:])})
    results, rows = loop.run_models([specs[2]], few, cohort, splits, profile, 8, tmp_path, progress=False)
    pred = results["tiny_cnn"].predictions
    labelled_with_pet = set(data.y.dropna().index) - set(no_pet)
    assert pred[pred["fold"] >= 0].groupby("repeat")["patient"].apply(set).tolist() == [labelled_with_pet] * 2
    assert rows[0]["n_patients"] == len(labelled_with_pet)
    for fold, seen in zip(sp.iter_folds(splits), loop.folds_of(specs[2], few, sp.iter_folds(splits))):
        assert seen.train == [p for p in fold.train if p not in no_pet] and seen.test == [p for p in fold.test
                                                                                        if p not in no_pet]
    assert len(loop.restore_fold_models(specs[2], few, splits, 8, tmp_path)) == 6
    # a model that needs nothing sees the folds as they are
    assert loop.folds_of(replace(specs[2], needs=()), few, sp.iter_folds(splits)) == list(sp.iter_folds(splits))
    # a fold with no test patient left is an error that names it
    fold = next(sp.iter_folds(splits))
    none = base.ModelData(data.y, images={"pet": base.ImageSet(data.images["pet"].x[:0], [])})
    with pytest.raises(ValueError, match=re.escape(f"tiny_cnn: repeat {fold.repeat}, fold {fold.fold} has no training "
                                                   "patient with its inputs (pet)")):
        loop.fold_outputs([specs[2]], none, splits, 8, progress=False)
    keep = [i for i, p in enumerate(ids) if p not in set(fold.test)]  # a PET for every patient but the fold's test ones
    no_test = base.ModelData(data.y, images={"pet": base.ImageSet(data.images["pet"].x[keep], [ids[i] for i in keep])})
    with pytest.raises(ValueError, match=re.escape(f"tiny_cnn: repeat {fold.repeat}, fold {fold.fold} has no test "
                                                   "patient with its inputs (pet)")):
        loop.folds_of(specs[2], no_test, [fold])
    with pytest.raises(ValueError, match=re.escape("pet_thing cannot run: the manifest names no PET images")):
        loop.fold_outputs([specs[1]], data, splits, 8, progress=False)


def test_inner_split_reads_the_seed_modulo_2_to_the_32(chapter):
    cohort, data, splits, specs, profile = chapter
    train = list(next(sp.iter_folds(splits)).train)
    assert loop.inner_split(train, data.y, 0.2, 2**32 + 5) == loop.inner_split(train, data.y, 0.2, 5)


def test_training_part_digest_tells_parts_apart_and_ignores_order():
    a = base.TrainingPart(fit=["P1", "P2", "P3"], val=["P4"])
    assert a.digest() == base.TrainingPart(fit=["P3", "P1", "P2"], val=["P4"]).digest()
    others = [base.TrainingPart(fit=["P1", "P2", "P4"], val=["P3"]), base.TrainingPart(fit=["P1", "P2", "P3"], val=[]),
              base.TrainingPart(fit=["P1", "P2", "P3", "P4"], val=[]), base.TrainingPart(fit=["P1", "P2"], val=["P3", "P4"])]
    assert len({a.digest(), *[o.digest() for o in others]}) == 5
    sha = lambda text: __import__("hashlib").sha256(text).hexdigest()[:16]
    assert a.digest() == sha(b"fit:P1,P2,P3|val:P4")
    assert base.TrainingPart(fit=["P1"], val=["P3", "P2"]).digest() == sha(b"fit:P1|val:P2,P3")
    # the training patients together (how a fusion finds an image model of its fold): parts do not matter, a filter does
    assert a.patients_digest() == base.TrainingPart(fit=["P4", "P1"], val=["P2", "P3"]).patients_digest()
    assert a.patients_digest() == sha(b"all:P1,P2,P3,P4")
    assert a.patients_digest(lambda p: p != "P2") == sha(b"all:P1,P3,P4")


def test_run_models_fits_required_models_first_through_a_chain_and_refuses_a_circle(tmp_path):
    from prrt.learn import tabular

    rng = np.random.default_rng(0)
    y = pd.Series((np.arange(30) % 3 == 0).astype(float), index=[f"P{i:03d}" for i in range(30)])
    data = base.ModelData(y, table=pd.DataFrame({"a": rng.normal(size=30) + y}, index=y.index))
    s = sp.make_splits(y, 3, 1, 0)
    order = []

    def spec(name, *requires):
        def build(seed):
            order.append(name)
            return tabular.table_spec(name, "04", "a", ["a"], lambda s: LogisticRegression()).build(seed)
        return replace(tabular.table_spec(name, "04", "a", ["a"], None), build=build, requires=requires)

    class Profile:
        n_bootstrap = 10

    specs = [spec("c", "b"), spec("b", "a"), spec("a"), spec("d", "not_in_this_call")]
    results, rows = loop.run_models(specs, data, None, s, Profile(), 0, tmp_path)
    assert [order[i] for i in range(0, len(order), 3)] == ["a", "d", "b", "c"]  # three folds each
    assert list(results) == ["c", "b", "a", "d"] and [r["model"] for r in rows] == ["c", "b", "a", "d"]
    with pytest.raises(ValueError, match=r"require each other in a circle: \['x', 'y'\]"):
        loop.run_models([spec("x", "y"), spec("y", "x"), spec("z")], data, None, s, Profile(), 0, tmp_path)


def test_the_splits_table_counts_in_whole_numbers():
    import pandas as pd

    from prrt.evaluation.splits import make_splits, splits_table

    y = pd.Series([1] * 6 + [0] * 9, index=[f"P{i:03d}" for i in range(15)])

    class Cohort:
        data = pd.DataFrame({"label": y})

    table = splits_table(make_splits(y, 3, 2, seed=1), Cohort)
    assert table.loc["test patients"].map(type).eq(int).all() and table.loc["short PFS"].map(type).eq(int).all()
    assert table.loc["test patients"].sum() == 30 and table.loc["short PFS share"].iloc[0] == 0.4


def test_the_model_protocol_states_every_method_the_loop_calls():
    """`Model` lists fit, predict, features and restore, and every model class of prrt.learn has all four."""
    from prrt.learn.base import Model
    from prrt.learn.fusion import LateFusion
    from prrt.learn.image_model import ImageModel
    from prrt.learn.neural_fusion import NeuralFusion
    from prrt.learn.tabular import TableModel

    # ASCII names only: a mutation-testing tool adds its own (non-ASCII) copies of the methods to the class
    stated = {n for n in vars(Model) if n.isascii() and not n.startswith("_")}
    assert stated == {"fit", "predict", "features", "restore"}
    for cls in (TableModel, ImageModel, LateFusion, NeuralFusion):
        assert all(callable(getattr(cls, m, None)) for m in stated), cls
    with pytest.raises(NotImplementedError, match="no checkpoint"):
        TableModel(None, ["a"]).restore(None, None, {})


class Memoriser:
    """Predicts a training patient's own label (perfect memory) and 0.5 for anyone else; notes whom each fit saw
    (``fitted_on``: fold seed -> patients)."""

    def __init__(self, fitted_on: dict):
        self.fitted_on = fitted_on

    def fit(self, data, part, seed, progress=True, desc=""):
        self.seen = set(part.all)
        self.fitted_on[seed] = self.seen

    def predict(self, data, patients):
        return np.array([float(data.y[p]) * 0.98 + 0.01 if p in self.seen else 0.5 for p in patients])


def test_cross_fitted_scores_come_from_models_that_saw_neither_the_patient_nor_the_test_fold():
    """Every training patient of every outer fold gets one score, from a model fitted without that patient and
    without the fold's test patients; a memorising model cannot pass a label through it."""
    rng = np.random.default_rng(1)
    y = pd.Series((np.arange(36) % 3 == 0).astype(float), index=[f"P{i:03d}" for i in range(36)])
    data = base.ModelData(y, table=pd.DataFrame({"a": rng.normal(size=36)}, index=y.index))
    s = sp.make_splits(y, 3, 2, 0)
    fitted_on = {}
    spec = base.ModelSpec("memo", "04", "a", lambda seed: Memoriser(fitted_on), needs=("table",), columns=["a"])
    scores = loop.cross_fitted_scores(spec, data, s, seed=7, progress=False)
    assert len(fitted_on) == 2 * 3  # three pairs of folds per repeat, one model each
    assert set(scores.columns) == {"repeat", "fold_a", "fold_b", "patient", "logit"}
    for fold in sp.iter_folds(s):
        got = loop.training_score_of(scores, fold.repeat, fold.fold, fold.train)
        assert list(got.index) == fold.train
        # the memoriser never saw these patients: every score is its "don't know" (logit 0), so no label leaks
        np.testing.assert_allclose(got.to_numpy(), 0.0, atol=1e-9)
        with pytest.raises(ValueError, match=rf"no cross-fitted score of repeat {fold.repeat}, fold {fold.fold}"):
            loop.training_score_of(scores, fold.repeat, fold.fold, fold.test[:1])
    # each model left out its pair of folds, and the fold seeds are not those of the outer folds
    for f in sp.cross_fit_folds(s):
        a, b = sp.left_out_pair(f.fold)
        in_pair = set(s[(s["repeat"] == f.repeat) & s["fold"].isin([a, b])]["patient"])
        assert fitted_on[loop.fold_seed(7, f.repeat, f.fold)] == set(s[s["repeat"] == f.repeat]["patient"]) - in_pair
        assert f.fold not in (0, 1, 2)
    with pytest.raises(ValueError, match="needs at least 3 outer folds"):
        sp.cross_fit_folds(sp.make_splits(y, 2, 1, 0))
    with pytest.raises(ValueError, match="is an outer fold"):
        sp.left_out_pair(2)


def test_cross_fitting_a_single_outer_fold_uses_inner_folds_over_its_training_patients():
    """The external design (one outer fold, every other patient training only) has no pair of outer folds:
    each training patient is scored by a model fitted on the other two thirds of them, never on the test fold."""
    rng = np.random.default_rng(2)
    y = pd.Series((np.arange(45) % 3 == 0).astype(float), index=[f"P{i:03d}" for i in range(45)])
    data = base.ModelData(y, table=pd.DataFrame({"a": rng.normal(size=45)}, index=y.index))

    class Cohort:
        def __init__(self):
            self.data = pd.DataFrame({"label": y})

    external = list(y.index[-15:])
    s = sp.external_splits(Cohort(), external)
    folds = sp.cross_fit_folds(s, y, seed=3)
    assert [f.fold for f in folds] == [101, 102, 103] and [sp.left_out_pair(f.fold) for f in folds] == [(0, 1), (0, 2),
                                                                                                         (0, 3)]
    development = sorted(set(y.index) - set(external))
    assert sorted(p for f in folds for p in f.test) == development  # each development patient scored once
    for f in folds:
        assert not set(f.train) & (set(f.test) | set(external)) and sorted(f.train + f.test) == development
        assert y.loc[f.test].sum() in (3, 4)  # stratified: 10 short PFS among the 30
    assert [f.test for f in sp.cross_fit_folds(s, y, seed=3)] == [f.test for f in folds]  # same seed, same folds

    seen = {}
    spec = base.ModelSpec("memo", "06", "a", lambda seed: Memoriser(seen), needs=("table",), columns=["a"])
    scores = loop.cross_fitted_scores(spec, data, s, seed=3, progress=False)
    got = loop.training_score_of(scores, 0, 0, development)
    assert list(got.index) == development
    np.testing.assert_allclose(got.to_numpy(), 0.0, atol=1e-9)  # no model saw the patient it scored
    assert all(not (v & set(external)) for v in seen.values())
    with pytest.raises(ValueError, match="no cross-fitted score of repeat 0, fold 0"):
        loop.training_score_of(scores, 0, 0, external[:1])
    # the inner folds are those of the run's seed, stratified by the labels
    scored = scores.groupby("fold_b")["patient"].apply(sorted)
    assert [scored[sp.left_out_pair(f.fold)[1]] for f in folds] == [sorted(f.test) for f in folds]
    other = loop.cross_fitted_scores(spec, data, s, seed=4, progress=False).groupby("fold_b")["patient"].apply(sorted)
    assert list(other) != list(scored)


def test_cross_fitting_models_train_on_every_training_patient_without_importance_and_with_the_engine():
    """A cross-fitting model only scores: it fits on all its training patients (no inner validation part, whatever
    the spec's ``val_fraction``), computes no permutation importance, and its jobs go to the engine it is given."""
    y = pd.Series((np.arange(30) % 3 == 0).astype(float), index=[f"P{i:03d}" for i in range(30)])
    data = base.ModelData(y, table=pd.DataFrame({"a": np.arange(30.0)}, index=y.index))
    s = sp.make_splits(y, 3, 1, 0)
    parts, importance = [], []

    class Recorder:
        def fit(self, data, part, seed, progress=True, desc=""):
            parts.append((sorted(part.fit), sorted(part.val)))

        def predict(self, data, patients):
            return np.full(len(patients), 0.4)

        def permutation_importance(self, data, patients, repeats, seed):
            importance.append(repeats)
            return pd.DataFrame({"feature": ["a"], "importance": [0.0]})

    spec = base.ModelSpec("rec", "04", "a", lambda seed: Recorder(), needs=("table",), columns=["a"],
                          val_fraction=0.5, permutation_repeats=3)
    engine = Inline()
    loop.cross_fitted_scores(spec, data, s, seed=2, progress=False, engine=engine)
    folds = sp.cross_fit_folds(s, y, 2)
    assert engine.calls == [(3, False, "rec")] and len(folds) == 3
    assert parts == [(sorted(f.train), []) for f in folds]
    assert importance == []


def test_cross_fitted_scores_show_progress_clip_certain_probabilities_and_number_their_rows(capsys):
    y = pd.Series((np.arange(30) % 3 == 0).astype(float), index=[f"P{i:03d}" for i in range(30)])
    data = base.ModelData(y, table=pd.DataFrame({"a": np.arange(30.0)}, index=y.index))
    s = sp.make_splits(y, 3, 1, 0)

    class Certain:
        """Probability exactly 0 or 1 (from the patient's number)."""

        def fit(self, data, part, seed, progress=True, desc=""):
            pass

        def predict(self, data, patients):
            return np.array([float(int(p[1:]) % 2) for p in patients])

    spec = base.ModelSpec("certain", "04", "a", lambda seed: Certain(), needs=("table",), columns=["a"])
    scores = loop.cross_fitted_scores(spec, data, s, seed=1)
    assert "certain" in capsys.readouterr().err  # a progress bar by default
    bound = np.log((1 - 1e-6) / 1e-6)
    np.testing.assert_allclose(sorted(set(np.round(scores["logit"], 6))), [-round(bound, 6), round(bound, 6)])
    assert list(scores.index) == list(range(len(scores)))
    fold = next(sp.iter_folds(s))
    with pytest.raises(ValueError) as err:
        loop.training_score_of(scores, fold.repeat, fold.fold, fold.test[:5])
    assert str(err.value).count("'P") == 3  # three examples named, not more


def test_logit_is_computed_in_double_precision_and_clipped():
    """A CNN's probabilities arrive as float32: their log-odds (stacked by the late fusion, written beside the
    predictions) are computed in float64, and certain ones stay finite."""
    from prrt.learn.base import logit

    p32 = np.array([0.3, 0.7, 0.123456789, 0.0, 1.0], dtype=np.float32)
    out = logit(p32)
    p = np.clip(p32.astype(np.float64), 1e-6, 1 - 1e-6)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, np.log(p / (1 - p)), rtol=1e-14, atol=0)
    assert np.isfinite(out).all() and out[3] == pytest.approx(np.log(1e-6 / (1 - 1e-6)))
