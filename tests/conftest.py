"""Test-wide hooks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

# Modules whose async tests run on both event loops: the router runs on uvloop, which
# differs from asyncio's own loop in details a low-level protocol can trip over.
_ON_BOTH_LOOPS = frozenset({"test_upstream.py"})


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]] | None:
    if item.path.name in _ON_BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return None
