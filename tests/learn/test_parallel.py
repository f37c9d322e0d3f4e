"""The parallel engine gives the sequential loop's results, file for file (on the CPU)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from prrt.evaluation import splits as sp
from prrt.learn import base, image_model, loop, tabular, training
from prrt.learn import engines as parallel


def _data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    y = pd.Series(np.r_[np.ones(11), np.zeros(n - 11), [np.nan]], index=[f"P{i:03d}" for i in range(n + 1)])
    X = pd.DataFrame({"a": rng.normal(size=n + 1) + y.fillna(0), "b": rng.normal(size=n + 1)}, index=y.index)
    x = torch.from_numpy(rng.random((n + 1, 1, 8, 8, 8)).astype(np.float32))
    x[np.flatnonzero(y.to_numpy() == 1), 0, 2:5, 2:5, 2:5] += 0.8
    return base.ModelData(y, table=X, images={"pet": base.ImageSet(x, list(y.index))}), y


def _same_predictions(spec, seq, other, tmp_path):
    """The predictions of ``spec`` from two engines' fold outputs, which must be equal to the last bit."""
    a = loop.collect(spec, seq[spec.name], tmp_path / "seq")
    b = loop.collect(spec, other[spec.name], tmp_path / "other")
    pd.testing.assert_frame_equal(a.predictions, b.predictions, check_exact=True)
    return a, b


def test_dask_engine_gives_the_sequential_results(tmp_path):
    data, y = _data()
    specs = [tabular.table_spec("lr", "02", "labs", ["a", "b"], lambda s: LogisticRegression()),
             image_model.image_spec("cnn", "pet", training.TrainConfig(epochs=2, batch_size=6), "03", "PET", available=True)]
    s = sp.make_splits(y.dropna(), 3, 2, 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each worker: torch's CPU sums depend on the thread count
    try:
        seq = loop.fold_outputs(specs, data, s, seed=4, progress=False)
    finally:
        torch.set_num_threads(threads)
    engine = parallel.DaskEngine("local", workers=2)
    try:
        assert engine.describe() == {"engine": "dask", "address": "local", "workers": 2}
        par = loop.fold_outputs(specs, data, s, seed=4, progress=False, engine=engine)
        # every worker imported the jobs' module before the data reached them (all at once, not one after the other)
        assert engine.imported == {"prrt.learn.loop"}
        assert set(engine.client.run(lambda: "prrt.learn.loop" in __import__("sys").modules).values()) == {True}
    finally:
        engine.close()
    for spec in specs:
        a, b = _same_predictions(spec, seq, par, tmp_path)
        assert a.inner_validation == b.inner_validation
        assert (a.predictions["fold"] == -1).sum() == 2  # the unlabelled patient, once per repeat
    for f in sorted((tmp_path / "seq" / "checkpoints" / "cnn").glob("*")):
        other = tmp_path / "other" / "checkpoints" / "cnn" / f.name
        if f.suffix == ".csv":
            assert other.read_bytes() == f.read_bytes()
        else:
            sa, sb = torch.load(f)["state_dict"], torch.load(other)["state_dict"]
            assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_split_engine_fits_one_core_models_on_workers_and_cnns_here_with_the_sequential_results(tmp_path):
    """``SplitEngine``: the scikit-learn models' jobs go to two worker processes, the CNN's stay in this process (with
    its threads), and every file is the sequential loop's; with fewer than two one-core jobs no worker starts."""
    from threadpoolctl import threadpool_limits

    data, y = _data()
    specs = [tabular.table_spec("lr", "02", "labs", ["a", "b"], lambda s: LogisticRegression()),
             tabular.table_spec("rf", "02", "labs", ["a", "b"], lambda s: tabular.random_forest(s, 20)),
             image_model.image_spec("cnn", "pet", training.TrainConfig(epochs=2, batch_size=6), "03", "PET", available=True)]
    s = sp.make_splits(y.dropna(), 3, 2, 0)
    with threadpool_limits(1, user_api="blas"):  # as every chapter has it (prrt.learn.one_blas_thread)
        seq = loop.fold_outputs(specs, data, s, seed=4, progress=False)
    engine = parallel.engine_from("split")
    try:
        assert engine.describe() == {"engine": "split", "workers": 2}
        only_cnn = loop.fold_outputs(specs[2:], data, s, seed=4, progress=False, engine=engine)
        assert engine.pool is None  # nothing to share out
        with threadpool_limits(1, user_api="blas"):
            split = loop.fold_outputs(specs, data, s, seed=4, progress=False, engine=engine)
    finally:
        engine.close()
    for spec in specs:
        _same_predictions(spec, seq, split, tmp_path)
        pids = {key[3] for out in split[spec.name] for key in out.timings}  # (chapter, model, phase, pid)
        assert (pids == {os.getpid()}) == (spec.name == "cnn"), (spec.name, pids)
    pd.testing.assert_frame_equal(loop.collect(specs[2], only_cnn["cnn"]).predictions,
                                  loop.collect(specs[2], seq["cnn"]).predictions, check_exact=True)


def test_engine_choice(monkeypatch):
    monkeypatch.delenv(parallel.ENV, raising=False)
    assert parallel.engine_from("") is None and parallel.engine_from("sequential") is None
    monkeypatch.setenv(parallel.ENV, "gpu-farm")  # what `prrt run --engine` passes to the kernels
    with pytest.raises(ValueError, match="not 'gpu-farm'"):
        parallel.engine_from()
    with pytest.raises(ValueError, match="engine must be 'local', 'local-cuda' or a scheduler address"):
        parallel.DaskEngine("gpu-farm")
