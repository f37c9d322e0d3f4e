"""Kernels forked from one process that did the imports (prrt.runner.forking): each is still a process of its own,
in its notebook's environment and folder, with its own random state; interrupts reach it, it ends with its launcher,
and its CPU is counted."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest
from jupyter_client.manager import KernelManager

from prrt.runner import forking

pytestmark = pytest.mark.skipif(not forking.available(), reason="kernels are forked on Linux only")

REPORT = ("import json, os, random, sys\n"
          "open(os.environ['PRRT_CHAPTER'] + '.json', 'w').write(json.dumps(dict(pid=os.getpid(), ppid=os.getppid(),\n"
          "    cwd=os.getcwd(), shared=os.environ.get('SHARED'), draw=random.random(),\n"
          "    preloaded=sorted(m for m in ('prrt.study.notebook', 'monai', 'torch._dynamo') if m in sys.modules))))\n")


@pytest.fixture(scope="module")
def server():
    """A server with the runner's imports (they take seconds; its kernels are ended by the tests that use them)."""
    s = forking.ForkServer({"SHARED": "from the runner"})
    yield s
    s.stop()


def kernel(server, folder, chapter):
    km = KernelManager(kernel_name="python3", kernel_spec_manager=server.kernel_spec_manager())
    km.start_kernel(cwd=str(folder), env={**os.environ, "SHARED": "from the runner", "PRRT_CHAPTER": chapter})
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=300)
    return km, kc


def test_two_kernels_of_one_server_are_processes_of_their_own_with_the_imports_done(server, tmp_path, capfd):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "early").mkdir()
    early = kernel(server, tmp_path / "early", "early")  # forked before the server's later imports
    deadline = time.monotonic() + 300
    while server.pending() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.pending() == []
    kernels = [kernel(server, tmp_path / name, name) for name in "ab"]
    for km, kc in kernels:
        assert kc.execute_interactive(REPORT, timeout=60)["content"]["status"] == "ok"
    seen = {name: json.loads((tmp_path / name / f"{name}.json").read_text()) for name in "ab"}
    assert seen["a"]["pid"] != seen["b"]["pid"]
    assert seen["a"]["ppid"] == seen["b"]["ppid"] == server.process.pid
    assert all(s["cwd"] == str(tmp_path / name) and s["shared"] == "from the runner" for name, s in seen.items())
    assert all(s["preloaded"] == ["monai", "prrt.study.notebook", "torch._dynamo"] for s in seen.values())
    assert early[1].execute_interactive(REPORT, timeout=60)["content"]["status"] == "ok"
    # its launcher waited for the server's first imports and was answered before the later ones were all done
    early_seen = json.loads((tmp_path / "early" / "early.json").read_text())["preloaded"]
    assert "prrt.study.notebook" in early_seen and "torch._dynamo" not in early_seen
    kernels.append(early)
    assert seen["a"]["draw"] != seen["b"]["draw"]  # unseeded random state is drawn afresh, as in a new process
    cpu = []
    for km, kc in kernels:
        kc.stop_channels()
        launcher = km.provisioner.pid
        km.shutdown_kernel(now=False)
        cpu.append(server.kernel_cpu_s(launcher))
    assert all(0 < c < 60 for c in cpu), cpu
    assert not any(psutil.pid_exists(s["pid"]) for s in seen.values())
    # a kernel with a parent (JPY_PARENT_PID, which ipykernel reads as it is imported) prints no connection banner
    assert "--existing" not in capfd.readouterr().out


def test_a_request_cut_off_does_not_stop_the_server(server):
    import socket

    server.pending()  # (waits until it listens)
    for partial in (b"", b"\x00\x00\x01\x00{"):  # nothing, and a header whose message never comes
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(server.path)
            conn.sendall(partial)
    assert server.pending(wait_s=0) is not None and server.process.poll() is None


def test_an_interrupt_reaches_a_forked_kernel(server, tmp_path):
    km, kc = kernel(server, tmp_path, "loop")
    msg_id = kc.execute("import time\nfor _ in range(600):\n    time.sleep(0.1)")
    time.sleep(1.0)
    t0 = time.monotonic()
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=30)
    while reply["parent_header"]["msg_id"] != msg_id:  # (the answer to wait_for_ready's request may come first)
        reply = kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - t0 < 10
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def test_a_forked_kernel_ends_when_its_launcher_is_killed(server, tmp_path):
    km, kc = kernel(server, tmp_path, "orphan")
    kc.execute_interactive(REPORT, timeout=60)
    pid = json.loads((tmp_path / "orphan.json").read_text())["pid"]
    launcher = km.provisioner.pid
    os.kill(launcher, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.1)
    assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # ended, and the server has yet to reap it
    assert server.kernel_cpu_s(launcher) > 0
    assert not psutil.pid_exists(pid)
    kc.stop_channels()
    km.cleanup_resources()


