"""Engines that run a chapter's (model, repeat, fold) jobs: one after another, or in parallel with Dask.

By default every job runs in the notebook's own process, one after another (:class:`Sequential`).
With ``prrt run --engine ADDRESS`` (which reaches the notebooks' kernels as the environment variable
``PRRT_ENGINE``, :data:`ENV`; :func:`engine_from` reads it) the jobs go to a Dask cluster instead
(:class:`DaskEngine`):

``local``
    worker processes on this machine (``--workers N``, default 2), one thread each;
``local-cuda``
    one worker per GPU of this machine (dask-cuda's ``LocalCUDACluster`` pins each worker to one GPU
    through ``CUDA_VISIBLE_DEVICES``; ``pip install dask-cuda``);
``split``
    the one-core jobs (scikit-learn models, the fusions' small networks) on worker processes of this machine
    (``--workers N``, default 2), the CNNs in the notebook's process (:class:`SplitEngine`; the ``demo`` profile's
    default, :attr:`prrt.profiles.Profile.engine`);
``tcp://host:8786`` (or ``tls://``)
    a running scheduler with workers on any number of machines (``dask scheduler`` on one machine,
    ``dask worker tcp://host:8786 --nthreads 1`` or ``dask cuda worker tcp://host:8786`` on each).

The data of the chapter is sent to every worker once; each job then trains one model on one fold
and returns its predictions, curve and checkpoint, which the notebook gathers in fold order and
writes exactly as the sequential loop would. Every job seeds itself from the run's seed, the
repeat and the fold (:func:`prrt.learn.fold_seed`). On the CPU the files are byte-identical to a
sequential run with the same number of threads per process (a test checks it with one thread each;
torch's CPU kernels add up in an order that depends on the thread count, so a sequential run on
more threads differs in the sixth decimal); on GPUs they agree up to the non-determinism of cuDNN.
"""

from __future__ import annotations

import importlib
import os

from .base import ModelData


class Sequential:
    """The default engine: the fold jobs one after another in this process, with a progress bar."""

    def map(self, fn, jobs: list, data: ModelData, progress: bool = True, desc: str = "") -> list:
        from tqdm.auto import tqdm

        return [fn(job, data) for job in tqdm(jobs, desc=desc, unit="fold", disable=not progress)]


ENV = "PRRT_ENGINE"  # how `prrt run --engine` reaches the notebooks' kernels


class SplitEngine:
    """The jobs of one-core models (``ModelSpec.one_core``: scikit-learn models, the fusions' small networks) on
    ``workers`` single-thread worker processes of this machine, several at a time; the others (the CNNs, which use
    every thread of this process) here, one after another, while the workers work.

    A one-core job runs on one thread either way (:func:`prrt.learn.training.threads_for` gives a network without
    convolutions one torch thread, :func:`prrt.learn.one_blas_thread` numpy one BLAS thread, and Dask starts its
    workers with one), and a CNN here has this process's threads either way, so the files are those of
    :class:`Sequential`. The workers start on the first call with at least two one-core jobs; with fewer,
    everything runs here.
    """

    def __init__(self, workers: int = 2):
        self.workers, self.pool = workers, None

    def map(self, fn, jobs: list, data: ModelData, progress: bool = True, desc: str = "") -> list:
        light = [i for i, job in enumerate(jobs) if getattr(job[0], "one_core", False)]
        if len(light) < 2:
            return Sequential().map(fn, jobs, data, progress, desc)
        heavy = sorted(set(range(len(jobs))) - set(light))
        if self.pool is None:
            self.pool = DaskEngine("local", self.workers)
        # the one-core jobs go to the workers first, so that they fill what the CNNs here leave of the cores
        futures = self.pool.submit(fn, [jobs[i] for i in light], data)
        out = dict(zip(heavy, Sequential().map(fn, [jobs[i] for i in heavy], data, progress, desc)))
        out.update(zip(light, self.pool.collect(futures, progress, desc)))
        return [out[i] for i in range(len(jobs))]

    def describe(self) -> dict:
        return {"engine": "split", "workers": self.workers}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


class DaskEngine:
    """Runs jobs on a Dask cluster (see the module docstring for ``address``)."""

    def __init__(self, address: str = "local", workers: int | None = None):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as e:  # pragma: no cover - dask is in requirements.txt
            raise RuntimeError("the parallel engine needs dask[distributed]: pip install 'dask[distributed]'") from e
        self.address = address
        if address == "local":
            self.cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                                        dashboard_address=None)
        elif address == "local-cuda":
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError as e:
                raise RuntimeError("engine 'local-cuda' needs dask-cuda on a machine with NVIDIA GPUs: "
                                   "pip install dask-cuda") from e
            self.cluster = LocalCUDACluster(threads_per_worker=1, dashboard_address=None)
        elif address.startswith(("tcp://", "tls://")):
            self.cluster = None
        else:
            raise ValueError(f"engine must be 'local', 'local-cuda' or a scheduler address tcp://host:port, "
                             f"not {address!r}")
        self.client = Client(self.cluster if self.cluster is not None else address)
        self.imported: set[str] = set()  # the modules of jobs that every worker has imported

    def map(self, fn, jobs: list, data, progress: bool = True, desc: str = "") -> list:
        """``[fn(job, data) for job in jobs]``, computed on the workers; ``data`` is sent once to each."""
        return self.collect(self.submit(fn, jobs, data), progress, desc)

    def submit(self, fn, jobs: list, data) -> list:
        """Start ``fn(job, data)`` for every job on the workers (``data`` sent once to each); their futures."""
        module = getattr(fn, "func", fn).__module__
        if module not in self.imported:
            # the workers import the jobs' module (prrt, torch, scikit-learn) all at once: the data scattered next can
            # be unpickled only after those imports, and a broadcast unpickles it on one worker after the other
            # (two local workers: 7.7 s with one core busy before, 3.8 s with both now)
            self.client.run(importlib.import_module, module)
            self.imported.add(module)
        shared = self.client.scatter(data, broadcast=True)
        return self.client.map(fn, jobs, data=shared, pure=False)

    def collect(self, futures: list, progress: bool = True, desc: str = "") -> list:
        """The results of :meth:`submit`'s futures, in their order, with a progress bar as they finish."""
        from dask.distributed import as_completed
        from tqdm.auto import tqdm

        with tqdm(total=len(futures), desc=desc, unit="job", disable=not progress) as bar:
            for _ in as_completed(futures):
                bar.update()
        return self.client.gather(futures)

    def describe(self) -> dict:
        workers = self.client.scheduler_info().get("workers", {})
        return {"engine": "dask", "address": self.address, "workers": len(workers)}

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def engine_from(address: str | None = None, workers: int | None = None):
    """The engine for ``address`` (default: the ``PRRT_ENGINE`` environment variable); ``None`` when
    neither is set, which means :class:`Sequential`; ``"split"``: :class:`SplitEngine`."""
    address = address or os.environ.get(ENV, "")
    if not address or address == "sequential":
        return None
    if workers is None and os.environ.get(ENV + "_WORKERS"):
        workers = int(os.environ[ENV + "_WORKERS"])
    if address == "split":
        return SplitEngine(workers or 2)
    return DaskEngine(address, workers)
