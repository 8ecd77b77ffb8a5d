"""Finding out, before a start, whether a backend's port is already taken."""

from __future__ import annotations

import contextlib
import socket

import psutil


def port_in_use(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def listener_description(port: int) -> str | None:
    """``PID 123 (llama-server --port ...)`` for the process listening on ``port``, if known."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return None
                with contextlib.suppress(psutil.Error):
                    command = " ".join(psutil.Process(conn.pid).cmdline())[:160]
                    return f"PID {conn.pid} ({command})"
                return f"PID {conn.pid}"
    return None
