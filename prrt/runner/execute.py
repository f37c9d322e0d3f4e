"""Executing the notebooks of the study into a run directory (:func:`run`).

One run = one manifest + one profile + one seed. ``run`` executes ``notebooks/[0-9][0-9]_*.ipynb`` in
order with papermill into a *staging* directory beside the run directory (``.<name>.staging-<pid>``, one
per process), builds the book there (:mod:`prrt.runner.book`) and, only when every notebook and the book
succeeded, replaces the run directory with it: results and book change together. A failing notebook
therefore never touches the previous good run or its book; the failed attempt is kept in
``.<name>.failed`` for inspection. SIGTERM or Ctrl-C stops the notebook's kernel, removes the staging
directory and leaves the previous run as it was (the lock and the signals: :mod:`prrt.runner.lock`).

Each notebook runs in a kernel of its own, which the runner starts while the notebook before it runs
(:class:`KernelsAhead`: the kernel imports :data:`PRELOAD` as it starts, so that its notebook does not wait for it).
Each notebook gets the parameters its ``parameters`` cell declares (:func:`declared_parameters`), with
paths relative to the run directory. ``run.json`` records the run: the cohort, the SHA-256 of every
input file, the profile, the seed, the git commit, the package versions, the device, the wall and CPU time
of each notebook and where that time went (``timings``: seconds per notebook, model and phase, from
:mod:`prrt.timing`; the book build's own time is added once the book is built).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import time
from pathlib import Path

import nbformat

from ..data import check_compatible, incompatible, load_cohort
from ..learn import ENV
from ..profiles import DEFAULT_SEED, get_profile
from ..provenance import (
    NOTEBOOKS_DIR,
    environment_info,
    file_sha256,
    git_state,
    input_hashes,
    relative,
)
from ..timing import CHAPTER_ENV, read_timings
from ..timing import ENV as TIMINGS_ENV
from . import forking
from .book import build_book
from .lock import RunError, RunInterrupted, exclusive, keep_failed, replace_dir, utc_now

HIDDEN_TAG = "remove-cell"


def list_notebooks(notebooks_dir=None) -> list[Path]:
    d = Path(notebooks_dir) if notebooks_dir else NOTEBOOKS_DIR
    nbs = sorted(p for p in d.glob("[0-9][0-9]_*.ipynb"))
    if not nbs:
        raise RunError(f"no notebooks (NN_name.ipynb) found in {d}")
    return nbs


def _finish_notebook(path: Path) -> None:
    """Tag papermill's injected-parameters cell (and the parameters cell) so the book hides them, and put
    paths relative to the run directory in papermill's record (it keeps the absolute ones)."""
    nb = nbformat.read(path, as_version=4)
    record = nb.metadata.get("papermill", {})
    if record:
        record["input_path"] = f"notebooks/{path.name}"  # in the repository
        record["output_path"] = f"notebooks/{path.name}"  # in the run directory
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if ("injected-parameters" in tags or "parameters" in tags) and HIDDEN_TAG not in tags:
            cell.metadata["tags"] = tags + [HIDDEN_TAG]
    nbformat.write(nb, path)


def _failed_cell(exc) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    cell = getattr(exc, "exec_count", None)
    return f"cell [{cell}]: {ename}: {evalue}" if cell else f"{ename}: {evalue}"


def declared_parameters(notebook) -> set[str]:
    """Names assigned in a notebook's cell tagged ``parameters`` (read with ``ast``)."""
    import ast

    nb = nbformat.read(str(notebook), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                    if isinstance(t, ast.Name)}
    return set()


