"""`replicas: N` through a real `slm-server serve`: N servers of one entry, each a role of
its own that is started, watched and restarted on its own."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from net import free_port_run, wait_until
from router_proc import RouterProcess
from test_command_served import command_entry, fake


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RouterProcess, int]]:
    port = free_port_run(2)
    entry = command_entry("twin", fake(), port=port, replicas=2)
    router = RouterProcess({"models": {"twin": entry}}, tmp_path, command="serve").start()
    try:
        router.wait_backends_ready(30)
        yield router, port
    finally:
        router.stop()


def test_each_replica_runs_on_its_own_port_with_its_own_log(
    pair: tuple[RouterProcess, int], tmp_path: Path
) -> None:
    router, port = pair
    health = router.backends()
    assert set(health) == {"twin@0", "twin@1"}
    assert [health[f"twin@{i}"]["port"] for i in range(2)] == [port, port + 1]
    assert health["twin@0"]["pid"] != health["twin@1"]["pid"]
    for replica in range(2):  # each server answers on its port, as its own process
        answer = httpx.get(f"http://127.0.0.1:{port + replica}/health", timeout=5)
        assert answer.status_code == 200
        lines = httpx.get(f"{router.url}/admin/logs/twin@{replica}?tail=50", timeout=5).text
        assert str(port + replica) in lines, lines


def test_a_killed_replica_is_restarted_and_the_other_is_left_alone(
    pair: tuple[RouterProcess, int],
) -> None:
    router, _ = pair
    before = router.backends()
    os.kill(before["twin@1"]["pid"], signal.SIGKILL)

    def restarted() -> bool:
        now = router.backends()["twin@1"]
        return bool(now["state"] == "ready" and now["pid"] != before["twin@1"]["pid"])

    wait_until(restarted, 30, "replica 1 restarted")
    after = router.backends()
    assert after["twin@1"]["restarts"] == 1
    assert after["twin@0"]["pid"] == before["twin@0"]["pid"]
    assert after["twin@0"]["restarts"] == 0
