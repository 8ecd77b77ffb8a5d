"""A launch spec's own stop signal and readiness limit, honoured by the supervisor.

Against the fake backend as a real subprocess, which records the signals it gets;
with and without the watchdog that guards backends on macOS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest

from config_builder import entry, make_config
from fake_backend_proc import SCRIPT
from net import eventually, free_port
from slm_server.backends.spec import LaunchSpec
from slm_server.supervisor import BackendFailed, BackendProcess, RestartPolicy
from slm_server.supervisor.logs import BackendLog
from slm_server.supervisor.orphans import WATCHDOG_ENV

POLICY = RestartPolicy(startup_timeout_s=10, max_start_failures=1, stop_grace_s=5)


@pytest.fixture(params=["default", "watchdog"])
def orphan_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "watchdog":
        monkeypatch.setenv(WATCHDOG_ENV, "1")
    else:
        monkeypatch.delenv(WATCHDOG_ENV, raising=False)
    return str(request.param)


def process_for(
    tmp_path: Path,
    args: Sequence[str],
    *,
    stop_signal: signal.Signals = signal.SIGTERM,
    ready_timeout_s: float | None = None,
    policy: RestartPolicy = POLICY,
) -> BackendProcess:
    model = make_config({"m": entry("m-fake", free_port())}).models["m"]
    argv = [sys.executable, str(SCRIPT), "--port", str(model.port), *args]
    launch = LaunchSpec(argv, stop_signal=stop_signal, ready_timeout_s=ready_timeout_s)
    return BackendProcess("m", model, lambda: launch, BackendLog(tmp_path / "m.log"), policy)


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def gone(processes: list[psutil.Process]) -> bool:
    def alive(process: psutil.Process) -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return not any(map(alive, processes))


@pytest.mark.parametrize(
    "stop", [signal.SIGINT, signal.SIGQUIT, signal.SIGHUP], ids=lambda sig: sig.name
)
async def test_the_stop_signal_is_what_the_backend_gets(
    tmp_path: Path, orphan_guard: str, stop: signal.Signals
) -> None:
    record = tmp_path / "signals"
    # It ignores SIGTERM: only the asked-for signal stops it before the SIGKILL deadline.
    args = ["--ignore-sigterm", "--record-signals", str(record)]
    process = process_for(tmp_path, args, stop_signal=stop)
    process.start()
    await asyncio.wait_for(process.ensure_ready(), 15)
    assert process.pid is not None
    processes = tree(process.pid)
    began = time.monotonic()
    await asyncio.wait_for(process.stop(), 10)
    assert time.monotonic() - began < POLICY.stop_grace_s  # no SIGKILL was needed
    assert record.read_text().split() == [stop.name]
    await eventually(lambda: gone(processes), 5, "every process to be gone")
    assert f"stopping it: {stop.name}, SIGKILL after 5s" in (tmp_path / "m.log").read_text()


async def test_sigterm_stays_the_default(tmp_path: Path, orphan_guard: str) -> None:
    record = tmp_path / "signals"
    process = process_for(tmp_path, ["--record-signals", str(record)])
    process.start()
    await asyncio.wait_for(process.ensure_ready(), 15)
    await asyncio.wait_for(process.stop(), 10)
    assert record.read_text().split() == ["SIGTERM"]


async def test_sigkill_as_the_stop_signal_ends_it_at_once(
    tmp_path: Path, orphan_guard: str
) -> None:
    process = process_for(tmp_path, ["--ignore-sigterm"], stop_signal=signal.SIGKILL)
    process.start()
    await asyncio.wait_for(process.ensure_ready(), 15)
    assert process.pid is not None
    processes = tree(process.pid)
    began = time.monotonic()
    await asyncio.wait_for(process.stop(), 10)
    assert time.monotonic() - began < POLICY.stop_grace_s
    await eventually(lambda: gone(processes), 5, "every process to be gone")


async def test_the_spec_s_own_ready_timeout_replaces_the_supervisor_s(tmp_path: Path) -> None:
    # /health stays 503: never ready. The policy would wait 10 s; the spec says 0.5 s.
    process = process_for(tmp_path, ["--loading"], ready_timeout_s=0.5)
    process.start()
    with pytest.raises(BackendFailed, match=r"not ready after 0\.5s"):
        await asyncio.wait_for(process.ensure_ready(), 8)
    await process.stop()


async def test_without_its_own_ready_timeout_the_policy_s_applies(tmp_path: Path) -> None:
    policy = dataclasses.replace(POLICY, startup_timeout_s=0.3)
    process = process_for(tmp_path, ["--loading"], policy=policy)
    process.start()
    with pytest.raises(BackendFailed, match=r"not ready after 0\.3s"):
        await asyncio.wait_for(process.ensure_ready(), 8)
    await process.stop()