def run(manifest, profile: str, run_dir, seed: int = DEFAULT_SEED, notebooks_dir=None, cache_dir=None,
        progress: bool = True, log=print, ct_weights=None, ct_weights_prefix=(), engine: str | None = None,
        workers: int | None = None, book: bool = True, validate_on=None) -> Path:
    """Execute the notebooks in order into ``run_dir`` and build its book; returns the run directory.

    ``validate_on``: the manifest of a second cohort, which chapter 06 predicts with the models fitted
    on all of ``manifest``'s labelled patients (:mod:`prrt.study.ch06_external`); it is validated, and checked to be
    compatible with the first, before anything runs.

    ``engine``: where the notebooks fit their models (:mod:`prrt.learn.engines`): ``None`` in each
    notebook's own process, one after another; ``"local"`` (``workers`` processes), ``"local-cuda"``
    or ``"tcp://host:port"``, a Dask cluster. ``book=False``: leave the book out (the run directory
    then has none until ``build_book``).

    Raises :class:`prrt.data.ManifestError` for an invalid manifest (before anything runs),
    :class:`prrt.runner.RunLocked` when another process works on ``run_dir``, :class:`RunInterrupted` on SIGTERM or
    SIGINT, and :class:`RunError` when a notebook or the book fails, naming the notebook and the cell.
    """
    get_profile(profile)  # fail early on an unknown profile
    notebooks = list_notebooks(notebooks_dir)
    # the notebooks' kernel server imports while the cohort is checked (on the other core)
    server = kernel_server(QUIET_BARS, len(notebooks))
    manifest = Path(manifest).resolve()
    cohort = load_cohort(manifest, check_images="full", profile=profile)
    for warning in cohort.warnings:
        log(str(warning))
    external = None
    if validate_on:
        validate_on = Path(validate_on).resolve()
        external = load_cohort(validate_on, check_images="full")
        for warning in external.warnings:
            log(f"external cohort: {warning}")
        problems = check_compatible(cohort, external)
        if problems:
            raise incompatible(cohort, external, problems)
    run_dir = Path(run_dir).resolve()
    if run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / "run.json").is_file():
        raise RunError(f"{run_dir} is not empty and is not a run folder (it has no run.json): a run replaces its whole "
                       "run folder, so it will not take this one. Choose a new --run-dir; nothing was changed")
    staging = run_dir.with_name(f".{run_dir.name}.staging-{os.getpid()}")
    with exclusive(run_dir, "run", log, [staging], "the run was abandoned and its staging folder removed; the previous "
                    f"results and book in {run_dir} (if any) are untouched"):
        # with the lock held no other process works here: a staging folder is what a killed run left behind
        for stale in sorted(run_dir.parent.glob(f".{run_dir.name}.staging*")):
            log(f"removing {stale.name}, left behind by a run that was killed")
            shutil.rmtree(stale, ignore_errors=True)
        _run_into(staging, cohort, manifest, profile, run_dir, seed, notebooks, cache_dir, progress, log,
                  ct_weights, ct_weights_prefix, engine, workers, book, external, server)
        replace_dir(staging, run_dir)
    return run_dir


def _run_into(staging, cohort, manifest, profile, run_dir, seed, notebooks, cache_dir, progress, log, ct_weights,
              ct_weights_prefix, engine, workers, book, external=None, server=None) -> None:
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "notebooks").mkdir(parents=True)
    cache_dir = Path(cache_dir).resolve() if cache_dir else run_dir.parent / ".prrt-cache"
    info = {
        "name": run_dir.name,
        "status": "running",
        "started": utc_now(),
        "cohort": {"name": cohort.name, "synthetic": cohort.synthetic, "patients": cohort.n_patients,
                   "labelled": len(cohort.labelled)},
        "profile": get_profile(profile).to_dict(),
        "seed": int(seed),
        "git": git_state(),
        **environment_info(),
        "inputs": input_hashes(cohort, run_dir),
        "notebooks": [],
    }
    # the notebooks run in the run directory, and every path they get is relative to it: papermill keeps
    # its parameters in the executed notebooks, and an absolute path may name a user or a patient
    params = {"manifest": relative(manifest, run_dir), "run_dir": ".", "profile": profile, "seed": int(seed),
              "cache_dir": relative(cache_dir, run_dir), "ct_weights": relative(ct_weights, run_dir) if ct_weights else "",
              "ct_weights_prefix": ",".join(ct_weights_prefix),
              "validate_on": relative(external.manifest_path, run_dir) if external is not None else ""}
    if external is not None:
        info["external"] = {"cohort": {"name": external.name, "synthetic": external.synthetic,
                                       "patients": external.n_patients, "labelled": len(external.labelled)},
                            "inputs": input_hashes(external, run_dir)}
    if ct_weights:
        info["ct_weights"] = {"file": Path(ct_weights).name, "sha256": file_sha256(ct_weights),
                              "key_prefixes": list(ct_weights_prefix)}
    info["engine"] = {"address": engine or get_profile(profile).engine, "workers": workers}
    # the kernels get the engine in their environment (prrt.study.notebook.Context.engine)
    _execute(notebooks, staging, run_dir, params, info, progress, log,
             {ENV: engine or "", ENV + "_WORKERS": str(workers or "")}, server)
    (staging / "run.json").write_text(json.dumps(info, indent=2))
    if book:
        try:
            t0 = time.perf_counter()
            build_book(staging, log=log, lock=False)
            info["book_build_s"] = round(time.perf_counter() - t0, 1)  # (the book's own page cannot hold it)
            (staging / "run.json").write_text(json.dumps(info, indent=2))
        except RunError as exc:
            failed = keep_failed(staging, run_dir)
            raise RunError(f"{exc}\nThe run itself succeeded; it is kept in {failed}."
                           f" The previous run in {run_dir} (if any) and its book are untouched.") from None


