"""The runner: execute the notebooks of the study into a run directory, and build the book.

One run = one manifest + one profile + one seed. ``run`` executes ``notebooks/0*.ipynb`` in order
with papermill into a *staging* directory beside the run directory and, only when every notebook
succeeded, replaces the run directory with it. A failing notebook therefore never touches the
previous good run or its book; the failed attempt is kept in ``.<name>.failed`` for inspection.

``build_book`` renders the executed notebooks of a run, with the hand-written chapters, into
``<run_dir>/book/`` with Jupyter Book 1.x (``execute_notebooks: 'off'``), also through a staging
directory, and refuses to publish a page that contains a patient ID from the manifest.
"""

from __future__ import annotations

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


def input_hashes(cohort) -> dict:
    """SHA-256 of every input file; images keyed by pseudonym and modality (no paths: they may name patients)."""
    images = {}
    for pid in cohort.data.index:
        entry = {}
        for m in cohort.modalities:
            p = cohort.image_path(pid, m)
            if p is not None:
                entry[m] = file_sha256(p)
        images[pid] = entry
    return {
        "manifest": {"path": str(cohort.manifest_path), "sha256": file_sha256(cohort.manifest_path)},
        "table": {"file": cohort.input_files[1].name, "sha256": file_sha256(cohort.input_files[1])},
        "images": images,
    }


def list_notebooks(notebooks_dir=None) -> list[Path]:
    d = Path(notebooks_dir) if notebooks_dir else NOTEBOOKS_DIR
    nbs = sorted(p for p in d.glob("[0-9][0-9]_*.ipynb"))
    if not nbs:
        raise RunError(f"no notebooks (NN_name.ipynb) found in {d}")
    return nbs


def _hide_parameter_cells(path: Path) -> None:
    """Tag papermill's injected-parameters cell (and the parameters cell) so the book hides them."""
    nb = nbformat.read(path, as_version=4)
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
        workers: int | None = None) -> Path:
    """Execute the notebooks in order into ``run_dir``; returns the run directory.

    ``engine``: where the notebooks fit their models (:mod:`prrt.parallel`): ``None`` in each
    notebook's own process, one after another; ``"local"`` (``workers`` processes), ``"local-cuda"``
    or ``"tcp://host:port"``, a Dask cluster.

    Raises :class:`prrt.manifest.ManifestError` for an invalid manifest (before anything runs) and
    :class:`RunError` when a notebook fails, naming the notebook and the failing cell.
    """
    get_profile(profile)  # fail early on an unknown profile
    manifest = Path(manifest).resolve()
    cohort = load_manifest(manifest, check_images="full", profile=profile)
    for warning in cohort.warnings:
        log(str(warning))
    run_dir = Path(run_dir).resolve()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = run_dir.with_name(f".{run_dir.name}.staging")
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
        "inputs": input_hashes(cohort),
        "notebooks": [],
    }
    params = {"manifest": str(manifest), "run_dir": str(staging), "profile": profile, "seed": int(seed),
              "cache_dir": str(cache_dir), "ct_weights": str(Path(ct_weights).resolve()) if ct_weights else "",
              "ct_weights_prefix": ",".join(ct_weights_prefix)}
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
    _replace_dir(staging, run_dir)
    return run_dir


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
                                cwd=str(nb.parent),
                                progress_bar=progress, kernel_name="python3")
        except Exception as exc:  # papermill raises PapermillExecutionError, or kernel errors
            failed = run_dir.with_name(f".{run_dir.name}.failed")
            if failed.exists():
                shutil.rmtree(failed)
            os.replace(staging, failed)
            raise RunError(
                f"notebook {nb.name} failed at {_failed_cell(exc)}\n"
                f"The executed notebook, up to the error, is in {failed / 'notebooks' / nb.name}.\n"
                f"The previous run in {run_dir} (if any) and its book are untouched."
            ) from None
        _hide_parameter_cells(out)
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


def find_identifiers(book_dir: Path, ids) -> list[tuple[str, str]]:
    """Pages of a built book that contain any of ``ids`` (as a whole word). Returns (page, pseudonym)."""
    ids = {str(i): p for i, p in ids.items() if len(str(i)) >= MIN_ID_LENGTH_CHECKED}
    if not ids:
        return []
    pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True))
                         + r")(?![\w-])")
    hits = []
    for f in sorted(book_dir.rglob("*")):
        if f.is_file() and f.suffix in {".html", ".js", ".json", ".txt", ".ipynb", ".md", ".csv", ".svg"}:
            for m in pattern.finditer(f.read_text(errors="ignore")):
                hits.append((str(f.relative_to(book_dir)), ids[m.group(1)]))
    return hits


def build_book(run_dir, repo_root=None, log=print) -> Path:
    """Build the book of a completed run into ``<run_dir>/book``; returns its ``index.html``."""
    import yaml

    run_dir = Path(run_dir).resolve()
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
    shutil.copytree(run_dir / "notebooks", src / "notebooks")
    (src / "book" / "this_run.md").write_text(_run_page(info))
    config = yaml.safe_load((src / "_config.yml").read_text())
    config["execute"] = {**config.get("execute", {}), "execute_notebooks": "off"}
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
    # no patient identifier may be published
    try:
        cohort = load_manifest(info["inputs"]["manifest"]["path"], check_images="none")
        leaks = find_identifiers(html, cohort.pseudonym_of_id())
    except Exception as exc:  # the manifest moved or changed: we cannot check, so we do not publish
        raise RunError(f"cannot check the book for patient IDs: the run's manifest could not be read ({exc})")
    if leaks:
        pages = sorted({p for p, _ in leaks})
        who = sorted({pid for _, pid in leaks})
        raise RunError(f"the book would publish patient IDs (of {', '.join(who[:10])}) on: {', '.join(pages[:10])}; "
                       "nothing was published")
    _replace_dir(html, run_dir / "book")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    return run_dir / "book" / "index.html"
