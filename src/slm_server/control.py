"""``ps``, ``load``, ``unload`` and ``restart``: the CLI asks a running instance over HTTP.

The standard library's client, like ``start`` and ``stop``, so these work on a plain
install; the router is asked directly, never through a proxy from the environment
(``HTTP_PROXY``), and every call has a bound on its time and on what it reads.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from slm_server.background import running_instance
from slm_server.config import RouterSettings
from slm_server.instance_http import DIRECT, instance_request
from slm_server.router.serve import WILDCARD_HOSTS
from slm_server.status_table import loaded_line, table, unloaded_line
from slm_server.supervisor.process import RestartPolicy

# A reload waits for removed and changed backends to drain and stop: shutdown_grace_s and
# the stop grace. When no config tells the grace (--url), this is ample for the defaults.
RELOAD_TIMEOUT_S = 300.0
_RELOAD_MARGIN_S = 60.0  # checking the new file, the log files' last lines, a busy machine
HEALTH_TIMEOUT_S = 30.0  # the router bounds its probes by router.health_timeout; ample
_MAX_ANSWER_BYTES = 4 * 2**20  # a health report is a few KB; never hold more than this


class NoAnswer(Exception):
    """Nothing answered at the URL, or not in time."""


class TooSlow(NoAnswer):
    """The instance took the request but did not answer within the time given."""


class ServerRefused(Exception):
    """The instance answered with an error; the message is its own, ``problems`` the list
    a refused config reload gives."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


# Said after the instance's own message when it asks for an API key.
KEY_HINT = "give the key with --api-key-file or $SLM_API_KEY"


def instance_url(pid_path: Path, router: RouterSettings) -> str:
    """The instance ``start`` recorded in ``pid_path`` if it runs, else the configured port
    on this machine."""
    recorded = running_instance(pid_path)
    if recorded is not None:
        return recorded.url
    host = "127.0.0.1" if router.host in WILDCARD_HOSTS else router.host
    if ":" in host:  # an IPv6 address goes in brackets in a URL
        host = f"[{host}]"
    return f"http://{host}:{router.port}"


def run_ps(url: str, api_key: str | None = None) -> int:
    try:
        reports = _call("GET", url, "/v1/backends/health", HEALTH_TIMEOUT_S, api_key)
    except (NoAnswer, ServerRefused) as exc:
        print(exc, file=sys.stderr)
        return 1
    if not isinstance(reports, dict):
        print(f"{url} did not answer like slm_server", file=sys.stderr)
        return 1
    print(table(reports, time.time()))
    return 0


def run_load(url: str, role: str, wait_s: float, api_key: str | None = None) -> int:
    """Start ``role`` (making room as a request would) and wait until it is ready."""
    print(f"loading {role}...", flush=True)
    return _change(url, role, "load", wait_s, loaded_line, api_key)


def run_unload(url: str, role: str, wait_s: float, api_key: str | None = None) -> int:
    """Stop ``role`` once its requests in flight have finished."""
    print(f"unloading {role}...", flush=True)
    return _change(url, role, "unload", wait_s, unloaded_line, api_key)


def run_restart(url: str, role: str, wait_s: float, api_key: str | None = None) -> int:
    """Stop ``role`` once its requests in flight have finished, start it again, wait until
    it is ready."""
    print(f"restarting {role}...", flush=True)
    return _change(url, role, "restart", wait_s, loaded_line, api_key)


def reload_timeout_s(router: RouterSettings) -> float:
    """How long a reload to ``router``'s settings may take: its drain of the removed and
    changed backends (``shutdown_grace_s``), their stop grace, and a margin; never less
    than ``RELOAD_TIMEOUT_S``."""
    needed = router.shutdown_grace_s + RestartPolicy().stop_grace_s + _RELOAD_MARGIN_S
    return max(RELOAD_TIMEOUT_S, needed)


def run_reload(url: str, api_key: str | None = None, timeout_s: float = RELOAD_TIMEOUT_S) -> int:
    """Have the instance read its config file again; say what changed, role by role.

    ``timeout_s``: see ``reload_timeout_s``."""
    try:
        answer = _call("POST", url, "/admin/reload", timeout_s, api_key)
    except ServerRefused as exc:
        if exc.problems:  # the config's errors, one a line as check-config prints them
            print("\n".join(exc.problems), file=sys.stderr)
            print(f"{len(exc.problems)} error(s): the running config stays", file=sys.stderr)
        else:
            print(exc, file=sys.stderr)
        return 1
    except NoAnswer as exc:
        print(exc, file=sys.stderr)
        return 1
    if not isinstance(answer, dict) or not isinstance(answer.get("roles"), dict):
        print(f"{url} did not answer like slm_server", file=sys.stderr)
        return 1
    print(reload_report(answer))
    return 0