def _execute(notebooks, staging: Path, run_dir: Path, params: dict, info: dict, progress: bool, log,
             run_env: dict, server=None) -> None:
    import papermill as pm
    from tqdm.auto import tqdm

    t_run = time.perf_counter()
    timings = staging / "timings"
    # the kernel (and the workers it starts) write their phase sums to timings/ (prrt.timing)
    # what differs between runs or notebooks goes to the kernels only, not to a kernel server that a later run of
    # this process may reuse
    kernels = KernelsAhead(staging, QUIET_BARS,
                           lambda nb: {**run_env, TIMINGS_ENV: str(timings), CHAPTER_ENV: nb.name},
                           notebooks=len(notebooks), server=server)
    bar = tqdm(notebooks, desc="notebooks", unit="notebook", disable=not progress)
    try:
        for i, nb in enumerate(bar):
            bar.set_postfix_str(nb.name)
            out = staging / "notebooks" / nb.name
            km = kernels.take(nb)
            if i + 1 < len(notebooks):  # the next notebook's kernel starts and imports while this one runs
                kernels.start(notebooks[i + 1])
            t0, cpu0 = time.perf_counter(), _children_cpu()
            try:
                declared = declared_parameters(nb)  # each notebook gets the parameters it declares
                pm.execute_notebook(str(nb), str(out), parameters={k: v for k, v in params.items() if k in declared},
                                    cwd=str(staging), progress_bar=progress, kernel_name="python3", km=km,
                                    engine_name=papermill_engine())
            except RunInterrupted:
                raise
            except Exception as exc:  # papermill raises PapermillExecutionError, or kernel errors
                kernels.stop(km)
                kernels.stop_all()
                failed = keep_failed(staging, run_dir)
                raise RunError(
                    f"notebook {nb.name} failed at {_failed_cell(exc)}\n"
                    f"The executed notebook, up to the error, is in {failed / 'notebooks' / nb.name}.\n"
                    f"The previous run in {run_dir} (if any) and its book are untouched."
                ) from None
            kernel_cpu = kernels.stop(km)
            _finish_notebook(out)
            info["notebooks"].append({"name": nb.name, "wall_time_s": round(time.perf_counter() - t0, 1),
                                      "cpu_time_s": round(_children_cpu() - cpu0 + kernel_cpu, 1)})
            log(f"  {nb.name}: {info['notebooks'][-1]['wall_time_s']} s")
    finally:
        kernels.stop_all()
    # the imports that the forked kernels share (none when each kernel imported for itself): the server's CPU during
    # this run (about none when an earlier run of this process had done them)
    info["kernel_server"] = {"forked_kernels": kernels.server is not None, "reused": kernels.reused,
                             "import_cpu_time_s": kernels.server_cpu_s}
    info.update(status="complete", finished=utc_now(), wall_time_s=round(time.perf_counter() - t_run, 1))
    rows = read_timings(timings)
    info["timings"] = rows.round({"wall_s": 2, "cpu_s": 2}).to_dict(orient="records")


@functools.cache
def papermill_engine() -> str:
    """The name of papermill's engine for the runner (registered on first use): papermill's own (nbclient), except
    that the executed notebook is written when it starts, every 30 s while it runs (papermill's autosave) and when it
    ends, failed or not, instead of also before and after every cell: writing a notebook validates it against the
    notebook schema and copies it whole, on the path of every cell (3.3 s of a smoke run sampled with py-spy, 81 s under
    the sampler)."""
    from papermill.engines import (
        NBClientEngine,
        NotebookExecutionManager,
        papermill_engines,
    )

    class Manager(NotebookExecutionManager):
        writes = True

        def save(self, **kwargs):
            if self.writes:
                super().save(**kwargs)

        def cell_start(self, cell, cell_index=None, **kwargs):
            self._unsaved(super().cell_start, cell, cell_index, **kwargs)

        def cell_complete(self, cell, cell_index=None, **kwargs):
            self._unsaved(super().cell_complete, cell, cell_index, **kwargs)

        def _unsaved(self, step, *args, **kwargs):
            self.writes = False
            try:
                step(*args, **kwargs)
            finally:
                self.writes = True
            self.autosave_cell()

    class Engine(NBClientEngine):
        @classmethod
        def execute_notebook(cls, nb, kernel_name, output_path=None, progress_bar=True, log_output=False,
                             autosave_cell_every=30, **kwargs):  # papermill's Engine.execute_notebook with Manager
            nb_man = Manager(nb, output_path=output_path, progress_bar=progress_bar, log_output=log_output,
                             autosave_cell_every=autosave_cell_every)
            nb_man.notebook_start()
            try:
                cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
            finally:
                nb_man.cleanup_pbar()
                nb_man.notebook_complete()
            return nb_man.nb

    papermill_engines.register(ENGINE, Engine)
    return ENGINE


ENGINE = "prrt"