def test_the_server_ends_the_kernels_nobody_stopped_and_reports_its_own_cpu(tmp_path):
    server = forking.ForkServer({}, imports=["ipykernel.kernelapp", "sympy"], later=[])
    km, kc = kernel(server, tmp_path, "left")
    kc.execute_interactive(REPORT, timeout=60)
    pid = json.loads((tmp_path / "left.json").read_text())["pid"]
    assert server.cpu_s() > 0  # its imports, measured by itself
    server.stop()
    assert not psutil.pid_exists(pid)
    assert not os.path.exists(server.folder or server.path)
    assert server.process.returncode == 0
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def test_forking_can_be_turned_off_and_is_off_where_pidfd_open_is_refused(monkeypatch):
    monkeypatch.setenv(forking.ENV, "off")
    assert not forking.available()
    monkeypatch.setenv(forking.ENV, "on")
    assert forking.available()

    def refused(pid):
        raise PermissionError(1, "Operation not permitted")  # as under an older container's seccomp profile

    monkeypatch.setattr(forking.os, "pidfd_open", refused)
    assert not forking.available()


def test_without_forking_each_kernel_imports_for_itself(monkeypatch, tmp_path):
    """Where kernels are not forked (``PRRT_FORK_KERNELS=off``, or not Linux), the runner's kernels are started by
    jupyter_client as before: children of the runner, in the notebook's environment, with the preload done."""
    from prrt.runner.execute import KernelsAhead

    monkeypatch.setenv(forking.ENV, "off")
    kernels = KernelsAhead(tmp_path, {"SHARED": "from the runner"}, lambda nb: {"PRRT_CHAPTER": nb.stem})
    assert kernels.server is None
    km = kernels.take(tmp_path / "plain.ipynb")
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=300)
    assert kc.execute_interactive(REPORT, timeout=60)["content"]["status"] == "ok"
    seen = json.loads((tmp_path / "plain.json").read_text())
    assert seen["ppid"] == os.getpid() and seen["shared"] == "from the runner" and seen["cwd"] == str(tmp_path)
    assert "prrt.study.notebook" in seen["preloaded"]
    kc.stop_channels()
    assert kernels.stop(km) == 0.0
    kernels.stop_all()


def test_a_server_that_failed_fails_its_launcher_at_once_and_the_runner_starts_kernels_without_it(monkeypatch,
                                                                                                  tmp_path):
    import subprocess
    import sys

    from prrt.runner import execute

    broken = forking.ForkServer({}, imports=["no_such_module_for_prrt"], later=[])
    broken.process.wait(timeout=60)
    t0 = time.monotonic()
    launcher = subprocess.run([sys.executable, forking.__file__, "launch", broken.path, str(broken.process.pid),
                               "-f", str(tmp_path / "kernel.json")], capture_output=True, text=True, timeout=60, check=False)
    assert launcher.returncode != 0 and time.monotonic() - t0 < 30
    assert f"the kernel server (process {broken.process.pid}) ended" in launcher.stderr
    monkeypatch.setattr(execute.forking, "server_for", lambda env, later: (broken, False))
    kernels = execute.KernelsAhead(tmp_path, {}, lambda nb: {"PRRT_CHAPTER": nb.stem})
    km = kernels.take(tmp_path / "fallback.ipynb")
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=300)
    assert kc.execute_interactive(REPORT, timeout=60)["content"]["status"] == "ok"
    assert json.loads((tmp_path / "fallback.json").read_text())["ppid"] == os.getpid()
    kc.stop_channels()
    kernels.stop(km)
    kernels.stop_all()
    assert kernels.server_cpu_s is None  # nothing to say of a server that never served
    broken.stop()


def test_a_run_of_one_or_two_notebooks_asks_the_server_for_no_later_imports(monkeypatch, tmp_path):
    from prrt.runner import execute

    asked = []
    monkeypatch.setattr(execute.forking, "server_for", lambda env, later: asked.append(later) or (None, False))
    for n in (1, 2, 3, 7):
        execute.KernelsAhead(tmp_path, {}, lambda nb: {}, notebooks=n)
    assert asked == [(), (), forking.LATER_IMPORTS, forking.LATER_IMPORTS]