def reload_report(answer: Mapping[str, Any]) -> str:
    """The reload's answer as lines for a person: each role and what happened to it."""
    launch = answer.get("launch") or {}  # what became of the models started anew
    lines = [
        f"{role}: {change} ({launch[role]})" if role in launch else f"{role}: {change}"
        for role, change in answer["roles"].items()
    ]
    router = answer.get("router") or {}
    if router.get("changed"):
        lines.append("router settings applied: " + ", ".join(router["changed"]))
    if router.get("restart_needed"):
        names = ", ".join(router["restart_needed"])
        lines.append(f"changed, but only a restart applies them: {names}")
    lines += [str(line) for line in answer.get("warnings") or []]  # "warning: ..." each
    return "\n".join(lines)


def _change(
    url: str,
    role: str,
    action: str,
    wait_s: float,
    outcome: Callable[[str, Mapping[str, Any]], str],
    api_key: str | None,
) -> int:
    path = f"/v1/backends/{urllib.parse.quote(role, safe='')}/{action}"
    try:
        report = _call("POST", url, path, wait_s, api_key)
    except TooSlow as exc:  # the instance carries on without us
        print(f"{exc}; see `slm-server ps` for what {role} is doing", file=sys.stderr)
        return 1
    except (NoAnswer, ServerRefused) as exc:  # the server's messages name the role
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; see `slm-server ps` for what {role} is doing", file=sys.stderr)
        return 130
    if not isinstance(report, dict):
        print(f"{url} did not answer like slm_server", file=sys.stderr)
        return 1
    print(outcome(role, report))
    return 0


def _call(method: str, url: str, path: str, timeout_s: float, api_key: str | None) -> Any:
    """The JSON answer to ``method`` ``url + path``; NoAnswer or ServerRefused otherwise."""
    request = instance_request(url.rstrip("/") + path, method, api_key)
    try:
        with DIRECT.open(request, timeout=timeout_s) as response:
            return json.loads(response.read(_MAX_ANSWER_BYTES))
    except urllib.error.HTTPError as exc:
        message, problems = _error_message(exc)
        if exc.code == 401:
            message = f"{message}; {KEY_HINT}"
        raise ServerRefused(message, problems) from None
    except urllib.error.URLError as exc:  # refused, unknown host, or a connect that timed out
        if isinstance(exc.reason, TimeoutError):
            raise TooSlow(_too_slow(url, timeout_s)) from None
        raise NoAnswer(_nobody(url)) from None
    except TimeoutError:
        raise TooSlow(_too_slow(url, timeout_s)) from None
    except (OSError, ValueError):  # the connection dropped, or not JSON: not slm_server
        raise NoAnswer(f"{url} did not answer like slm_server") from None


def _nobody(url: str) -> str:
    return f"no slm_server answers at {url}; start it with ./start.sh or slm-server start"


def _too_slow(url: str, timeout_s: float) -> str:
    return f"no answer from {url} within {timeout_s:g} s"


def _error_message(error: urllib.error.HTTPError) -> tuple[str, list[str]]:
    """The message of the OpenAI error envelope, else the status and the start of the body;
    and the envelope's ``problems``, if any."""
    try:
        with error:
            body = error.read(_MAX_ANSWER_BYTES)
    except OSError:  # the body was cut short: the status alone
        body = b""
    return error_message(error.code, body), _problems(body)


def _problems(body: bytes) -> list[str]:
    """The ``problems`` a refused config reload lists in its error envelope; else none."""
    try:
        problems = json.loads(body)["error"]["problems"]
    except (ValueError, KeyError, TypeError):
        return []
    return [str(problem) for problem in problems] if isinstance(problems, list) else []


def error_message(status: int, body: bytes) -> str:
    """The message of the OpenAI error envelope in ``body``, else the status and the start
    of the body."""
    try:
        envelope = json.loads(body)
        message = envelope["error"]["message"]
    except (ValueError, KeyError, TypeError):
        text = body.decode(errors="replace").strip()[:200]
        return f"HTTP {status}" + (f": {text}" if text else "")
    return str(message)
