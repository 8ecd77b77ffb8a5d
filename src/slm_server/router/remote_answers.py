"""What passes between a client and a server elsewhere (``backend: openai``), besides the
request and its answer: that server belongs to someone else, maybe a hosted API.

Going out, the client's cookies, its OpenAI organization and project, and where it
connects from stay with the router (the credentials are dropped by the proxy). Coming
back, that server's cookies, its OpenAI account headers and its key challenge stay there
too. A key the server refuses is the router's configuration failing, not the client's
key: a 502 that says so. An error that is not in the OpenAI form (an HTML page from a
wrong base_url path) and a redirect (which would send the client past the router) are
told in the OpenAI envelope.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from slm_server.router.asgi import Headers
from slm_server.router.errors import BadGateway, RemoteAnswer, RouterError
from slm_server.router.routing import Backend

_NOT_SENT = frozenset({b"cookie", b"openai-organization", b"openai-project", b"forwarded"})
_NOT_SENT_PREFIX = b"x-forwarded-"
_NOT_RELAYED = frozenset({b"set-cookie", b"www-authenticate"})
_NOT_RELAYED_PREFIX = b"openai-"


def to_remote(headers: Headers) -> Headers:
    """The client's headers without what only the router should see."""
    return [
        (name, value)
        for name, value in headers
        if name not in _NOT_SENT and not name.startswith(_NOT_SENT_PREFIX)
    ]


def from_remote(headers: Headers) -> Headers:
    """The server's answer headers without what is its own business."""
    return [
        (name, value)
        for name, value in headers
        if name not in _NOT_RELAYED and not name.startswith(_NOT_RELAYED_PREFIX)
    ]


def refused(backend: Backend, target: str, status: int, payload: bytes) -> RouterError | None:
    """The error the client gets instead of ``backend``'s answer to ``target`` (path and
    query), or None to relay the answer as it is."""
    remote = backend.remote
    if remote is None or status < HTTPStatus.MULTIPLE_CHOICES:
        return None
    where = remote.url.origin + remote.url.target(target)
    if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
        if backend.entry.api_key_env is None:
            return BadGateway(
                f"the server at {remote.url} asks for a key (HTTP {status}): give its "
                "entry api_key_env, the environment variable holding that key"
            )
        return BadGateway(f"the server at {remote.url} refused the key in api_key_env")
    if status < HTTPStatus.BAD_REQUEST:
        return BadGateway(
            f"{where} answered HTTP {status}, a redirect the router does not follow: "
            "check the entry's base_url"
        )
    if _is_openai_error(payload):
        return None
    return RemoteAnswer(
        status,
        f"{where} answered HTTP {status} without an OpenAI error; "
        f"check the entry's base_url{_said(payload)}",
    )


def _is_openai_error(payload: bytes) -> bool:
    try:
        parsed = json.loads(payload)
    except ValueError:
        return False
    return isinstance(parsed, dict) and "error" in parsed


def _said(payload: bytes) -> str:
    """The start of a plain-text answer; nothing of an HTML page."""
    text = payload.decode("utf-8", errors="replace").strip()
    if not text or text.startswith("<"):
        return ""
    return f": {text[:200]}"
