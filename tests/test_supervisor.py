"""Backend lifecycle against the fake backend, run as real subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from config_builder import entry, make_config
from fake_backend_proc import SCRIPT
from net import eventually, free_port, wait_until
from slm_server.backends.spec import LaunchSpec
from slm_server.config import ModelEntry
from slm_server.supervisor import BackendFailed, BackendProcess, RestartPolicy, Supervisor
from slm_server.supervisor.logs import BackendLog

FAST = RestartPolicy(startup_timeout_s=10, max_start_failures=3, backoff_s=(0.05,), stop_grace_s=2)


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


async def test_crashed_backend_is_restarted(tmp_path: Path) -> None:
    process = make_process(tmp_path)
    try:
        await ready(process)
        first = process.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        while process.generation < 2:
            await asyncio.wait_for(process.ensure_ready(), 10)
            await asyncio.sleep(0.02)
        assert process.pid not in (None, first)
        assert process.restarts == 1
    finally:
        await process.stop()


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


async def test_missing_executable_fails_clearly(tmp_path: Path) -> None:
    process = make_process(tmp_path, spec=LaunchSpec(["/nonexistent/llama-server"]))
    process.start()
    with pytest.raises(BackendFailed, match="cannot start"):
        await asyncio.wait_for(process.ensure_ready(), 10)
    await process.stop()


async def test_sigterm_ignored_means_sigkill_after_grace(tmp_path: Path) -> None:
    policy = RestartPolicy(startup_timeout_s=10, stop_grace_s=0.3)
    process = make_process(tmp_path, ["--ignore-sigterm"], policy=policy)
    await ready(process)
    pid = process.pid
    assert pid is not None
    await asyncio.wait_for(process.stop(), 5)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


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


@pytest.fixture
def supervisor_proc(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """A supervisor in its own process, running two fake backends."""
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
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = [int(pid) for pid in proc.stdout.readline().split()]
    try:
        yield proc, pids
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        for pid in pids:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)


def test_no_backend_survives_a_sigkilled_supervisor(
    supervisor_proc: tuple[subprocess.Popen[str], list[int]],
) -> None:
    proc, pids = supervisor_proc
    assert len(pids) == 2 and all(psutil.pid_exists(pid) for pid in pids)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def all_gone() -> bool:
        return not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            for pid in pids
        )

    wait_until(all_gone, 5, "backends to die with their supervisor")
