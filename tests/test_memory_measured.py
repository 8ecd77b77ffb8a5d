"""Measuring a backend's memory: its whole process tree, and the peak of each run."""

from __future__ import annotations

import subprocess
import sys

import psutil

from slm_server.supervisor.memory import PeakMemory, tree_memory_bytes

MB = 1024 * 1024
# A parent that holds 64 MB and starts a child holding 64 MB more, then waits for stdin.
_TREE = """
import subprocess, sys
held = b"x" * (64 * 2**20)
child = subprocess.Popen([sys.executable, "-c",
    "import sys; held = b'x' * (64 * 2**20); print('up', flush=True); sys.stdin.read()"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
assert child.stdout.readline() == b"up\\n"
print("up", flush=True)
sys.stdin.read()
child.stdin.close()
child.wait(10)
"""


def test_the_whole_tree_counts() -> None:
    command = [sys.executable, "-c", _TREE]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as parent:
        assert parent.stdout is not None and parent.stdin is not None
        try:
            assert parent.stdout.readline() == b"up\n"
            own = psutil.Process(parent.pid).memory_info().rss
            measured = tree_memory_bytes(parent.pid)
            assert measured is not None
            assert own >= 64 * MB  # the parent's own pages
            assert measured >= own + 64 * MB  # and its child's
        finally:
            parent.stdin.close()
            parent.wait(10)
    assert tree_memory_bytes(parent.pid) is None  # gone (reaped): nothing to measure


def test_the_peak_is_per_process() -> None:
    peak = PeakMemory()
    assert peak.record(100, 5 * MB) == 5 * MB
    assert peak.record(100, 3 * MB) == 5 * MB  # a later, smaller reading keeps the peak
    assert peak.record(100, None) == 5 * MB  # a reading that failed too
    assert peak.record(200, 2 * MB) == 2 * MB  # started again: a new process, a new peak
    assert peak.record(300, None) is None
