"""The runner: execute the notebooks of the study into a run directory, and build the book.

One run = one manifest + one profile + one seed. ``run`` executes ``notebooks/0*.ipynb`` in order
with papermill into a *staging* directory beside the run directory (``.<name>.staging-<pid>``, one per
process), builds the book there and, only when every notebook and the book succeeded, replaces the
run directory with it: results and book change together. A failing notebook therefore never touches
the previous good run or its book; the failed attempt is kept in ``.<name>.failed`` for inspection.
SIGTERM or Ctrl-C stops the notebook's kernel, removes the staging directory and leaves the previous
run as it was.

One process at a time works on a run directory: ``run`` and ``book`` hold an exclusive lock
(:class:`RunLock`, ``.<name>.lock`` beside it); a second one exits with status 2, naming the holder.

``build_book`` renders the executed notebooks of a run, with the hand-written chapters, into
``<run_dir>/book/`` with Jupyter Book 1.x (``execute_notebooks: 'off'``), also through a staging
directory, and refuses to publish a book in which any file contains a patient ID, a rare value of a
declared text column, an image path or the manifest's folder (:func:`prrt.validation.identifier_tokens`).
Paths in ``run.json`` and in the executed notebooks are relative to the run directory.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import nbformat

from . import __version__
from .imaging import file_sha256
from .manifest import load_manifest
from .profiles import get_profile

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
BOOK_SOURCES = ["_config.yml", "_toc.yml", "book", "data_manifest"]
DEFAULT_SEED = 20251105
PACKAGES = ["torch", "monai", "torchio", "nibabel", "simpleitk", "numpy", "scipy", "pandas", "scikit-learn",
            "statsmodels", "lifelines", "matplotlib", "papermill", "jupyter-book"]
HIDDEN_TAG = "remove-cell"
#: Patient IDs shorter than this are not searched for in the book (they would match ordinary text).
MIN_ID_LENGTH_CHECKED = 4


class RunError(RuntimeError):
    """A run or book build failed; the previous run and book are untouched."""


class RunLocked(RunError):
    """Another process holds the run directory's lock."""


