"""What asks for a reload: the file watcher's debounce and the coalescing of requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from net import eventually
from slm_server.admin.reload_triggers import ReloadRequests, watch


async def test_a_save_in_two_steps_is_one_change_and_a_later_save_another(
    tmp_path: Path,
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models: {}\n")
    seen: list[str] = []  # the file as it was at each change reported

    def changed(_: str) -> None:
        seen.append(path.read_text())

    watcher = asyncio.create_task(watch(path, changed, poll_s=0.02, debounce_s=1.0))
    try:
        await asyncio.sleep(0)  # the watcher takes its first look at the file
        path.write_text("models:\n")  # cut short...
        await asyncio.sleep(0.1)  # ...and written whole a moment later, as editors do
        path.write_text("models:\n  a: {}\n")
        await eventually(lambda: len(seen) == 1, 5, "the first change")
        replacement = tmp_path / "models.yaml.tmp"  # an editor's copy, renamed over it
        replacement.write_text("models:\n  b: {}\n")
        replacement.replace(path)
        await eventually(lambda: len(seen) == 2, 5, "the second change")
        assert seen == ["models:\n  a: {}\n", "models:\n  b: {}\n"]
    finally:
        watcher.cancel()


async def test_asked_again_during_a_reload_makes_exactly_one_more() -> None:
    runs = 0
    running = asyncio.Event()
    release = asyncio.Event()

    async def reload() -> None:
        nonlocal runs
        runs += 1
        running.set()
        await release.wait()

    requests = ReloadRequests(reload)
    requests.ask("SIGHUP")
    await asyncio.wait_for(running.wait(), 5)
    for _ in range(3):  # a burst of signals while it runs
        requests.ask("SIGHUP")
    release.set()
    await eventually(lambda: not requests.running, 5, "the reloads to end")
    assert runs == 2
    requests.ask("SIGHUP")  # once idle, a request runs at once again
    await eventually(lambda: not requests.running, 5, "the third reload")
    assert runs == 3
    await requests.aclose()
