"""Which connections a shutdown cuts off as clients that stopped reading: plain calls on
stand-ins for uvicorn's connections (the real thing: test_logs_cli)."""

from __future__ import annotations

from dataclasses import dataclass, field

from slm_server.router.shutdown import StalledClients


@dataclass
class Transport:
    unsent: int = 0
    closing: bool = False

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        raise AssertionError("only the server aborts")


@dataclass
class Flow:
    write_paused: bool = False


@dataclass(eq=False)
class Connection:
    transport: Transport = field(default_factory=Transport)
    flow: Flow = field(default_factory=Flow)


def waiting(unsent: int) -> Connection:
    """A connection whose answer waits for its client to take ``unsent`` bytes."""
    return Connection(Transport(unsent), Flow(write_paused=True))


def test_a_client_that_takes_nothing_for_a_second_is_named() -> None:
    clients = StalledClients(stalled_s=1.0)
    sleeper = waiting(250_000)
    assert clients.look([sleeper], now=0.0) == []
    assert clients.look([sleeper], now=0.5) == []
    assert clients.look([sleeper], now=1.0) == [sleeper.transport]


def test_a_client_that_reads_however_slowly_is_left_alone() -> None:
    clients = StalledClients(stalled_s=1.0)
    reader = waiting(250_000)
    for step in range(1, 10):
        reader.transport.unsent -= 100  # a hundred bytes taken between two looks
        assert clients.look([reader], now=step * 0.5) == []


def test_a_closed_answer_with_bytes_nobody_takes_is_named_too() -> None:
    clients = StalledClients(stalled_s=1.0)
    closed = Connection(Transport(4096, closing=True))
    clients.look([closed], now=0.0)
    assert clients.look([closed], now=1.0) == [closed.transport]


def test_an_answer_that_does_not_wait_on_its_client_is_never_named() -> None:
    clients = StalledClients(stalled_s=1.0)
    busy = Connection(Transport(4096))  # bytes in flight, writing not paused
    idle = Connection()
    websocket = object()  # no transport or flow that says anything
    for now in (0.0, 1.0, 2.0):
        assert clients.look([busy, idle, websocket], now=now) == []


def test_a_client_that_catches_up_starts_its_second_again() -> None:
    clients = StalledClients(stalled_s=1.0)
    client = waiting(250_000)
    clients.look([client], now=0.0)
    client.flow.write_paused = False  # it took enough for the answer to go on
    client.transport.unsent = 0
    clients.look([client], now=0.5)
    client.flow.write_paused, client.transport.unsent = True, 250_000
    assert clients.look([client], now=1.0) == []
    assert clients.look([client], now=2.0) == [client.transport]
