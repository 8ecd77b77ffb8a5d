"""Routing table: which backend serves a request, from its endpoint and ``model``."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from slm_server.backends.openai import KEY_NOT_CONFIGURED, KeyNotUsable, Remote, remote
from slm_server.backends.spec import BackendUnsupported
from slm_server.config import LoadedConfig, ModelEntry
from slm_server.router.admission import AdmissionGate
from slm_server.router.errors import AmbiguousModel, ModelNotFound, WrongModelType

log = logging.getLogger(__name__)

_TEXT = frozenset({"lm", "multimodal"})

# The model types each model endpoint accepts. Paths are forwarded unchanged:
# llama-server answers all three rerank spellings itself.
ENDPOINT_MODEL_TYPES: dict[str, frozenset[str]] = {
    "/v1/chat/completions": _TEXT,
    "/v1/completions": _TEXT,
    "/v1/responses": _TEXT,
    "/v1/messages": _TEXT,
    "/v1/messages/count_tokens": _TEXT,
    "/v1/embeddings": frozenset({"embeddings"}),
    "/v1/rerank": frozenset({"rerank"}),
    "/v1/reranking": frozenset({"rerank"}),
    "/rerank": frozenset({"rerank"}),
    "/v1/images/generations": frozenset({"image-generation"}),
    "/v1/images/edits": frozenset({"image-edit"}),  # multipart/form-data
    "/v1/audio/transcriptions": frozenset({"whisper"}),  # multipart/form-data
}


@dataclass
class Backend:
    """A configured backend as the router sees it: where it is and its admission gate."""

    role: str
    entry: ModelEntry
    gate: AdmissionGate = field(repr=False)
    last_used: float | None = None  # monotonic time the last request for it ended
    # False: requests ask the scheduler first (not running, being stopped, or held).
    open: bool = True
    # True: a request's end wakes the scheduler (someone waits for this backend to drain).
    watched: bool = False
    # A server slm_server does not start (backend: openai): how to reach it.
    remote: Remote | None = None
    # Why requests for it cannot be sent (an openai entry's key not set, say); None: they can.
    unusable: str | None = None
    # A server elsewhere: whether it was healthy at its last health probe (None: not yet
    # probed). The router sees no process of it, so probing is all it knows.
    probed_up: bool | None = None

    @property
    def in_flight(self) -> int:
        return self.gate.active

    @property
    def queued(self) -> int:
        return self.gate.waiting

    @property
    def label(self) -> str:
        if self.remote is not None:  # its URL, parsed once (a label is made per request)
            return f"'{self.role}' ({self.entry.id} at {self.remote.url})"
        if not self.entry.started_here:
            return f"'{self.role}' ({self.entry.id} at {self.entry.server_url})"
        return f"'{self.role}' ({self.entry.id} on port {self.entry.port})"

    def upstream_model(self, started: str | None) -> str | None:
        """The ``model`` its server is sent: ``started``, what the running process accepts
        (a server slm_server starts), or the entry's upstream_model (one it does not)."""
        return started if self.entry.started_here else self.entry.upstream_model


def _backend(
    role: str,
    entry: ModelEntry,
    config: LoadedConfig,
    max_waiting: int,
    environ: Mapping[str, str],
) -> Backend:
    backend = Backend(role, entry, AdmissionGate(entry.max_concurrency, max_waiting))
    if entry.started_here or not entry.enabled:
        return backend
    backend.remote, backend.unusable = _reach(backend, config, environ)
    return backend


def _reach(
    backend: Backend, config: LoadedConfig, environ: Mapping[str, str]
) -> tuple[Remote | None, str | None]:
    """How to reach ``backend``'s server elsewhere, or why it cannot be (said in the log:
    what a client and the health report are told names no variable)."""
    try:
        return remote(backend.entry, config.base_dir, environ), None
    except KeyNotUsable as exc:
        log.warning("%s cannot be used: %s", backend.label, exc)
        return None, KEY_NOT_CONFIGURED
    except BackendUnsupported as exc:
        log.warning("%s cannot be used: %s", backend.label, exc)
        return None, str(exc)


