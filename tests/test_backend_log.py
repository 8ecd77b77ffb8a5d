"""A backend's log file, written off the event loop: in order, promptly, bounded."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from net import eventually
from slm_server.supervisor.logs import BackendLog


async def test_a_line_reaches_the_file_at_once(tmp_path: Path) -> None:
    """Someone tailing the file sees each line well within a second, with no flush asked."""
    path = tmp_path / "m.log"
    log = BackendLog(path)

    def written() -> str:
        return path.read_text() if path.exists() else ""

    try:
        log.write("first\n")
        await eventually(lambda: written() == "first\n", 0.5, "the line")
        log.write("second")
        await eventually(lambda: written() == "first\nsecond\n", 0.5, "the next one")
    finally:
        assert await log.aclose(2)


async def test_lines_past_the_bound_are_dropped_and_counted_in_the_file(tmp_path: Path) -> None:
    fifo = tmp_path / "m.log"
    os.mkfifo(fifo)  # nobody reads it yet: the writer waits, the lines queue up
    log = BackendLog(fifo, max_pending_chars=400)
    lines = [f"line {n:03d}" for n in range(100)]  # 9 characters and a line end each
    for line in lines:
        log.write(line)
    assert log.tail(1) == ["line 099"]  # the tail in memory keeps everything
    received: list[bytes] = []

    def read() -> None:
        with fifo.open("rb") as reader:
            received.append(reader.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert await log.aclose(5)
    reader.join(5)
    written = received[0].decode().splitlines()
    kept = written[:-1]
    assert kept == lines[: len(kept)] and 0 < len(kept) < 100
    dropped = 100 - len(kept)
    assert written[-1] == (
        f"=== slm_server: {dropped} lines dropped here: the log file could not keep up"
    )


async def test_writing_after_a_close_opens_the_file_again(tmp_path: Path) -> None:
    """A backend started again after a stop logs to the same file."""
    log = BackendLog(tmp_path / "m.log")
    log.note("starting")
    assert await log.aclose(2)
    log.write("again")
    assert await log.flush(2)
    assert (tmp_path / "m.log").read_text() == "=== slm_server: starting\nagain\n"
    assert await log.aclose(2)
