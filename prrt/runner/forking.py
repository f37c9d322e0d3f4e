"""Notebook kernels forked from one process that has done the imports (Linux).

Every chapter's kernel used to import prrt, torch, scikit-learn and MONAI afresh: 3-5 s of CPU per kernel,
about 30 s of a smoke run's 50 and a large share of ``make test``, which runs the book more than a dozen times
(``benchmarks/DESIGN.md``, "Kernels forked from one import"). Here the runner starts one *kernel server* per run
(:class:`ForkServer`), which imports what every kernel imports (:data:`SERVER_IMPORTS`) once, then waits for
requests, and in between imports what the chapters import on first use (:data:`LATER_IMPORTS`; in runs of three
notebooks or more).

A notebook's kernel, as jupyter_client sees it, is a small launcher process (this file run as a script, so that it
imports nothing of prrt; the kernel spec is :meth:`ForkServer.kernel_spec_manager`). The launcher hands the server its
connection file, environment, working folder and standard streams; the server forks, and the child becomes an
ipykernel kernel with them. The launcher passes interrupts and terminations on and lives as long as its kernel; the
kernel exits at once when its launcher is gone (killed, for instance). Each notebook still runs in a fresh process of
its own, forked from a process that ran nothing but imports, in the environment the runner gave it: the server runs in
the runner's environment, and the variables that differ between notebooks (the chapter's name) are only read after
the imports. A process that runs the book more than once (a test session, a notebook that calls
:func:`prrt.runner.run` twice) keeps its server for the next run while the environment is the same
(:func:`server_for`), so that it imports once, not once a run. ``PRRT_FORK_KERNELS=off``, or a system without ``os.fork`` and ``os.pidfd_open``, gives every notebook a
kernel that imports for itself, as before.
"""

if __name__ == "__main__":  # run as a script: this folder must not shadow top-level modules
    import os as _os
    import sys as _sys

    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or ".") != _os.path.dirname(_os.path.abspath(__file__))]

import atexit
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Imported once by the kernel server before it forks its first kernel: what every chapter imports first
#: (``prrt.study``) and the chapters' own modules.
SERVER_IMPORTS = ("ipykernel.kernelapp", "prrt.study.notebook", "prrt.study.ch01_cohort", "prrt.study.ch02_labs",
                  "prrt.study.ch03_images", "prrt.study.ch04_fusion", "prrt.study.ch04_comparison",
                  "prrt.study.ch05_explain", "prrt.study.ch06_external", "prrt.study.ch07_reporting")
#: Imported by the server afterwards, one at a time while no kernel is asked for (so that the first chapter's kernel
#: does not wait for them): what the chapters import on first use, found by listing the modules each forked kernel
#: of a smoke run added: MONAI for the image chapters (2 s of CPU), statsmodels, lifelines, TorchIO, myst-nb, and
#: SymPy and torch._dynamo, which torch imports on a CNN's first training steps (1.3 s each). A kernel forked
#: before one of them was imported imports it for itself if it needs it.
LATER_IMPORTS = ("monai", "statsmodels.api", "lifelines", "torchio", "myst_nb", "sympy", "torch._dynamo")
ENV = "PRRT_FORK_KERNELS"
STARTUP_S = 300.0  # how long a launcher waits for the server to finish its imports


def available() -> bool:
    """Whether kernels are forked: Linux with ``os.fork``, ``os.pidfd_open`` that works (a container's seccomp
    profile may refuse it) and descriptors over a Unix socket, and not turned off by ``PRRT_FORK_KERNELS=off``."""
    if (os.environ.get(ENV, "on").lower() in ("off", "0", "false", "no") or sys.platform != "linux"
            or not hasattr(os, "pidfd_open") or not hasattr(socket, "send_fds")):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


def _send(conn: socket.socket, msg: dict, fds=()) -> None:
    data = json.dumps(msg).encode()
    frame = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(conn, [frame], list(fds))
    else:
        conn.sendall(frame)


def _recv(conn: socket.socket) -> tuple[dict, list]:
    head, fds, _, _ = socket.recv_fds(conn, 4, 3)
    if len(head) < 4:
        raise ConnectionError("the other end closed the connection")
    (size,) = struct.unpack("!I", head)
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the other end closed the connection")
        data += chunk
    return json.loads(data), fds


def _ask(path: str, msg: dict, fds=(), wait_s: float = 0.0, server: int | None = None) -> dict:
    """One request to the server at ``path`` and its answer (waiting up to ``wait_s`` for the server to listen, and
    not once the process ``server`` has ended)."""
    deadline = time.monotonic() + wait_s
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            if server is not None and not _alive(server):
                raise ConnectionError(f"the kernel server (process {server}) ended before it could start a kernel; "
                                      "its error is above (PRRT_FORK_KERNELS=off starts kernels without it)") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with conn:
        _send(conn, msg, fds)
        return _recv(conn)[0]


# --- the server -------------------------------------------------------------------------------------------------------