class RoutingTable:
    def __init__(
        self,
        config: LoadedConfig,
        kept: Mapping[str, Backend] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``kept``: backends carried over from an earlier table (a config reload), with
        their slots and requests in flight; they take their entries from ``config``, and
        the other roles get new backends. ``environ`` (default: this process's) holds the
        keys openai entries send their servers.

        Everything that can fail is done before a kept backend is changed: a table that
        cannot be built leaves the running one as it was."""
        max_waiting = config.file.router.max_queue
        kept = kept or {}
        environ = os.environ if environ is None else environ
        self.backends: dict[str, Backend] = {
            role: kept.get(role) or _backend(role, entry, config, max_waiting, environ)
            for role, entry in config.models.items()
        }
        for role, backend in kept.items():
            if role in config.models:
                backend.entry = config.models[role]
                if backend.unusable is not None:  # a CA file fixed since, say: try again
                    backend.remote, backend.unusable = _reach(backend, config, environ)
        self._by_id: dict[str, list[Backend]] = {}
        for backend in self.backends.values():
            if backend.entry.enabled:
                self._by_id.setdefault(backend.entry.id, []).append(backend)

    def addresses(self) -> set[tuple[str, int, ssl.SSLContext | None]]:
        """Where its backends are reached: host, port and TLS context (None: plain HTTP),
        as the connection pool keys its idle connections."""
        found: set[tuple[str, int, ssl.SSLContext | None]] = set()
        for backend in self.backends.values():
            entry, remote = backend.entry, backend.remote
            if remote is not None:
                found.add((remote.url.host, remote.url.port, remote.tls))
            elif entry.started_here and entry.port is not None:
                found.add((entry.connect_host, entry.port, None))
        return found

    @property
    def model_ids(self) -> list[str]:
        return sorted(self._by_id)

    def lookup(self, model_id: str, endpoint: str) -> Backend:
        """The one enabled backend for ``model_id`` that can serve ``endpoint``."""
        candidates = self._by_id.get(model_id)
        if not candidates:
            known = ", ".join(self.model_ids) or "none (no model is enabled)"
            raise ModelNotFound(
                f"model '{model_id}' not found; known models: {known}", param="model"
            )
        if len(candidates) > 1:
            roles = ", ".join(b.role for b in candidates)
            raise AmbiguousModel(
                f"model '{model_id}' is configured by several enabled entries ({roles}); "
                "give each a unique id or disable all but one",
                param="model",
            )
        backend = candidates[0]
        accepted = ENDPOINT_MODEL_TYPES[endpoint]
        if backend.entry.model_type not in accepted:
            raise WrongModelType(
                f"model '{model_id}' has model_type '{backend.entry.model_type}', "
                f"which {endpoint} does not serve (it needs {' or '.join(sorted(accepted))})",
                param="model",
            )
        return backend


def may_change(backend: Backend, path: str, upstream_model: str | None) -> bool:
    """Whether ``router_changes`` can set anything in a request to ``path`` on ``backend``
    (False: the body goes out as sent, and nothing but its ``model`` need be read)."""
    injects = backend.entry.chat_template_kwargs is not None and path == "/v1/chat/completions"
    return injects or upstream_model is not None


def router_changes(
    backend: Backend, path: str, request: dict[str, Any], upstream_model: str | None
) -> dict[str, Any]:
    """The fields the router sets in a request it forwards (empty: forward it as sent).

    The entry's chat_template_kwargs go into chat requests that carry none;
    ``model`` becomes ``upstream_model`` for servers that accept only their own name.
    """
    changes: dict[str, Any] = {}
    kwargs = backend.entry.chat_template_kwargs
    if (
        kwargs is not None
        and path == "/v1/chat/completions"
        and "chat_template_kwargs" not in request
    ):
        changes["chat_template_kwargs"] = kwargs
    if upstream_model is not None and request.get("model") != upstream_model:
        changes["model"] = upstream_model
    return changes
