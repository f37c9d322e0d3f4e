"""Per-patient image work on threads: :func:`each_patient`.

Reading NIfTI files, resampling with SimpleITK/TorchIO and most of numpy leave Python's lock, so a few threads
keep the cores of a small machine busy where a loop over patients did not (measured on 2 cores: preprocessing
took 0.7 times as long on two threads as on one, the lesion features 0.7 times). Each patient is computed alone,
as by the loop, so the results are the loop's.
"""

from __future__ import annotations

import os

from ..timing import untimed


def default_workers() -> int:
    """How many threads or processes per-patient work gets when the caller names none: one per core this process may
    run on, up to 4 (also the synthetic cohort's writers, :func:`prrt.data.phantoms.map_jobs`)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, cores)


def each_patient(fn, patients: list, desc: str, progress: bool = True, threads: int | None = None) -> list:
    """``[fn(p) for p in patients]``, on ``threads`` threads (default: :func:`default_workers`) with a progress bar.

    The threads time no phase (:func:`prrt.timing.untimed`): the caller's phase covers their work. Results are
    taken in the order of ``patients``: the first of them that failed raises its error (which names it), once the
    patients before it are done; the patients not yet started are cancelled, those running finish.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    threads = max(1, threads or default_workers())
    with ThreadPoolExecutor(threads, initializer=untimed) as pool:
        futures = [pool.submit(fn, p) for p in patients]
        try:
            return [f.result() for f in tqdm(futures, desc=desc, unit="patient", disable=not progress)]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