def serve(path: str, imports=SERVER_IMPORTS, later=LATER_IMPORTS) -> None:
    """Import ``imports``, then answer requests at the Unix socket ``path`` until asked to stop or the runner is gone,
    importing ``later`` one by one while no request waits. Requests: ``fork`` (a kernel for a launcher), ``cpu`` (the
    CPU seconds of a launcher's finished kernel, with the processes it waited for), ``pending`` (what is still to be
    imported), ``later`` (more modules to import so), ``usage`` (the server's own CPU seconds so far), ``stop``."""
    import gc
    import importlib

    # what ipykernel sets before a kernel imports matplotlib, so that the forked kernels draw inline
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for name in imports:
        importlib.import_module(name)
    later = list(later)
    runner = os.getppid()
    kernels: dict[int, int] = {}  # launcher pid -> kernel pid
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".new")
    listener.listen(16)
    os.rename(path + ".new", path)  # launchers connect only once the first imports are done
    try:
        while os.getppid() == runner:
            if not select.select([listener], [], [], 0.0 if later else 1.0)[0]:
                if later:
                    importlib.import_module(later.pop(0))
                continue
            conn, _ = listener.accept()
            with conn:
                try:
                    msg, fds = _recv(conn)
                except (OSError, ValueError) as exc:  # a launcher that died before it asked: the others go on
                    print(f"prrt kernel server: a request was lost ({exc})", file=sys.stderr)
                    continue
                if msg["op"] == "fork":
                    sys.stdout.flush(), sys.stderr.flush()
                    # what the server imported lives as long as the kernel: kept out of the kernel's garbage
                    # collections, each of which would otherwise walk every object of torch, MONAI, pandas, ... (a
                    # full collection took 0.2 s; statsmodels' Holm adjustment asks for one) and touch their pages
                    gc.freeze()
                    pid = os.fork()
                    if pid == 0:
                        listener.close()
                        conn.close()
                        _become_kernel(msg, fds)  # never returns
                    for fd in fds:
                        os.close(fd)
                    kernels[msg["launcher"]] = pid
                    _send(conn, {"pid": pid})
                elif msg["op"] == "cpu":
                    pid = kernels.pop(msg["launcher"], None)
                    cpu = None
                    if pid is not None:
                        _, _, usage = os.wait4(pid, 0)
                        cpu = usage.ru_utime + usage.ru_stime
                    _send(conn, {"cpu_s": cpu})
                elif msg["op"] == "pending":
                    _send(conn, {"modules": later})
                elif msg["op"] == "later":  # a later run of a server that was started without them
                    later += [m for m in msg["modules"] if m not in later and m not in sys.modules]
                    _send(conn, {"modules": later})
                elif msg["op"] == "usage":
                    usage = os.times()
                    _send(conn, {"cpu_s": usage.user + usage.system})
                elif msg["op"] == "stop":
                    _send(conn, {})
                    break
    finally:
        listener.close()
        for pid in kernels.values():  # kernels whose CPU nobody asked for (a failed run): end and reap them
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _become_kernel(msg: dict, fds: list) -> None:
    """In the forked child: take the launcher's streams, environment and folder, and run an ipykernel kernel; exit
    when it ends or when the launcher is gone."""
    import random
    import threading

    code = 1
    try:
        os.setsid()  # a signal to the server's group is not one to this kernel
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(msg["env"])
        os.chdir(msg["cwd"])
        # a fresh process draws its unseeded random state from the system; so does each forked kernel
        random.seed()
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        launcher = os.pidfd_open(msg["launcher"])

        def watch() -> None:
            select.select([launcher], [], [])
            os._exit(1)

        threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
        from ipykernel.kernelapp import IPKernelApp

        argv = list(msg["argv"])
        if os.environ.get("JPY_PARENT_PID"):  # read by ipykernel at its import, in the server: given here instead
            argv.append(f"--IPKernelApp.parent_handle={int(os.environ['JPY_PARENT_PID'])}")
        sys.argv = ["ipykernel_launcher", *argv]
        IPKernelApp.launch_instance(argv=argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:  # noqa: BLE001 - the child must never return into the server's loop
        import traceback

        traceback.print_exc()
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush(), sys.stderr.flush()
        finally:
            os._exit(code)


# --- the launcher (what jupyter_client starts as the kernel) ----------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # an ended child that its parent has not yet reaped is a zombie ("Z")
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def launch(path: str, server: int, argv: list[str]) -> int:
    """Ask the server at ``path`` (the process ``server``) for a kernel with ``argv`` (``-f CONNECTION_FILE``, ...) and this process's
    environment, folder and streams; pass SIGINT, SIGTERM and SIGHUP on to it; return when it has exited."""
    answer = _ask(path, {"op": "fork", "argv": argv, "env": dict(os.environ), "cwd": os.getcwd(),
                         "launcher": os.getpid()}, fds=(0, 1, 2), wait_s=STARTUP_S, server=server)
    kernel = answer["pid"]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: _pass_on(kernel, signum))
    try:
        handle = os.pidfd_open(kernel)
    except ProcessLookupError:
        return 0
    while not select.select([handle], [], [])[0]:
        pass
    return 0


