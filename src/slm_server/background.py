"""``start`` and ``stop``: ``serve`` as a background process, one per directory.

The PID file alone cannot be trusted (the process may have died and its PID
been reused), nor can an open port (a stale listener may hold it). So an
instance counts as running only when the PID file's process is alive and is
an ``slm_server serve``; and a model counts as ready only when the router
answering on the port reports our child's PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from slm_server.config import LoadedConfig
from slm_server.exits import describe_exit
from slm_server.instance_http import DIRECT, instance_request
from slm_server.router.serve import WILDCARD_HOSTS
from slm_server.status_table import start_line, start_summary
from slm_server.supervisor.ports import listener_description, port_in_use

_POLL_S = 0.2
_REQUEST_TIMEOUT_S = 5.0
_BACKENDS_STOP_S = 30  # each gets SIGTERM, then SIGKILL 10 s later: ample
_MAX_REPORT_BYTES = 4 * 2**20  # a health report is a few KB; never hold more than this


@dataclass(frozen=True)
class Instance:
    pid: int
    url: str


def pid_file(base_dir: Path) -> Path:
    """Where ``start`` records the instance it started from ``base_dir``'s config."""
    return base_dir / "run" / "slm_server.pid"


def running_instance(path: Path) -> Instance | None:
    """The instance recorded in ``path`` if it is alive and really ours; stale files are removed."""
    try:
        recorded = json.loads(path.read_text())
        instance = Instance(int(recorded["pid"]), str(recorded["url"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _is_our_server(instance.pid):
        return instance
    print(f"removing stale {path} (PID {instance.pid} is not running slm_server)")
    path.unlink(missing_ok=True)
    return None


def _is_our_server(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        command = process.cmdline()
    except psutil.Error:
        return False
    return "slm_server" in " ".join(command) and "serve" in command


def run_start(
    config: LoadedConfig,
    serve_args: Sequence[str],
    *,
    host: str | None,
    port: int | None,
    wait_s: float,
    api_key: str | None = None,
) -> int:
    """Start ``serve`` in the background; report each model until all are ready or failed
    (a model that loads on demand is left unloaded). ``api_key``: sent to read the models'
    state when the config has router.api_keys."""
    pids = pid_file(config.base_dir)
    existing = running_instance(pids)
    if existing is not None:
        print(f"slm_server is already running (PID {existing.pid}, {existing.url}); not starting")
        print("stop it first with ./stop.sh (or: slm-server stop)")
        return 1
    settings = config.file.router
    host = host if host is not None else settings.host
    port = port if port is not None else settings.port
    connect_host = "127.0.0.1" if host in WILDCARD_HOSTS else host
    if port_in_use(connect_host, port):
        owner = listener_description(port) or "another process"
        print(f"port {port} is already in use by {owner}; not starting")
        return 1

    log_path = config.base_dir / "logs" / "slm_server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "slm_server", "serve", *serve_args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command and the terminal's Ctrl-C
        )
    url = f"http://{connect_host}:{port}"
    pids.parent.mkdir(parents=True, exist_ok=True)
    pids.write_text(json.dumps({"pid": child.pid, "url": url}))
    print(f"started slm_server (PID {child.pid}) on {url}; log: {log_path}")
    return _report_readiness(child, url, log_path, pids, wait_s, api_key)


class _KeyRefused(Exception):
    """The router asks for an API key to report on its models, and has none it accepts."""


def _report_readiness(
    child: subprocess.Popen[bytes],
    url: str,
    log_path: Path,
    pids: Path,
    wait_s: float,
    api_key: str | None,
) -> int:
    reported: dict[str, str] = {}
    deadline = time.monotonic() + wait_s
    while True:
        code = child.poll()
        if code is not None:
            pids.unlink(missing_ok=True)
            print(f"slm_server {describe_exit(code, 'slm_server')}; last lines of {log_path}:")
            print(_tail(log_path, 15))
            return 1
        try:
            backends = _backends_if_ours(url, child.pid, api_key)
        except _KeyRefused:
            given = "the key given is not valid" if api_key else "none was given"
            print(
                f"slm_server is running, but it asks for an API key to report on its models "
                f"and {given}: give one with --api-key-file or $SLM_API_KEY, then see "
                "`slm-server ps`"
            )
            return 1
        if backends is not None:
            for role, report in backends.items():
                line = start_line(role, report)
                if line is not None and reported.get(role) != line:
                    reported[role] = line
                    print(line, flush=True)
            states = [r.get("state") for r in backends.values() if "state" in r]
            summary = start_summary(states, url)
            if summary is not None:
                print(summary)
                return 1 if "failed" in states else 0
        if time.monotonic() > deadline:
            print(f"still starting after {wait_s:g}s; slm_server keeps running (log: {log_path})")
            return 1
        time.sleep(_POLL_S)


def _backends_if_ours(url: str, pid: int, api_key: str | None) -> dict[str, dict[str, Any]] | None:
    """The router's backend report, only if the router answering is our child.

    _KeyRefused when our child answers 401: it has API keys, and ``api_key`` is not one.
    """
    try:
        if _get_json(f"{url}/health").get("pid") != pid:
            return None
        report: dict[str, dict[str, Any]] = _get_json(f"{url}/v1/backends/health", api_key)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise _KeyRefused from None
        return None
    except (OSError, ValueError, AttributeError):  # URLError is an OSError
        return None
    return report


def _get_json(url: str, api_key: str | None = None) -> Any:
    # The standard library's client: `start` and `stop` must work on a plain install.
    request = instance_request(url, api_key=api_key)
    with DIRECT.open(request, timeout=_REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read(_MAX_REPORT_BYTES))


def _tail(path: Path, lines: int) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def run_stop(config: LoadedConfig, grace_s: float | None = None) -> int:
    """SIGTERM the running instance (which stops its backends); SIGKILL after ``grace_s``.

    By default, its requests' shutdown grace and then time for its backends to stop.
    """
    if grace_s is None:
        grace_s = config.file.router.shutdown_grace_s + _BACKENDS_STOP_S
    pids = pid_file(config.base_dir)
    instance = running_instance(pids)
    if instance is None:
        print("slm_server is not running")
        return 0
    os.kill(instance.pid, signal.SIGTERM)
    print(f"stopping slm_server (PID {instance.pid}) and its backends...")
    try:
        psutil.Process(instance.pid).wait(grace_s)
    except psutil.TimeoutExpired:
        print(f"still running after {grace_s:g}s; SIGKILL")
        os.kill(instance.pid, signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass
    pids.unlink(missing_ok=True)
    print("stopped")
    return 0