def test_later_runs_of_one_process_reuse_its_server_while_the_environment_is_the_same(monkeypatch, tmp_path):
    """A second run in the same environment forks from the first run's server (its imports done, a fraction of its
    CPU), asking it for the later imports a run of one notebook did not; another environment (a variable read at
    import) gets a server of its own and the old one is stopped; so does a server that has died."""
    from prrt.runner.execute import KernelsAhead

    forking.stop_shared()
    monkeypatch.setenv("SHARED", "from the runner")

    def run(notebooks: int, chapter: str):
        kernels = KernelsAhead(tmp_path, {}, lambda nb: {"PRRT_CHAPTER": nb.stem}, notebooks=notebooks)
        km = kernels.take(tmp_path / f"{chapter}.ipynb")
        kc = km.blocking_client()
        kc.start_channels()
        kc.wait_for_ready(timeout=300)
        assert kc.execute_interactive(REPORT, timeout=60)["content"]["status"] == "ok"
        kc.stop_channels()
        assert kernels.stop(km) > 0  # the forked kernel's CPU, from its server
        kernels.stop_all()
        return kernels, json.loads((tmp_path / f"{chapter}.json").read_text())

    asked = []
    real = forking.ForkServer.import_later
    monkeypatch.setattr(forking.ForkServer, "import_later",
                        lambda self, m: asked.append((tuple(m), real(self, m))) or asked[-1][1])
    first, seen = run(1, "one")
    assert not first.reused and first.server_cpu_s > 1  # the imports: seconds
    assert seen["ppid"] == first.server.process.pid and seen["preloaded"] == ["prrt.study.notebook"]
    assert asked == []
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "another test")  # no import reads it
    second, seen = run(7, "two")
    assert second.reused and second.server is first.server and seen["ppid"] == first.server.process.pid
    assert second.server_cpu_s < first.server_cpu_s
    # the run asked for the later imports, and the server put those it had not imported on its list (it imports them
    # while it waits: the test of two kernels above)
    assert [m for m, _ in asked] == [forking.LATER_IMPORTS] and "monai" in asked[0][1]
    assert set(asked[0][1]) <= set(forking.LATER_IMPORTS)
    monkeypatch.setenv("OMP_NUM_THREADS", "1" if os.environ.get("OMP_NUM_THREADS") != "1" else "2")
    other, seen = run(1, "four")
    assert not other.reused and other.server is not first.server and seen["ppid"] == other.server.process.pid
    assert first.server.process.poll() is not None and not first.server.alive()  # stopped
    other.server.process.kill()
    other.server.process.wait()
    last, _ = run(1, "five")
    assert not last.reused and last.server.alive()
    forking.stop_shared()
    assert not last.server.alive()


def test_a_kernel_its_run_left_behind_ends_with_the_run_and_the_kept_server_goes_on(tmp_path):
    """A kernel taken for a notebook and never stopped (an error past papermill): the end of the run kills its
    launcher, and with it the forked kernel, without stopping the server that a later run may reuse."""
    from prrt.runner.execute import KernelsAhead

    kernels = KernelsAhead(tmp_path, {}, lambda nb: {"PRRT_CHAPTER": nb.stem}, notebooks=1)
    km = kernels.take(tmp_path / "left.ipynb")
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=300)
    assert kc.execute_interactive(REPORT, timeout=60)["content"]["status"] == "ok"
    kc.stop_channels()
    pid = json.loads((tmp_path / "left.json").read_text())["pid"]
    launcher = km.provisioner.process
    kernels.stop_all()
    assert launcher.poll() is not None and not psutil.pid_exists(pid)
    assert kernels.server.alive() and kernels.server_cpu_s is not None
    forking.stop_shared()


def test_a_run_starts_its_kernel_server_before_it_checks_the_cohort(monkeypatch, tmp_path):
    """The server imports while the runner validates the cohort (on the other core), not after it."""
    from prrt.runner import execute

    forking.stop_shared()
    seen = []

    def checking(*args, **kwargs):
        server, reused = forking.server_for(execute.QUIET_BARS)  # the run's, started already
        seen.append((reused, server.alive()))
        raise RuntimeError("stop here")

    monkeypatch.setattr(execute, "load_cohort", checking)
    with pytest.raises(RuntimeError, match="stop here"):
        execute.run(tmp_path / "manifest.yaml", "smoke", tmp_path / "run", progress=False, log=lambda *a: None)
    assert seen == [(True, True)]
    forking.stop_shared()