class RunInterrupted(RunError):
    """SIGTERM or SIGINT stopped the run; the previous run and book are untouched."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class RunLock:
    """An exclusive lock on a run directory, held by one process: ``<parent>/.<name>.lock``.

    ``fcntl.flock`` on the lock file: the operating system releases it when the holder exits, however
    it exits, so the lock of a process that was killed is recovered by the next run (the file then still
    names the dead holder, and the next holder says so). The file records the holder (PID, host, start
    time, command) for the message a second process gets. It is emptied, not deleted, on release
    (deleting it would let two processes lock two different files).
    """

    def __init__(self, run_dir, command: str, log=print):
        self.run_dir = Path(run_dir).resolve()
        self.path = self.run_dir.with_name(f".{self.run_dir.name}.lock")
        self.command, self.log, self.fd = command, log, None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self.holder()
            raise RunLocked(
                f"{self.run_dir} is in use by another process: prrt {h.get('command', '?')} (PID {h.get('pid', '?')} "
                f"on {h.get('host', '?')}, started {h.get('started', '?')}). Wait for it to finish, or use another "
                "--run-dir") from None
        stale = self.holder()
        if stale.get("pid"):
            self.log(f"recovered the lock of {self.run_dir.name} left by PID {stale['pid']} (prrt "
                     f"{stale.get('command', '?')}, started {stale.get('started', '?')}), which is no longer running")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": platform.node(), "started": _now(),
                                 "command": self.command}).encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class _Signals:
    """While active, SIGTERM (and SIGINT) raise :class:`RunInterrupted` in the main thread."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __enter__(self):
        import signal
        import threading

        self.previous = {}
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in self.SIGNALS:
            signum = getattr(signal, name)
            self.previous[signum] = signal.signal(signum, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        import signal

        _stop_kernels()
        raise RunInterrupted(f"stopped by {signal.Signals(signum).name}", signum)

    def __exit__(self, *exc):
        import signal

        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _stop_kernels() -> None:
    """Kill the processes this process started (notebook kernels, and theirs) at once: papermill does not get to
    shut them down when interrupted, and a kernel left running would print its own shutdown errors."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=5)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_state(repo: Path = REPO_ROOT) -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment_info() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch

        device["cuda"] = torch.cuda.is_available()
        if device["cuda"]:
            device["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a dependency
        device["cuda"] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "prrt": __version__,
            "packages": versions, "device": device}


def relative(path, start) -> str:
    """``path`` relative to the folder ``start`` (absolute paths may name a user or a patient)."""
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def input_hashes(cohort, run_dir) -> dict:
    """SHA-256 of every input file; images keyed by pseudonym and modality (no paths: they may name patients);
    the manifest's path relative to the run directory."""
    images = {}
    for pid in cohort.data.index:
        entry = {}
        for m in cohort.modalities:
            p = cohort.image_path(pid, m)
            if p is not None:
                entry[m] = file_sha256(p)
        images[pid] = entry
    return {
        "manifest": {"path": relative(cohort.manifest_path, run_dir), "sha256": file_sha256(cohort.manifest_path)},
        "table": {"file": cohort.input_files[1].name, "sha256": file_sha256(cohort.input_files[1])},
        "images": images,
    }


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


def _replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` in place of ``target`` (two renames; the old one is deleted only afterwards)."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old)


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
    on all of ``manifest``'s labelled patients (:mod:`prrt.external`); it is validated, and checked to be
    compatible with the first, before anything runs.

    ``engine``: where the notebooks fit their models (:mod:`prrt.parallel`): ``None`` in each
    notebook's own process, one after another; ``"local"`` (``workers`` processes), ``"local-cuda"``
    or ``"tcp://host:port"``, a Dask cluster. ``book=False``: leave the book out (the run directory
    then has none until ``build_book``).

    Raises :class:`prrt.manifest.ManifestError` for an invalid manifest (before anything runs),
    :class:`RunLocked` when another process works on ``run_dir``, :class:`RunInterrupted` on SIGTERM or
    SIGINT, and :class:`RunError` when a notebook or the book fails, naming the notebook and the cell.
    """
    get_profile(profile)  # fail early on an unknown profile
    manifest = Path(manifest).resolve()
    cohort = load_manifest(manifest, check_images="full", profile=profile)
    for warning in cohort.warnings:
        log(str(warning))
    external = None
    if validate_on:
        from .validation import check_compatible, incompatible

        validate_on = Path(validate_on).resolve()
        external = load_manifest(validate_on, check_images="full")
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
    with _exclusive(run_dir, "run", log, [staging], "the run was abandoned and its staging folder removed; the previous "
                    f"results and book in {run_dir} (if any) are untouched"):
        # with the lock held no other process works here: a staging folder is what a killed run left behind
        for stale in sorted(run_dir.parent.glob(f".{run_dir.name}.staging*")):
            log(f"removing {stale.name}, left behind by a run that was killed")
            shutil.rmtree(stale, ignore_errors=True)
        _run_into(staging, cohort, manifest, profile, run_dir, seed, notebooks_dir, cache_dir, progress, log,
                  ct_weights, ct_weights_prefix, engine, workers, book, external)
        _replace_dir(staging, run_dir)
    return run_dir


@contextlib.contextmanager
def _exclusive(run_dir: Path, command: str, log, scratch: list[Path], abandoned: str):
    """Hold the run folder's lock, and turn SIGTERM/SIGINT into :class:`RunInterrupted` (the kernels are killed
    by the signal handler); on an interruption the ``scratch`` folders are removed and the error says
    ``abandoned``."""
    with RunLock(run_dir, command, log), _Signals():
        try:
            yield
        except RunInterrupted as exc:
            for folder in scratch:
                shutil.rmtree(folder, ignore_errors=True)
            raise RunInterrupted(f"{exc}: {abandoned}", exc.signum) from None


def _run_into(staging, cohort, manifest, profile, run_dir, seed, notebooks_dir, cache_dir, progress, log, ct_weights,
              ct_weights_prefix, engine, workers, book, external=None) -> None:
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "notebooks").mkdir(parents=True)
    notebooks = list_notebooks(notebooks_dir)
    cache_dir = Path(cache_dir).resolve() if cache_dir else run_dir.parent / ".prrt-cache"
    info = {
        "name": run_dir.name,
        "status": "running",
        "started": _now(),
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
    from unittest import mock

    from .parallel import ENV

    info["engine"] = {"address": engine or "sequential", "workers": workers}
    # the kernels papermill starts inherit the engine (prrt.notebook.Context.engine); restored afterwards
    with mock.patch.dict(os.environ, {ENV: engine or "", ENV + "_WORKERS": str(workers or "")}):
        _execute(notebooks, staging, run_dir, params, info, progress, log)
    (staging / "run.json").write_text(json.dumps(info, indent=2))
    if book:
        try:
            build_book(staging, log=log, lock=False)
        except RunError as exc:
            failed = _keep_failed(staging, run_dir)
            raise RunError(f"{exc}\nThe run itself succeeded; it is kept in {failed}."
                           f" The previous run in {run_dir} (if any) and its book are untouched.") from None


def _keep_failed(staging: Path, run_dir: Path) -> Path:
    """Move a failed attempt to ``.<name>.failed`` beside the run (replacing an older one); returns that folder."""
    failed = run_dir.with_name(f".{run_dir.name}.failed")
    if failed.exists():
        shutil.rmtree(failed)
    os.replace(staging, failed)
    return failed


def _execute(notebooks, staging: Path, run_dir: Path, params: dict, info: dict, progress: bool, log) -> None:
    import papermill as pm
    from tqdm.auto import tqdm

    t_run = time.perf_counter()
    bar = tqdm(notebooks, desc="notebooks", unit="notebook", disable=not progress)
    for nb in bar:
        bar.set_postfix_str(nb.name)
        out = staging / "notebooks" / nb.name
        t0 = time.perf_counter()
        try:
            declared = declared_parameters(nb)  # each notebook gets the parameters it declares
            pm.execute_notebook(str(nb), str(out), parameters={k: v for k, v in params.items() if k in declared},
                                cwd=str(staging), progress_bar=progress, kernel_name="python3")
        except RunInterrupted:
            raise
        except Exception as exc:  # papermill raises PapermillExecutionError, or kernel errors
            failed = _keep_failed(staging, run_dir)
            raise RunError(
                f"notebook {nb.name} failed at {_failed_cell(exc)}\n"
                f"The executed notebook, up to the error, is in {failed / 'notebooks' / nb.name}.\n"
                f"The previous run in {run_dir} (if any) and its book are untouched."
            ) from None
        _finish_notebook(out)
        info["notebooks"].append({"name": nb.name, "wall_time_s": round(time.perf_counter() - t0, 1)})
        log(f"  {nb.name}: {info['notebooks'][-1]['wall_time_s']} s")
    info.update(status="complete", finished=_now(), wall_time_s=round(time.perf_counter() - t_run, 1))


# ---- book --------------------------------------------------------------------------------------
def _engine_text(engine: dict | None) -> str:
    if not engine or engine.get("address") in (None, "sequential"):
        return "one after another, in each notebook's process"
    workers = f", {engine['workers']} workers" if engine.get("workers") else ""
    where = "a Dask cluster at a scheduler" if str(engine["address"]).startswith(("tcp://", "tls://")) \
        else f"Dask, {engine['address']}"
    return f"in parallel: {where}{workers}"


#: Parameters that hold a path: the book's copies of the notebooks keep only the file's name.
PATH_PARAMETERS = ("manifest", "cache_dir", "ct_weights", "validate_on")


def _published_copy(notebook: Path, out: Path) -> None:
    """Copy an executed notebook for the book with its path parameters cut to file names and without what the
    cells wrote to stderr: the relative path from the run to the manifest may still name a user's or a
    patient's folder, a warning names the file it was raised in (the Python environment's folder), and
    Jupyter Book publishes each notebook whole (``_sources``, the download button), hidden cells and
    papermill's record included. (The pages leave stderr out too: ``nb_output_stderr: remove``.)"""
    import ast

    nb = nbformat.read(notebook, as_version=4)
    params = nb.metadata.get("papermill", {}).get("parameters", {})
    for key in PATH_PARAMETERS:
        if params.get(key):
            params[key] = Path(params[key]).name
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            lines = []
            for line in cell.source.splitlines():
                m = re.match(r"^(\w+) = (\".*\"|'.*')\s*$", line)
                if m and m.group(1) in PATH_PARAMETERS and ast.literal_eval(m.group(2)):
                    line = f"{m.group(1)} = {Path(ast.literal_eval(m.group(2))).name!r}"
                lines.append(line)
            cell.source = "\n".join(lines)
    nbformat.write(nb, out)


def _run_page(info: dict) -> str:
    """The book page that records this run (from run.json)."""
    lines = [
        "# This run", "",
        "The pages of this book were executed by `prrt run` and rendered by `prrt book`; this page "
        "records what went in, so that the numbers can be traced and reproduced.", "",
        "| | |", "|---|---|",
        f"| cohort | {info['cohort']['name']}{' (synthetic)' if info['cohort']['synthetic'] else ''}, "
        f"{info['cohort']['patients']} patients ({info['cohort']['labelled']} labelled) |",
        f"| manifest SHA-256 | `{info['inputs']['manifest']['sha256'][:16]}…` |",
        *_external_rows(info),
        f"| table SHA-256 | `{info['inputs']['table']['sha256'][:16]}…` |",
        f"| image files hashed | {sum(len(v) for v in info['inputs']['images'].values())} |",
        f"| profile | {info['profile']['name']} |",
        f"| seed | {info['seed']} |",
        f"| git commit | `{info['git']['commit'] or 'unknown'}`{' (with uncommitted changes)' if info['git']['dirty'] else ''} |",
        f"| prrt | {info['prrt']} |",
        f"| Python | {info['python']} |",
        f"| device | {info['device'].get('gpu') or info['device']['cpu']} ({info['device']['cpu_count']} CPU cores) |",
        f"| model fits | {_engine_text(info.get('engine'))} |",
        f"| started / finished (UTC) | {info['started']} / {info['finished']} |",
        "", "## Wall time per notebook", "", "| notebook | seconds |", "|---|---|",
    ]
    lines += [f"| {n['name']} | {n['wall_time_s']} |" for n in info["notebooks"]]
    lines += [f"| **all** | {info['wall_time_s']} |", "", "## Package versions", "", "| package | version |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info["packages"].items()]
    lines += ["", "## Profile", "", "```json", json.dumps(info["profile"], indent=2), "```", "",
              "The full record, with the SHA-256 of every input image, is `run.json` in the run directory.", ""]
    return "\n".join(lines)


def _external_rows(info: dict) -> list[str]:
    ext = info.get("external")
    if not ext:
        return ["| external cohort | none (chapter 6 has nothing to do) |"]
    c = ext["cohort"]
    return [f"| external cohort | {c['name']}{' (synthetic)' if c['synthetic'] else ''}, {c['patients']} patients "
            f"({c['labelled']} labelled) |",
            f"| external manifest SHA-256 | `{ext['inputs']['manifest']['sha256'][:16]}…` |"]


#: ``auto`` (default): check the built book in a browser when one is found; ``off``: never; ``required``: fail
#: the build when no browser can be driven.
BROWSER_CHECK_ENV = "PRRT_BROWSER_CHECK"


def _check_in_browser(html: Path, run_dir: Path, info: dict, log) -> None:
    """Open every page of the built book in headless Chromium (:mod:`prrt.browser`): the result goes to
    ``browser-check.json`` and a screenshot per chapter to ``screenshots/`` in the run folder. Problems are
    reported, not fatal (they do not endanger anything the book must not publish)."""
    from .browser import browser_missing_reason, check_book

    mode = os.environ.get(BROWSER_CHECK_ENV, "auto")
    if mode == "off":
        return
    reason = browser_missing_reason()
    if reason:
        if mode == "required":
            raise RunError(f"the book could not be checked in a browser ({BROWSER_CHECK_ENV}=required): {reason}")
        log(f"the book was not checked in a browser: {reason}")
        return
    result = check_book(html, run_dir / "screenshots", synthetic=info["cohort"]["synthetic"])
    record = {"browser": result.browser, "pages": [p.page for p in result.pages], "problems": result.problems,
              "search": {"query": result.search_query, "pages_found": result.search_results},
              "screenshots": sorted(Path(p.screenshot).name for p in result.pages if p.screenshot)}
    (run_dir / "browser-check.json").write_text(json.dumps(record, indent=2))
    log(f"checked in a browser: {result.summary()}")
    for problem in result.problems:
        log(f"  {problem}")


def _token_pattern(tokens) -> re.Pattern:
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
                      + r")(?![\w-])")


def fixed_text(repo_root=None) -> str:
    """The book's own text, the same for every run: its hand-written pages and configuration, and the
    notebooks' cells as written (not their outputs)."""
    repo_root = Path(repo_root) if repo_root else REPO_ROOT
    parts = []
    for name in BOOK_SOURCES:
        p = repo_root / name
        for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else []):
            if f.is_file() and f.suffix in {".md", ".yml", ".yaml", ".bib", ".json"}:
                parts.append(f.read_text(errors="ignore"))
    for nb in sorted((repo_root / "notebooks").glob("*.ipynb")):
        parts += [c.source for c in nbformat.read(nb, as_version=4).cells]
    return "\n".join(parts)


def checkable_tokens(tokens: dict, fixed: str) -> tuple[dict, int]:
    """The tokens the book's guard searches for, and how many it cannot: a token shorter than
    ``MIN_ID_LENGTH_CHECKED`` characters, or one that is a word of the book's own fixed text (a hospital ID
    ``P001``, a rare level ``Other``), would be found on every page; it is left out (and counted)."""
    long_enough = {t: d for t, d in tokens.items() if len(t) >= MIN_ID_LENGTH_CHECKED}
    in_fixed = {m.group(1) for m in _token_pattern(long_enough).finditer(fixed)} if long_enough else set()
    keep = {t: d for t, d in long_enough.items() if t not in in_fixed}
    return keep, len(tokens) - len(keep)


def find_identifiers(book_dir: Path, tokens) -> list[tuple[str, str]]:
    """Files of a built book that contain any of ``tokens`` (as a whole word): ``(file, what it is)``.

    ``tokens`` maps each string to what it is (``"the patient ID of P007"``). Every file is read as bytes
    (HTML, JavaScript, the search index, ``_sources``, notebooks, PNG metadata), except the theme's own
    ``_static`` files.
    """
    tokens = {str(t): d for t, d in tokens.items() if len(str(t)) >= MIN_ID_LENGTH_CHECKED}
    if not tokens:
        return []
    pattern = _token_pattern(tokens)
    hits = []
    for f in sorted(book_dir.rglob("*")):
        rel = f.relative_to(book_dir)
        if f.is_file() and rel.parts[0] != "_static":
            text = f.read_bytes().decode("utf-8", errors="ignore")
            for m in pattern.finditer(text):
                hits.append((str(rel), tokens[m.group(1)]))
    return hits


def build_book(run_dir, repo_root=None, log=print, lock: bool = True) -> Path:
    """Build the book of a completed run into ``<run_dir>/book``; returns its ``index.html``.

    ``lock=False`` when the caller (``run``) holds the run directory's lock already.
    """
    run_dir = Path(run_dir).resolve()
    if not lock:
        return _build_book(run_dir, repo_root, log)
    with _exclusive(run_dir, "book", log, [run_dir / ".book-src", run_dir / ".book-out"],
                    f"the book build was abandoned; the previous book in {run_dir} (if any) is untouched"):
        return _build_book(run_dir, repo_root, log)


def repository_url() -> str | None:
    """The public repository the book's launch buttons (Binder) open: $PRRT_REPOSITORY_URL, else the GitHub
    repository that GitHub Actions builds ($GITHUB_REPOSITORY); None when neither is set."""
    if os.environ.get("PRRT_REPOSITORY_URL"):
        return os.environ["PRRT_REPOSITORY_URL"]
    if os.environ.get("GITHUB_REPOSITORY"):
        return f"{os.environ.get('GITHUB_SERVER_URL', 'https://github.com')}/{os.environ['GITHUB_REPOSITORY']}"
    return None


def _build_book(run_dir: Path, repo_root, log) -> Path:
    import yaml

    repo_root = Path(repo_root) if repo_root else REPO_ROOT
    info_file = run_dir / "run.json"
    if not info_file.is_file():
        raise RunError(f"{run_dir} is not a run directory (no run.json); make one with `prrt run` first")
    info = json.loads(info_file.read_text())
    if info.get("status") != "complete":
        raise RunError(f"the run in {run_dir} is not complete (status {info.get('status')!r})")
    src = run_dir / ".book-src"
    out = run_dir / ".book-out"
    for d in (src, out):
        if d.exists():
            shutil.rmtree(d)
    src.mkdir()
    for name in BOOK_SOURCES:
        p = repo_root / name
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, src / name)
    (src / "notebooks").mkdir()
    for nb in sorted((run_dir / "notebooks").glob("*.ipynb")):
        _published_copy(nb, src / "notebooks" / nb.name)
    (src / "book" / "this_run.md").write_text(_run_page(info))
    config = yaml.safe_load((src / "_config.yml").read_text())
    config["execute"] = {**config.get("execute", {}), "execute_notebooks": "off"}
    url = repository_url()
    if url:
        config["repository"] = {**config.get("repository", {}), "url": url}
    else:  # the theme cannot make launch buttons without the repository's address (it fails on an empty one)
        config.pop("launch_buttons", None)
        config.pop("repository", None)
    if info["cohort"]["synthetic"]:
        config.setdefault("html", {})["announcement"] = (
            "Synthetic data: the results in this book come from a generated cohort, not from patients.")
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(src), "--path-output", str(out)]
    log("building the book …")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (run_dir / "book-build.log").write_text(proc.stdout + proc.stderr)
    html = out / "_build" / "html"
    if proc.returncode != 0 or not (html / "index.html").is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RunError(f"the book build failed (log: {run_dir / 'book-build.log'}); the previous book is "
                       f"untouched.\n{tail}")
    # no patient identifier, rare value, image path or manifest folder may be published
    from .validation import identifier_tokens

    manifest = (run_dir / info["inputs"]["manifest"]["path"]).resolve()
    try:
        cohort = load_manifest(manifest, check_images="none")
    except Exception as exc:  # the manifest moved or changed: we cannot check, so we do not publish
        raise RunError(f"cannot check the book for patient IDs: the run's manifest could not be read ({exc})")
    tokens = identifier_tokens(cohort)
    if info.get("external"):  # the external cohort's IDs, rare values and paths are as private
        path = (run_dir / info["external"]["inputs"]["manifest"]["path"]).resolve()
        try:
            external = load_manifest(path, check_images="none")
        except Exception as exc:
            raise RunError(f"cannot check the book for patient IDs: the external cohort's manifest could not be read "
                           f"({exc})")
        tokens = {**identifier_tokens(external), **tokens}
    for folder, what in ((REPO_ROOT, "the repository's folder"), (Path(sys.prefix), "the Python environment's folder"),
                         (Path.home(), "the home folder")):  # a warning's path may name the user
        tokens.setdefault(str(folder), what)
    tokens, unchecked = checkable_tokens(tokens, fixed_text(repo_root))
    leaks = find_identifiers(html, tokens)
    with (run_dir / "book-build.log").open("a") as f:
        f.write(f"\nprivacy guard: searched every file of the book for {len(tokens)} strings from the manifest "
                f"(patient IDs, rare values, image paths, its folder) and this machine (the repository's, the Python "
                f"environment's and the home folder); {unchecked} too short or words of the book's own text, not "
                f"searched; found {len(leaks)}\n")
    if leaks:
        pages = sorted({p for p, _ in leaks})
        what = sorted({w for _, w in leaks})
        ids = [w.split(" of ")[-1] for w in what if w.startswith("the patient ID of ")]
        others = [w for w in what if not w.startswith("the patient ID of ")]
        said = "; ".join(([f"patient IDs (of {', '.join(ids[:10])})"] if ids else [])
                         + ([", ".join(others)[:300]] if others else []))
        raise RunError(f"the book would publish {said} on: {', '.join(pages[:10])}; nothing was published")
    if (html / "_static" / "favicon.png").is_file():  # a page without an icon link (the redirecting index.html)
        shutil.copyfile(html / "_static" / "favicon.png", html / "favicon.ico")  # makes the browser ask for this
    _check_in_browser(html, run_dir, info, log)
    _replace_dir(html, run_dir / "book")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    return run_dir / "book" / "index.html"
