"""What four thread and layout choices cost on the CPU (issue 29): the image layout of the CNNs, when batch norm is
recomputed, how many threads a small fusion network trains on, and how many BLAS threads scikit-learn gets.

Each variant runs a whole fit with :func:`prrt.learn.training.fit_network`, seeded, on the same synthetic data,
alternating with the others ``--rounds`` times (so that a busy neighbour slows all of them alike); the median
seconds per fit are printed as JSON.

* ``cnn``: one fold of the demo profile's CNN (the compact encoder, 2 × 32³ inputs, 77 fitting patients, its epochs
  and batch size, augmentation, no validation patients), with the images channels-last (the engine's choice) or
  contiguous, and batch norm recomputed once at the end (the engine's choice without validation patients) or after
  every epoch (as before; the weights are the same, see ``tests/learn/test_train.py``; here two validation
  patients make the engine do it, and predicting them adds about 1 %).
* ``mlp``: a network without convolutions of the size of a score-branch fusion (10 inputs, two hidden layers of 32,
  dropout), 150 epochs in batches of 64 over 77 patients, on one thread (the engine's choice) or on the process's.
* ``logistic regression``: :func:`prrt.learn.tabular.logistic_regression` (its inner 3-fold search over 10
  penalties) fitted to 40 patients and 8 columns, with numpy and scipy on one BLAS thread (what every chapter sets,
  :func:`prrt.learn.one_blas_thread`) or on two.

    python benchmarks/training_cost.py                 # prints JSON
    python benchmarks/training_cost.py --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time


def cnn_fit(channels_last: bool, bn_every_epoch: bool, seed: int = 1) -> float:
    import torch

    from prrt.learn import training
    from prrt.profiles import get_profile

    cfg = training.config_from_profile(get_profile("demo"))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(77, 2, 32, 32, 32, generator=g)
    y = (torch.rand(77, generator=g) > 0.6).numpy().astype(float)
    x_val, y_val = x[:0], y[:0]
    patches = contextlib.ExitStack()
    if not channels_last:
        patches.enter_context(_patched(training, "to_device", lambda t, device: t.to(device)))
        patches.enter_context(_patched(torch.nn.Module, "to", _to_without_layout(torch.nn.Module.to)))
    if bn_every_epoch:  # two validation patients make every epoch "validated" (predicting them costs ~1 %)
        x_val, y_val = x[:2], y[:2]
    with patches:
        t0 = time.perf_counter()
        training.train_model(x, y, x_val, y_val, cfg, seed=seed, progress=False)
        return time.perf_counter() - t0


def _to_without_layout(to):
    def patched(self, *args, **kwargs):
        kwargs.pop("memory_format", None)
        return to(self, *args, **kwargs)
    return patched


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def mlp_fit(one_thread: bool, seed: int = 1) -> float:
    import numpy as np
    import torch
    from torch import nn

    from prrt.learn import training

    g = torch.Generator().manual_seed(0)
    x = torch.randn(77, 10, generator=g)
    y = (torch.rand(77, generator=g) > 0.6).numpy().astype(float)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 32), nn.ReLU(),
                        nn.Dropout(0.3), nn.Linear(32, 1), nn.Flatten(0))
    cfg = training.TrainConfig(epochs=150, batch_size=64, lr=3e-3, weight_decay=1e-2, val_fraction=0.0)
    keep = contextlib.nullcontext() if one_thread else _patched(
        training, "threads_for", lambda model, device: contextlib.nullcontext())
    with keep:
        t0 = time.perf_counter()
        training.fit_network(net, y, np.zeros(0), cfg, seed, lambda idx, gen: (x[idx],), validate=lambda: np.zeros(0),
                             bn_forward=None, desc="mlp", progress=False)
        return time.perf_counter() - t0


def logistic_fit(blas_threads: int) -> float:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from prrt.learn.tabular import logistic_regression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    y = (x[:, 0] + rng.normal(size=40) > 0).astype(int)
    with threadpool_limits(blas_threads, user_api="blas"):
        t0 = time.perf_counter()
        logistic_regression(0).fit(x, y)
        return time.perf_counter() - t0


VARIANTS = {
    "cnn, channels-last, batch norm at the end (engine)": lambda: cnn_fit(True, False),
    "cnn, channels-last, batch norm every epoch": lambda: cnn_fit(True, True),
    "cnn, contiguous, batch norm every epoch (before)": lambda: cnn_fit(False, True),
    "mlp, one thread (engine)": lambda: mlp_fit(True),
    "mlp, the process's threads (before)": lambda: mlp_fit(False),
    "logistic regression, one BLAS thread (every chapter)": lambda: logistic_fit(1),
    "logistic regression, two BLAS threads (before, on 2 cores)": lambda: logistic_fit(2),
}


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    for run in VARIANTS.values():  # warm-up
        run()
    times = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, run in VARIANTS.items():
            times[name].append(run())
    print(json.dumps({"torch_threads": torch.get_num_threads(), "rounds": args.rounds,
                      "median_s": {k: round(statistics.median(v), 2) for k, v in times.items()},
                      "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
