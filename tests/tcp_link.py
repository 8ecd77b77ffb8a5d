"""A TCP relay in front of a server, for tests: a far network, or one cut and mended.

``TcpLink(port, delay_s)`` listens on a loopback port of its own and relays each
connection to 127.0.0.1:``port``, holding what goes to the server ``delay_s`` on the way
(a server far away). ``cut()`` drops every connection and hangs up on new ones until
``mend()``: the server seems gone while the link keeps its port, so no other process can
take it meanwhile (as one could after stopping and restarting the server itself).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType


class TcpLink:
    def __init__(self, target_port: int, delay_s: float = 0.0) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """A Redis URL through the link."""
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> TcpLink:
        self._spawn(self._accept)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone may not
        self.listener.close()
        self.cut()
        for thread in self._threads:
            thread.join(5)

    def cut(self) -> None:
        """Drop every connection; hang up on new ones until ``mend``."""
        self._cut.set()
        with self._lock:
            dropped, self._open = self._open, set()
        for sock in dropped:
            _hang_up(sock)

    def mend(self) -> None:
        self._cut.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # the link is closed
            if self._cut.is_set():
                _hang_up(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _hang_up(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._open |= {client, server}
            self._spawn(self._pump, client, server, self.delay_s)
            self._spawn(self._pump, server, client, 0.0)

    def _pump(self, source: socket.socket, sink: socket.socket, delay_s: float) -> None:
        try:
            while chunk := source.recv(65536):
                if delay_s:
                    time.sleep(delay_s)  # the far network's latency, not a wait for anything
                sink.sendall(chunk)
        except OSError:
            pass  # cut, or either side hung up
        finally:
            _hang_up(source)
            _hang_up(sink)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)


def _hang_up(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in another thread
    sock.close()