#: The kernels' progress bars redraw at most every 10 s (tqdm reads its defaults from ``TQDM_*`` variables): nobody
#: watches them live, and each redraw became an output of the executed notebook. A demo run's chapter 04 had 28,698
#: outputs in one cell (4.5 MB), which papermill wrote out whole when each cell started and ended: 55 of its 420 s.
QUIET_BARS = {"TQDM_MININTERVAL": "10"}
#: What a notebook's kernel imports as it starts, before the notebook runs (IPython's ``exec_lines``): every chapter
#: imports it first, and it is most of the 3-7 s a kernel needs before its first line of work (torch, scikit-learn,
#: pandas; ``benchmarks/DESIGN.md``).
PRELOAD = "import prrt.study.notebook"


def kernel_server(shared_env: dict, notebooks: int) -> tuple:
    """The kernel server of a run of ``notebooks`` notebooks (:func:`prrt.runner.forking.server_for`), where kernels
    are forked: ``(server, reused, its CPU seconds so far)``, the last 0 for a new one (all of its CPU is the run's);
    ``(None, False, 0.0)`` where kernels import for themselves."""
    if not forking.available():
        return None, False, 0.0
    # the server's later imports (MONAI, SymPy, ...) pay for themselves from the third kernel that needs them;
    # in a run of one or two notebooks a kernel that needs them imports them itself
    server, reused = forking.server_for(shared_env, later=forking.LATER_IMPORTS if notebooks >= 3 else ())
    return server, reused, server.cpu_s() if reused else 0.0


class KernelsAhead:
    """Each notebook's own fresh kernel, started one notebook ahead: the next kernel starts and imports
    :data:`PRELOAD` while the current notebook runs, on a core that a notebook of single-threaded work leaves idle.
    A kernel still serves one notebook only, in the notebook's environment (``shared_env`` and ``env_of(notebook)``)
    and in the staging folder, as papermill would have started it. Where it can (:mod:`prrt.runner.forking`), a
    kernel is forked from a process that did the imports once (:func:`prrt.runner.forking.server_for`: started
    for this run, or kept from an earlier run of this process), instead of importing for itself. ``shared_env`` is
    also the server's; ``env_of(notebook)`` is the kernel's own (whatever differs between runs or notebooks)."""

    def __init__(self, cwd: Path, shared_env: dict, env_of, notebooks: int = 7, server=None):
        self.cwd, self.shared_env, self.env_of, self.started, self.taken = cwd, shared_env, env_of, {}, []
        # ``server``: what :func:`kernel_server` gave for this run, when it was started before (else started here)
        self.server, self.reused, self._cpu0 = server or kernel_server(shared_env, notebooks)
        self.server_cpu_s = None

    def start(self, nb: Path) -> None:
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_client.utils import run_sync

        # a server that ended (its imports failed, say) leaves kernels that import for themselves
        forked = self.server is not None and self.server.alive()
        specs = {"kernel_spec_manager": self.server.kernel_spec_manager()} if forked else {}
        km = AsyncKernelManager(kernel_name="python3", **specs)
        run_sync(km.start_kernel)(cwd=str(self.cwd), env={**os.environ, **self.shared_env, **self.env_of(nb)},
                                  extra_arguments=[f"--IPKernelApp.exec_lines={PRELOAD}"])
        self.started[nb] = km

    def take(self, nb: Path):
        """The kernel started for ``nb`` (started now if it was not)."""
        if nb not in self.started:
            self.start(nb)
        km = self.started.pop(nb)
        self.taken.append(km)
        return km

    def stop(self, km) -> float:
        """Stop the kernel ``km``; the CPU seconds of a forked kernel (the server's child, not the runner's)."""
        from jupyter_client.utils import run_sync

        if km in self.taken:
            self.taken.remove(km)
        pid = km.provisioner.pid if km.has_kernel and km.provisioner is not None else None
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=False)
        return self.server.kernel_cpu_s(pid) if self.server and pid else 0.0

    def _abandon(self, km) -> None:
        """A kernel taken for a notebook that ended in an error past papermill (or an interruption, which has killed
        it already): its process (a forked kernel's launcher, whose kernel ends with it) killed and reaped, without
        running the kernel manager's event loop again (papermill's client would report the dead kernel there)."""
        process = getattr(km.provisioner, "process", None) if km.provisioner is not None else None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        if self.server is not None:
            self.server.kernel_cpu_s(process.pid)

    def stop_all(self) -> None:
        """Stop every kernel not yet stopped (taken or not); note the server's CPU during the run (the server is kept
        for a later run)."""
        while self.taken:
            self._abandon(self.taken.pop())
        while self.started:
            self.stop(self.started.popitem()[1])
        if self.server is not None and self.server.alive():
            self.server_cpu_s = round(self.server.cpu_s() - self._cpu0, 1)


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children: a notebook's kernel, once papermill has
    shut it down, with the processes it waited for (its Dask workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


