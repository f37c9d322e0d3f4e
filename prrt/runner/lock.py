"""The run folder's lock, the signals that interrupt a run, and how a finished folder replaces a run folder.

One process at a time works on a run directory: ``prrt run`` and ``prrt book`` hold an exclusive lock
(:class:`RunLock`, ``.<name>.lock`` beside it); a second one gets :class:`RunLocked`, naming the holder
(the command then exits with status 2). :func:`exclusive` holds the lock and turns SIGTERM and Ctrl-C
into :class:`RunInterrupted` (the notebook kernels are killed, the scratch folders removed).
:func:`replace_dir` puts a finished folder in place of the run folder; :func:`keep_failed` keeps a failed
attempt in ``.<name>.failed`` for inspection. :class:`RunError` is what a failed run or book build
raises: the previous run and book are untouched.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
from pathlib import Path


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
        os.write(fd, json.dumps({"pid": os.getpid(), "host": platform.node(), "started": utc_now(),
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


def replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` in place of ``target`` (two renames; the old one is deleted only afterwards)."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old)


@contextlib.contextmanager
def exclusive(run_dir: Path, command: str, log, scratch: list[Path], abandoned: str):
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


def keep_failed(staging: Path, run_dir: Path) -> Path:
    """Move a failed attempt to ``.<name>.failed`` beside the run (replacing an older one); returns that folder."""
    failed = run_dir.with_name(f".{run_dir.name}.failed")
    if failed.exists():
        shutil.rmtree(failed)
    os.replace(staging, failed)
    return failed
