"""Building the book of a run (:func:`build_book`), which is never published with an identifier in it.

``build_book`` renders the executed notebooks of a run, with the hand-written chapters and a page that
records the run (``book/this_run.md``, from ``run.json``), into ``<run_dir>/book/`` with Jupyter Book 1.x
(``execute_notebooks: 'off'``), through a staging directory. The book's copies of the notebooks keep only
the file names of path parameters and leave out what the cells wrote to stderr. It refuses to publish a
book in which any file contains a patient ID, a rare value of a declared text column, an image path or
the manifest's folder of either cohort (:func:`prrt.data.identifier_tokens`), or the repository's, the
Python environment's or the home folder. The built book is then opened in headless Chromium when a
browser is found (:mod:`prrt.runner.browser`; ``PRRT_BROWSER_CHECK``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd

from ..data import (
    checkable_tokens,
    find_identifiers,
    fixed_text,
    identifier_tokens,
    load_cohort,
)
from ..provenance import BOOK_SOURCES, REPO_ROOT, repository_url
from ..timing import chapter_table, model_table
from .browser import browser_missing_reason, check_book
from .lock import RunError, exclusive, replace_dir

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


def run_page(info: dict) -> str:
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
        f"| model fits | {engine_text(info.get('engine'))} |",
        f"| started / finished (UTC) | {info['started']} / {info['finished']} |",
        "", *_time_page(info), "## Package versions", "", "| package | version |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info["packages"].items()]
    lines += ["", "## Profile", "", "```json", json.dumps(info["profile"], indent=2), "```", "",
              "The full record, with the SHA-256 of every input image, is `run.json` in the run directory.", ""]
    return "\n".join(lines)


def _markdown(table: pd.DataFrame, index: list[str], digits: int = 0) -> list[str]:
    """A small table as Markdown: seconds as whole numbers (blank for none), other numbers with ``digits``."""
    def cell(v):
        if isinstance(v, str):
            return v
        if pd.isna(v) or v == 0:
            return ""
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    t = table.reset_index()
    head = [*index, *[c for c in t.columns if c not in index]]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell(r[c]) for c in head) + " |" for _, r in t.iterrows()]
    return out


def _time_page(info: dict) -> list[str]:
    """Where the run's time went (``run.json``'s ``timings``, :mod:`prrt.timing`): seconds per notebook and phase,
    and per model."""
    rows = pd.DataFrame(info.get("timings", []), columns=["chapter", "model", "phase", "pid", "wall_s", "cpu_s",
                                                          "calls", "in_notebook"])
    chapters = chapter_table(rows, info["notebooks"])
    cpu = [n.get("cpu_time_s") for n in info["notebooks"]]
    kernel_server = info.get("kernel_server") or {}
    server = kernel_server.get("import_cpu_time_s")  # forked kernels' shared imports
    total = {"wall": info["wall_time_s"], "cores busy": (sum(cpu) + (server or 0)) / info["wall_time_s"]
             if None not in cpu and info["wall_time_s"] else float("nan")}
    chapters.loc["**all**"] = pd.Series({**chapters.sum(numeric_only=True), **total})
    busy = chapters.pop("cores busy")
    chapters = chapters.round(0)
    chapters["cores busy"] = busy.map(lambda b: "" if pd.isna(b) else f"{b:.2f}")
    lines = ["## Where the time goes", "",
             ("Seconds of each notebook in each phase (summed over the processes that worked for it, so a phase "
              "run by two workers at once can add up to more than the notebook's wall time); *other* is the wall "
              "time the notebook's own process spent outside every phase (starting the kernel, imports, tables and "
              "figures); *cores busy* is the notebook's CPU time over its wall time. The book build (not in this "
              "table: it runs after this page is written) is `book_build_s` in `run.json`."), "",
             *_markdown(chapters, ["notebook"]), ""]
    if server is not None:
        origin, cpu = (("a process that an earlier run of the same Python process had started and that had done their "
                        "imports then", "of its CPU during this run") if kernel_server.get("reused") else
                       ("one process that did their imports once", "of CPU"))
        lines += [(f"The notebooks' kernels were forked from {origin} (`prrt.runner.forking`): {server:.0f} s {cpu}, "
                   "in the total's *cores busy* but in no notebook's."), ""]
    models = model_table(rows)
    if len(models):
        models = models.round(0)
        lines += ["Seconds per model (every fold job of the notebook; *fits*: the networks or forests fitted):", "",
                  *_markdown(models.rename_axis(["notebook", "model"]), ["notebook", "model"]), ""]
    return lines


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
    """Open every page of the built book in headless Chromium (:mod:`prrt.runner.browser`): the result goes to
    ``browser-check.json`` and a screenshot per chapter to ``screenshots/`` in the run folder. Problems are
    reported, not fatal (they do not endanger anything the book must not publish)."""
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


def build_book(run_dir, repo_root=None, log=print, lock: bool = True) -> Path:
    """Build the book of a completed run into ``<run_dir>/book``; returns its ``index.html``.

    ``lock=False`` when the caller (``run``) holds the run directory's lock already.
    """
    run_dir = Path(run_dir).resolve()
    if not lock:
        return _build_book(run_dir, repo_root, log)
    with exclusive(run_dir, "book", log, [run_dir / ".book-src", run_dir / ".book-out"],
                    f"the book build was abandoned; the previous book in {run_dir} (if any) is untouched"):
        return _build_book(run_dir, repo_root, log)


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
    (src / "book" / "this_run.md").write_text(run_page(info))
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
    manifest = (run_dir / info["inputs"]["manifest"]["path"]).resolve()
    try:
        cohort = load_cohort(manifest, check_images="none")
    except Exception as exc:  # the manifest moved or changed: we cannot check, so we do not publish
        raise RunError(f"cannot check the book for patient IDs: the run's manifest could not be read ({exc})")
    tokens = identifier_tokens(cohort)
    if info.get("external"):  # the external cohort's IDs, rare values and paths are as private
        path = (run_dir / info["external"]["inputs"]["manifest"]["path"]).resolve()
        try:
            external = load_cohort(path, check_images="none")
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
    replace_dir(html, run_dir / "book")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    return run_dir / "book" / "index.html"


# ---- book --------------------------------------------------------------------------------------
def engine_text(engine: dict | None) -> str:
    if not engine or engine.get("address") in (None, "sequential"):
        return "one after another, in each notebook's process"
    workers = f", {engine['workers']} workers" if engine.get("workers") else ""
    where = "a Dask cluster at a scheduler" if str(engine["address"]).startswith(("tcp://", "tls://")) \
        else f"Dask, {engine['address']}"
    return f"in parallel: {where}{workers}"
