"""Where a run's time goes: phases timed in every process, gathered into ``run.json`` and the book.

A phase (:data:`PHASES`) is timed with ``with phase("training", model=spec.name):`` where the work happens:
preprocessing (:mod:`prrt.imaging`), loading the inputs of a chapter, training and prediction (the fold jobs
of :mod:`prrt.learn.loop`), augmentation, pretraining, Grad-CAM, the statistics of the summary, figures (the
book build, which runs after every notebook, is timed by the runner: ``book_build_s`` in ``run.json``). Time
is *exclusive*: a phase inside another (augmentation inside training) pauses the outer one, so the phases of
a process add up to no more than its wall time. A phase without a model takes the model of
the phase it sits in.

Each process adds its phases up by (chapter, model, phase) and, when a top-level phase ends, writes the sums
to ``<PRRT_TIMINGS>/<chapter>-<pid>.json`` (:data:`ENV`; ``prrt run`` sets it, with the chapter in
:data:`CHAPTER_ENV`, for every notebook; without it nothing is written). A fold job that runs in another
process (a Dask worker) times itself inside :func:`capture` and hands its sums back with its results; the
notebook's process adds them in (:func:`merge`), marked with the worker's process, so that the run can tell
time spent in the notebook's own process from time spent beside it. :func:`read_timings` gathers a run's
files into rows and :func:`chapter_table` / :func:`model_table` make the tables of the book's "This run" page.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

ENV = "PRRT_TIMINGS"  # folder the processes of a run write their phase sums to
CHAPTER_ENV = "PRRT_CHAPTER"  # the notebook a process works for

#: The phases, in the order the book's table shows them.
PHASES = ("preprocessing", "loading inputs", "pretraining", "training", "augmentation", "prediction",
          "restoring fold models", "importance", "statistics", "Grad-CAM", "figures")

_stack: list[list] = []  # the open phases: [name, model, wall so far, cpu so far, wall start, cpu start]
_sums: dict[tuple, list] = {}  # (chapter, model, phase, pid) -> [wall_s, cpu_s, calls]
_captures: list[dict] = []  # the sums of the fold jobs being captured (innermost last)
_thread = threading.local()  # per thread: whether it times (untimed)


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _add(sums: dict, key: tuple, wall: float, cpu: float, calls: int = 1) -> None:
    total = sums.setdefault(key, [0.0, 0.0, 0])
    total[0] += wall
    total[1] += cpu
    total[2] += calls


@contextmanager
def phase(name: str, model: str | None = None):
    """Time the block as ``name`` (one of :data:`PHASES`), of ``model`` (default: the enclosing phase's).

    A thread that called :func:`untimed` (a helper thread of the image preprocessing,
    :func:`prrt.imaging.preprocess_cohort`) times nothing: its work counts in the phase of the thread that waits
    for it."""
    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r}; the phases are {', '.join(PHASES)}")
    if getattr(_thread, "untimed", False):
        yield
        return
    wall, cpu = _now()
    if _stack:  # pause the enclosing phase
        outer = _stack[-1]
        outer[2] += wall - outer[4]
        outer[3] += cpu - outer[5]
        model = model or outer[1]
    _stack.append([name, model, 0.0, 0.0, wall, cpu])
    try:
        yield
    finally:
        wall, cpu = _now()
        name, model, w, c, w0, c0 = _stack.pop()
        key = (os.environ.get(CHAPTER_ENV, ""), model or "", name, os.getpid())
        _add(_captures[-1] if _captures else _sums, key, w + wall - w0, c + cpu - c0)
        if _stack:  # resume the enclosing phase
            _stack[-1][4:] = [wall, cpu]
        elif not _captures:
            flush()


def untimed() -> None:
    """Time no phase in this thread (a helper thread whose work a phase of another thread covers)."""
    _thread.untimed = True


@contextmanager
def capture():
    """Collect the phases of the block (a fold job) apart; yields the dict they go to, for :func:`merge`."""
    sums: dict = {}
    _captures.append(sums)
    try:
        yield sums
    finally:
        _captures.remove(sums)


def merge(sums: dict | None) -> None:
    """Add the sums of a captured job (possibly from another process, which may not know the chapter) to this
    process's, under this process's chapter, and write them."""
    chapter = os.environ.get(CHAPTER_ENV, "")
    for (_, model, name, pid), (wall, cpu, calls) in (sums or {}).items():
        _add(_captures[-1] if _captures else _sums, (chapter, model, name, pid), wall, cpu, calls)
    if not _stack and not _captures:
        flush()


def flush() -> Path | None:
    """Write this process's sums to the run's timing folder (:data:`ENV`); ``None`` when it has none."""
    folder = os.environ.get(ENV)
    if not folder or not _sums:
        return None
    path = Path(folder) / f"{os.environ.get(CHAPTER_ENV) or 'process'}-{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"chapter": ch, "model": m, "phase": ph, "pid": pid, "wall_s": w, "cpu_s": c, "calls": n}
            for (ch, m, ph, pid), (w, c, n) in _sums.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "rows": rows}))
    tmp.replace(path)
    return path


def read_timings(folder) -> pd.DataFrame:
    """The phase sums every process of a run wrote to ``folder``: one row per (chapter, model, phase, process);
    ``in_notebook`` tells the notebook's own process from the workers it sent jobs to."""
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        doc = json.loads(path.read_text())
        rows += [{**r, "in_notebook": r["pid"] == doc["pid"]} for r in doc["rows"]]
    cols = ["chapter", "model", "phase", "pid", "wall_s", "cpu_s", "calls", "in_notebook"]
    return pd.DataFrame(rows, columns=cols)


def chapter_table(rows: pd.DataFrame, notebooks: list[dict]) -> pd.DataFrame:
    """Seconds per chapter (rows) and phase (columns), summed over processes, with the notebook's wall time and
    CPU time, the cores it kept busy, and ``other``: the wall time its own process spent outside every phase
    (starting the kernel, imports, tables, figures). ``notebooks``: ``run.json``'s records
    (``name``, ``wall_time_s``, ``cpu_time_s``)."""
    out = []
    for nb in notebooks:
        mine = rows[rows["chapter"] == nb["name"]] if len(rows) else rows
        row = {"notebook": nb["name"]}
        for ph in PHASES:
            row[ph] = float(mine.loc[mine["phase"] == ph, "wall_s"].sum())
        row["other"] = max(0.0, nb["wall_time_s"] - float(mine.loc[mine["in_notebook"].astype(bool), "wall_s"].sum()))
        row["wall"] = float(nb["wall_time_s"])
        cpu = nb.get("cpu_time_s")
        row["cores busy"] = cpu / nb["wall_time_s"] if cpu is not None and nb["wall_time_s"] > 0 else float("nan")
        out.append(row)
    table = pd.DataFrame(out).set_index("notebook") if out else pd.DataFrame()
    return table.loc[:, (table != 0).any(axis=0)] if len(table) else table  # phases no chapter spent time in go


def model_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Seconds per (notebook, model) (rows) and phase (columns), summed over its fold jobs and processes, with
    the number of fits (calls of ``training``), largest total first. A model of one notebook fitted again in
    another (chapter 04's cross-fitted CNNs) is a row of each."""
    if rows.empty or not (rows["model"] != "").any():
        return pd.DataFrame()
    named = rows[rows["model"] != ""]
    index = ["chapter", "model"]
    table = named.pivot_table(index=index, columns="phase", values="wall_s", aggfunc="sum", fill_value=0.0)
    table = table[[p for p in PHASES if p in table.columns]]
    fits = named[named["phase"] == "training"].groupby(index)["calls"].sum()
    table["fits"] = fits.reindex(table.index).fillna(0).astype(int)
    table["total"] = table.drop(columns="fits").sum(axis=1)
    return table.sort_values("total", ascending=False)
