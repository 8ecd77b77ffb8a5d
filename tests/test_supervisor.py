"""Backend lifecycle against the fake backend, run as real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from config_builder import entry, make_config
from fake_backend_proc import SCRIPT
from net import eventually, free_port, wait_until
from slm_server.backends.spec import LaunchSpec
from slm_server.config import ModelEntry
from slm_server.supervisor import (
    BackendFailed,
    BackendProcess,
    RestartPolicy,
    Supervisor,
    watchdog,
)
from slm_server.supervisor.log_writer import LogWriter
from slm_server.supervisor.logs import BackendLog
from slm_server.supervisor.orphans import WATCHDOG_ENV, guarded_argv

FAST = RestartPolicy(startup_timeout_s=10, max_start_failures=3, backoff_s=(0.05,), stop_grace_s=2)
ON_LINUX = sys.platform.startswith("linux")


@pytest.fixture(params=["default", "watchdog"])
def orphan_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test as is, then with backends under the watchdog (as always on macOS)."""
    if request.param == "watchdog":
        monkeypatch.setenv(WATCHDOG_ENV, "1")
    else:
        monkeypatch.delenv(WATCHDOG_ENV, raising=False)
    return str(request.param)


def family(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (under the watchdog: the backend too)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def alive(process: psutil.Process) -> bool:
    try:  # is_running() is also False once the PID belongs to another process
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def fake_spec(entry_: ModelEntry, args: Sequence[str] = ()) -> LaunchSpec:
    return LaunchSpec([sys.executable, str(SCRIPT), "--port", str(entry_.port), *args])


def make_process(
    tmp_path: Path,
    args: Sequence[str] = (),
    policy: RestartPolicy = FAST,
    spec: LaunchSpec | None = None,
) -> BackendProcess:
    model = make_config({"m": entry("m-fake", free_port())}).models["m"]
    launch_spec = spec or fake_spec(model, args)
    return BackendProcess("m", model, lambda: launch_spec, BackendLog(tmp_path / "m.log"), policy)


async def ready(process: BackendProcess) -> None:
    process.start()
    await asyncio.wait_for(process.ensure_ready(), 15)


async def test_start_waits_for_health_then_serves(tmp_path: Path) -> None:
    process = make_process(tmp_path, ["--loading-seconds", "0.5"])
    try:
        process.start()
        await eventually(lambda: process.pid is not None, 10, "the process to be spawned")
        assert process.snapshot()["state"] == "starting"  # alive but still "loading"
        await asyncio.wait_for(process.ensure_ready(), 10)
        assert process.snapshot()["state"] == "ready"
        assert process.pid is not None and psutil.pid_exists(process.pid)
    finally:
        await process.stop()
    assert process.state == "stopped"
    assert "=== slm_server: starting" in (tmp_path / "m.log").read_text()


async def test_loading_is_reported_until_ready(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The main log says what starts and, while it loads, that it is still loading."""
    caplog.set_level(logging.INFO, logger="slm_server.supervisor")
    policy = dataclasses.replace(FAST, progress_every_s=0.3)
    process = make_process(tmp_path, ["--loading-seconds", "1.5"], policy=policy)
    try:
        await ready(process)
        pid = process.pid
    finally:
        await process.stop()
    lines = [r.getMessage() for r in caplog.records]
    started = next(line for line in lines if line.startswith("m: starting fake_backend.py"))
    assert f"(PID {pid})" in started and str(tmp_path / "m.log") in started
    progress = [line for line in lines if line.startswith("m: still loading after")]
    assert 2 <= len(progress) <= 10  # every 0.3 s of the 1.5 s load, not every 50 ms poll
    assert lines.index(started) < lines.index(progress[0])
    assert lines.index(progress[-1]) < next(i for i, x in enumerate(lines) if "m: ready" in x)


async def test_crashed_backend_is_restarted(tmp_path: Path, orphan_guard: str) -> None:
    process = make_process(tmp_path)
    try:
        await ready(process)
        first = process.pid
        assert first is not None
        old = family(first)
        # Under the watchdog this kills the watchdog: its backend must not live on.
        os.kill(first, signal.SIGKILL)
        async with asyncio.timeout(15):  # the exit unnoticed, it would stay "ready"
            while process.generation < 2:
                await process.ensure_ready()
                await asyncio.sleep(0.02)
        assert process.pid not in (None, first)
        assert process.restarts == 1
        await eventually(lambda: not any(map(alive, old)), 5, "the old backend to be gone")
    finally:
        await process.stop()


async def test_watched_backend_that_crashes_is_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(WATCHDOG_ENV, "1")
    process = make_process(tmp_path)
    try:
        await ready(process)
        assert process.pid is not None
        watchdog, backend = family(process.pid)
        backend.kill()
        await eventually(lambda: process.generation == 2, 15, "the backend to be restarted")
        assert process.state == "ready"
        assert process.restarts == 1
        assert not alive(watchdog)  # it went with its backend, and was seen to
        assert "killed by SIGKILL" in caplog.text  # the watchdog exits with 128 + SIGKILL
    finally:
        await process.stop()


@pytest.mark.parametrize("args", [(), ("--ignore-sigterm",)], ids=["sigterm", "sigkill"])
async def test_stopping_a_watched_backend_leaves_no_process(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    args: Sequence[str],
) -> None:
    monkeypatch.setenv(WATCHDOG_ENV, "1")
    process = make_process(tmp_path, args, policy=RestartPolicy(stop_grace_s=1))
    try:
        await ready(process)
        assert process.pid is not None
        processes = family(process.pid)
        assert len(processes) == 2  # the watchdog and the backend
    finally:
        await asyncio.wait_for(process.stop(), 10)
    await eventually(lambda: not any(map(alive, processes)), 5, "every process to be gone")
    # The watchdog passed SIGTERM on, so only a backend that ignores it needed SIGKILL.
    assert ("after SIGTERM; SIGKILL" in caplog.text) == bool(args)


async def test_a_backend_writing_a_huge_progress_bar_still_becomes_ready(tmp_path: Path) -> None:
    """130 KB redrawn with carriage returns and no newline, as a download bar writes."""
    model = make_config({"m": entry("m-fake", free_port())}).models["m"]
    script = tmp_path / "downloads_then_serves.py"
    script.write_text(
        "import runpy, sys\n"
        "for n in range(1200):\n"
        "    sys.stdout.write(f'\\rDownloading: {n % 100:3d}% ' + '#' * 100)\n"
        "print('\\ndownloaded', flush=True)\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--port', '{model.port}']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    spec = LaunchSpec([sys.executable, str(script)])
    process = BackendProcess("m", model, lambda: spec, BackendLog(tmp_path / "m.log"), FAST)
    try:
        await ready(process)
        lines = (tmp_path / "m.log").read_text().splitlines()
        bars = [line for line in lines if line.startswith("Downloading: ")]
        assert len(bars) == 1200 and all(len(line) < 200 for line in bars)
        assert "downloaded" in lines  # and what came after it
    finally:
        await process.stop()


async def test_probing_the_port_before_a_start_never_stalls_the_event_loop(
    tmp_path: Path,
) -> None:
    """A listener with a full accept queue: a connect to it waits out its 0.5 s timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]
        for client in queued:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
        model = make_config({"m": entry("m-fake", port)}).models["m"]
        spec = fake_spec(model)
        process = BackendProcess("m", model, lambda: spec, BackendLog(tmp_path / "m.log"), FAST)
        loop = asyncio.get_running_loop()
        gaps: list[float] = []
        try:
            process.start()
            last = loop.time()
            for _ in range(100):  # 1 s of 10 ms ticks, while the supervisor probes
                await asyncio.sleep(0.01)
                now = loop.time()
                gaps.append(now - last)
                last = now
        finally:
            await process.stop()
            for client in queued:
                client.close()
    assert max(gaps) < 0.4, f"the loop stalled for {max(gaps):.2f}s"


class FifoReader:
    """Reads a FIFO in a thread, but only once released (or after ``release_after_s``)."""

    def __init__(self, path: Path, release_after_s: float) -> None:
        self.release = threading.Event()
        self.data = b""
        self._path = path
        self._release_after_s = release_after_s
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        # Bounded even if the test never gets to release it (a loop blocked on the FIFO).
        self.release.wait(self._release_after_s)
        with self._path.open("rb") as fifo:  # until the last writer closes it
            self.data = fifo.read()

    def lines(self, timeout: float) -> list[str]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the log file was never closed"
        return self.data.decode().splitlines()


async def test_a_log_file_that_blocks_never_stalls_the_event_loop(tmp_path: Path) -> None:
    """Nobody reads the log (a FIFO): the loop runs on, and every line arrives once read."""
    model = make_config({"m": entry("m-fake", free_port())}).models["m"]
    script = tmp_path / "chatty.py"
    script.write_text(  # 200 KB of output: more than a pipe holds
        "import runpy, sys\n"
        "for n in range(2000):\n"
        "    print(f'line {n} ' + '#' * 100)\n"
        "print('loaded', flush=True)\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--port', '{model.port}']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    fifo = tmp_path / "m.log"
    os.mkfifo(fifo)
    reader = FifoReader(fifo, release_after_s=3)
    spec = LaunchSpec([sys.executable, str(script)])
    process = BackendProcess("m", model, lambda: spec, BackendLog(fifo), FAST)
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    try:
        process.start()
        last = loop.time()
        for _ in range(100):  # 1 s of 10 ms ticks, while the backend writes and nobody reads
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps.append(now - last)
            last = now
        await asyncio.wait_for(process.ensure_ready(), 10)  # its output drained meanwhile
        reader.release.set()
    finally:
        await process.stop()
    assert max(gaps) < 0.4, f"the loop stalled for {max(gaps):.2f}s"
    lines = reader.lines(5)
    output = [line for line in lines if not line.startswith("=== slm_server: ")]
    expected = [f"line {n} " + "#" * 100 for n in range(2000)]
    assert output[:2001] == [*expected, "loaded"]


async def test_the_last_lines_of_a_dead_backend_are_in_its_log_when_its_exit_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However slow the disk, the file has a dead backend's last words by then."""
    original = LogWriter._write

    def slow_write(self: LogWriter, text: str) -> None:
        time.sleep(0.2)
        original(self, text)

    monkeypatch.setattr(LogWriter, "_write", slow_write)
    script = tmp_path / "dies.py"
    script.write_text(
        "import time\n"
        "for n in range(50):\n"
        "    print(f'loading {n}', flush=True)\n"
        "    time.sleep(0.005)\n"
        "print('error: out of memory', flush=True)\n"
        "exit(3)\n"
    )
    policy = dataclasses.replace(FAST, max_start_failures=1)
    crash = LaunchSpec([sys.executable, str(script)])
    process = make_process(tmp_path, spec=crash, policy=policy)
    process.start()
    try:
        with pytest.raises(BackendFailed, match="out of memory"):
            await asyncio.wait_for(process.ensure_ready(), 10)
        lines = (tmp_path / "m.log").read_text().splitlines()
    finally:
        await process.stop()
    assert lines[1:] == [*(f"loading {n}" for n in range(50)), "error: out of memory"]


async def test_backend_killed_by_a_signal_is_reported_by_its_name(
    tmp_path: Path, orphan_guard: str
) -> None:
    # A stand-in for a llama-server built for CPU features this machine lacks.
    die = "import os, signal; print('llama threadpool init'); os.kill(os.getpid(), signal.SIGILL)"
    process = make_process(tmp_path, spec=LaunchSpec([sys.executable, "-c", die]))
    process.start()
    with pytest.raises(BackendFailed) as failed:
        await asyncio.wait_for(process.ensure_ready(), 10)
    reason = str(failed.value)
    # Under the watchdog too, whose own exit status is 128 + SIGILL.
    assert reason.startswith("killed by SIGILL (illegal instruction:"), reason
    assert "llama threadpool init" in reason
    assert "code" not in reason.split(" while starting")[0]


def fails_then_serves(tmp_path: Path, port: int, failures: int) -> LaunchSpec:
    """A backend that exits at its first ``failures`` starts, then serves (a passing fault)."""
    script = tmp_path / "flaky.py"
    script.write_text(
        "import pathlib, runpy, sys\n"
        f"count = pathlib.Path({str(tmp_path / 'starts')!r})\n"
        "starts = len(count.read_text()) if count.exists() else 0\n"
        "count.write_text('x' * (starts + 1))\n"
        f"if starts < {failures}:\n"
        "    print('out of memory', flush=True); sys.exit(3)\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--port', '{port}']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    return LaunchSpec([sys.executable, str(script)])


async def test_a_failed_backend_is_tried_again_by_a_request_after_its_cooldown(
    tmp_path: Path,
) -> None:
    policy = dataclasses.replace(FAST, retry_failed_after_s=1.0)
    model = make_config({"m": entry("m-fake", free_port())}).models["m"]
    spec = fails_then_serves(tmp_path, model.local_port, FAST.max_start_failures)
    process = BackendProcess("m", model, lambda: spec, BackendLog(tmp_path / "m.log"), policy)
    process.start()
    try:
        with pytest.raises(BackendFailed) as failed:
            await asyncio.wait_for(process.ensure_ready(), 10)
        assert "exited with code 3" in str(failed.value)
        assert failed.value.retry_in_s is not None and 0 < failed.value.retry_in_s <= 1.0
        assert 0 < process.snapshot()["retry_in_s"] <= 1.0
        with pytest.raises(BackendFailed):  # within the cooldown: at once, not started
            await asyncio.wait_for(process.ensure_ready(), 1)
        await asyncio.sleep(1.0)
        # Two callers at once after it: one start, both served.
        await asyncio.wait_for(asyncio.gather(process.ensure_ready(), process.ensure_ready()), 15)
        assert process.state == "ready"
        assert (tmp_path / "starts").read_text() == "x" * (FAST.max_start_failures + 1)
    finally:
        await process.stop()


async def test_a_stop_just_after_a_retry_began_ends_in_stopped(tmp_path: Path) -> None:
    """stop() may cancel the new owner before its first step, which then runs no cleanup."""
    policy = dataclasses.replace(FAST, retry_failed_after_s=0.1)
    process = make_process(
        tmp_path, spec=LaunchSpec([sys.executable, "-c", "exit(3)"]), policy=policy
    )
    process.start()
    with pytest.raises(BackendFailed):
        await asyncio.wait_for(process.ensure_ready(), 10)
    await asyncio.sleep(0.2)
    waiting = asyncio.ensure_future(process.ensure_ready())
    await asyncio.sleep(0)  # it starts the retry: "starting", a new owner not yet run
    assert process.state == "starting"
    await process.stop()
    with pytest.raises(BackendFailed, match="stopped"):
        await asyncio.wait_for(waiting, 2)  # not left waiting on a start that never comes
    assert process.snapshot()["state"] == "unloaded"


async def test_a_stopped_failed_backend_is_not_tried_again(tmp_path: Path) -> None:
    policy = dataclasses.replace(FAST, retry_failed_after_s=0.1)
    crash = LaunchSpec([sys.executable, "-c", "exit(3)"])
    process = make_process(tmp_path, spec=crash, policy=policy)
    process.start()
    with pytest.raises(BackendFailed):
        await asyncio.wait_for(process.ensure_ready(), 10)
    await process.stop()
    await asyncio.sleep(0.2)
    with pytest.raises(BackendFailed) as failed:
        await asyncio.wait_for(process.ensure_ready(), 1)
    assert failed.value.retry_in_s is None
    assert process.state == "failed"


async def test_backend_that_cannot_start_is_failed_with_its_output(tmp_path: Path) -> None:
    crash = LaunchSpec([sys.executable, "-c", "print('model file is corrupt'); exit(3)"])
    process = make_process(tmp_path, spec=crash)
    process.start()
    with pytest.raises(BackendFailed) as failed:
        await asyncio.wait_for(process.ensure_ready(), 10)
    assert "exited with code 3" in str(failed.value)
    assert "model file is corrupt" in str(failed.value)
    snapshot = process.snapshot()
    assert snapshot["state"] == "failed"
    assert "model file is corrupt" in snapshot["log_tail"]
    assert process.restarts == FAST.max_start_failures - 1
    await process.stop()


async def test_missing_executable_fails_clearly(tmp_path: Path, orphan_guard: str) -> None:
    process = make_process(tmp_path, spec=LaunchSpec(["/nonexistent/llama-server"]))
    process.start()
    with pytest.raises(BackendFailed, match="cannot start"):
        await asyncio.wait_for(process.ensure_ready(), 10)
    await process.stop()


async def test_sigterm_ignored_means_sigkill_after_grace(tmp_path: Path, orphan_guard: str) -> None:
    policy = RestartPolicy(startup_timeout_s=10, stop_grace_s=0.3)
    process = make_process(tmp_path, ["--ignore-sigterm"], policy=policy)
    await ready(process)
    pid = process.pid
    assert pid is not None
    processes = family(pid)
    await asyncio.wait_for(process.stop(), 5)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    await eventually(lambda: not any(map(alive, processes)), 5, "every process to be gone")


async def test_port_taken_by_a_foreign_process_is_reported(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        model = make_config({"m": entry("m-fake", port)}).models["m"]
        spec = fake_spec(model)
        log = BackendLog(tmp_path / "m.log")
        process = BackendProcess("m", model, lambda: spec, log, FAST)
        process.start()
        with pytest.raises(BackendFailed) as failed:
            await asyncio.wait_for(process.ensure_ready(), 10)
        await process.stop()
    message = str(failed.value)
    assert f"port {port} is already in use by PID {os.getpid()}" in message


async def test_supervisor_starts_and_stops_every_enabled_backend(tmp_path: Path) -> None:
    config = make_config(
        {
            "a": entry("m-a", free_port()),
            "b": entry("m-b", free_port()),
            "off": entry("m-off", free_port(), enabled=False),
        }
    )
    supervisor = Supervisor(config, lambda role, e: fake_spec(e), tmp_path, FAST)
    assert set(supervisor.processes) == {"a", "b"}
    supervisor.start_all()
    try:
        assert await asyncio.wait_for(supervisor.wait_all(), 15) == {"a": None, "b": None}
        pids = [p.pid for p in supervisor.processes.values()]
    finally:
        await supervisor.stop_all()
    assert all(pid is not None and not psutil.pid_exists(pid) for pid in pids)
    assert (tmp_path / "m-a.log").exists()


def test_guarded_argv_wraps_only_where_the_kernel_cannot_guard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = ["llama-server", "--port", "8080"]
    monkeypatch.delenv(WATCHDOG_ENV, raising=False)
    if ON_LINUX:
        assert guarded_argv(argv) == argv
    wrapped = [sys.executable, "-I", watchdog.__file__, str(os.getpid()), "--", *argv]
    assert guarded_argv(argv, force_watchdog=True) == wrapped
    monkeypatch.setenv(WATCHDOG_ENV, "1")
    assert guarded_argv(argv) == wrapped


@pytest.mark.parametrize(
    ("code", "status"),
    [("raise SystemExit(5)", 5), ("import os; os.kill(os.getpid(), 9)", 128 + 9)],
    ids=["exit", "signal"],
)
def test_watchdog_exits_with_its_backends_status(code: str, status: int) -> None:
    argv = guarded_argv([sys.executable, "-c", code], force_watchdog=True)
    assert subprocess.run(argv, timeout=30).returncode == status


@dataclass
class SupervisorRun:
    proc: subprocess.Popen[str]
    pids: list[int]  # what the supervisor reports: under the watchdog, the watchdogs'
    descendants: list[psutil.Process]
    watched: bool

    @property
    def backends(self) -> list[psutil.Process]:
        """The fake backends themselves (no watchdog)."""
        return [p for p in self.descendants if p.cmdline()[1:2] == [str(SCRIPT)]]


@pytest.fixture
def supervisor_proc(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SupervisorRun]:
    """A supervisor in its own process, running two fake backends.

    Parametrize it indirectly with "watchdog" to run them under the watchdog.
    """
    watched = getattr(request, "param", "default") == "watchdog" or not ON_LINUX
    env = {k: v for k, v in os.environ.items() if k != WATCHDOG_ENV}
    if watched:
        env[WATCHDOG_ENV] = "1"
    script = tmp_path / "supervise.py"
    script.write_text(
        f"""
import asyncio, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from config_builder import entry, make_config
from slm_server.backends.spec import LaunchSpec
from slm_server.supervisor import Supervisor

async def main():
    config = make_config({{"a": entry("a", {free_port()}), "b": entry("b", {free_port()})}})
    launch = lambda role, e: LaunchSpec([sys.executable, {str(SCRIPT)!r}, "--port", str(e.port)])
    supervisor = Supervisor(config, launch, __import__("pathlib").Path({str(tmp_path)!r}))
    supervisor.start_all()
    await supervisor.wait_all()
    print(*(p.pid for p in supervisor.processes.values()), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    pids = [int(pid) for pid in proc.stdout.readline().split()]
    # Taken while the supervisor lives: once it is gone they are no longer its descendants.
    descendants = psutil.Process(proc.pid).children(recursive=True)
    try:
        yield SupervisorRun(proc, pids, descendants, watched)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        for process in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


@pytest.mark.parametrize("supervisor_proc", ["default", "watchdog"], indirect=True)
def test_no_backend_survives_a_sigkilled_supervisor(supervisor_proc: SupervisorRun) -> None:
    run = supervisor_proc
    assert len(run.pids) == 2 and set(run.pids) <= {p.pid for p in run.descendants}
    backends = {p.pid for p in run.backends}
    assert len(backends) == 2 and all(map(alive, run.descendants))
    # Under the watchdog the supervisor knows only the watchdogs: the backends are theirs.
    assert backends.isdisjoint(run.pids) if run.watched else backends == set(run.pids)
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    wait_until(
        lambda: not any(map(alive, run.descendants)), 5, "backends to die with their supervisor"
    )