def _pass_on(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# --- the runner's side ---------------------------------------------------------------------------------------------

class ForkServer:
    """A kernel server: started in the runner's environment (plus ``env``) and its own session, so that a Ctrl-C in
    the terminal reaches the runner, which stops the kernels, and not the kernels themselves. It ends with the
    process that started it."""

    def __init__(self, env: dict, imports=SERVER_IMPORTS, later=LATER_IMPORTS):
        self.folder = tempfile.mkdtemp(prefix="prrt-kernels-")  # a Unix socket's path must be short
        self.path = os.path.join(self.folder, "server")
        self.environment = {**os.environ, **env}
        self.process = subprocess.Popen([sys.executable, __file__, "serve", self.path, ",".join(imports),
                                         ",".join(later)], env=self.environment,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.folder is not None and self.process.poll() is None

    def cpu_s(self) -> float:
        """The server's own CPU seconds so far (its imports; not its kernels')."""
        return _ask(self.path, {"op": "usage"}, wait_s=STARTUP_S, server=self.process.pid)["cpu_s"]

    def import_later(self, modules) -> list[str]:
        """Have the server import ``modules`` too while it waits (those not imported yet); returns what is pending."""
        return _ask(self.path, {"op": "later", "modules": list(modules)}, wait_s=STARTUP_S,
                    server=self.process.pid)["modules"]

    def kernel_spec_manager(self):
        """A kernel spec manager whose ``python3`` kernel is a launcher of this server."""
        from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

        argv = [sys.executable, __file__, "launch", self.path, str(self.process.pid), "-f", "{connection_file}"]

        class Specs(KernelSpecManager):
            def get_kernel_spec(self, kernel_name, *args, **kwargs):
                return KernelSpec(argv=argv, display_name="Python 3", language="python", interrupt_mode="signal")

        return Specs()

    def pending(self, wait_s: float = STARTUP_S) -> list[str]:
        """What the server has still to import (its later imports), once it listens."""
        return _ask(self.path, {"op": "pending"}, wait_s=wait_s, server=self.process.pid)["modules"]

    def kernel_cpu_s(self, launcher_pid: int) -> float:
        """The CPU seconds of the finished kernel of the launcher ``launcher_pid`` (0 when it had none)."""
        if self.process.poll() is not None:
            return 0.0
        return _ask(self.path, {"op": "cpu", "launcher": launcher_pid}).get("cpu_s") or 0.0

    def stop(self) -> None:
        """Stop the server (it ends and reaps any kernel still running) and remove its folder; once."""
        if self.folder is None:
            return
        try:
            if self.process.poll() is None:
                try:
                    _ask(self.path, {"op": "stop"}, wait_s=0.0)
                except OSError:
                    self.process.terminate()
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            for name in ("server", "server.new"):
                Path(self.folder, name).unlink(missing_ok=True)
            os.rmdir(self.folder)
            self.folder = None


_shared: list[ForkServer] = []  # the server that later runs of this process may reuse (at most one)
#: Variables that change between runs of one process and that no import reads (pytest names each test in one):
#: a server started before they changed is still the one for the run. The kernels get them, from their launchers.
VOLATILE = ("PYTEST_CURRENT_TEST",)


def _same_environment(a: dict, b: dict) -> bool:
    return ({k: v for k, v in a.items() if k not in VOLATILE} == {k: v for k, v in b.items() if k not in VOLATILE})


def server_for(env: dict, later=()) -> tuple[ForkServer, bool]:
    """The kernel server for a run in this process's environment plus ``env``: the one an earlier run of this process
    started, while it is alive and the environment is the same but for :data:`VOLATILE` (a variable read at import,
    such as ``OMP_NUM_THREADS``, would otherwise differ between the server's imports and the kernel), else a new one
    (the old one stopped). ``later``: modules the server should import while it waits (:data:`LATER_IMPORTS`). Returns the
    server and whether it was reused. The server is stopped when this process exits (and ends by itself when this
    process is gone)."""
    environment = {**os.environ, **env}
    if _shared and _shared[0].alive() and _same_environment(_shared[0].environment, environment):
        server = _shared[0]
        if later:
            server.import_later(later)
        return server, True
    stop_shared()
    server = ForkServer(env, later=later)
    _shared.append(server)
    return server, False


@atexit.register
def stop_shared() -> None:
    """Stop the server kept for later runs of this process (if any)."""
    while _shared:
        _shared.pop().stop()


if __name__ == "__main__":
    if _sys.argv[1] == "serve":
        serve(_sys.argv[2], *[[m for m in arg.split(",") if m] for arg in _sys.argv[3:5]])
    elif _sys.argv[1] == "launch":
        _sys.exit(launch(_sys.argv[2], int(_sys.argv[3]), _sys.argv[4:]))
    else:
        raise SystemExit(f"usage: {__file__} serve SOCKET MODULE,... MODULE,... | launch SOCKET SERVER_PID -f CONNECTION_FILE")
