"""The tests in this directory run on both event loops.

The router runs on uvloop, which differs from asyncio's own loop in details a low-level
protocol can trip over (it calls ``connection_made`` later, its transports are not
``asyncio.Transport`` subclasses). The hook lives here, not at the top of ``tests``,
because pytest-asyncio applies it to every async test it can see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
