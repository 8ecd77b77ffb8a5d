"""Routing table: which backend serves a request, from its endpoint and ``model``."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from typing import Any

from slm_server.backends.openai import KEY_NOT_CONFIGURED, KeyNotUsable, Remote, remote
from slm_server.backends.spec import BackendUnsupported
from slm_server.balance import Balancer
from slm_server.config import LoadedConfig, ModelEntry
from slm_server.router.admission import AdmissionGate
from slm_server.router.backend import UPSTREAM_HEADER, Backend
from slm_server.router.errors import (
    AmbiguousModel,
    ModelNotFound,
    Unreachable,
    WrongModelType,
)
from slm_server.router.replicas import ReplicaGroup, settings_of

log = logging.getLogger(__name__)

__all__ = ["UPSTREAM_HEADER", "Backend", "ReplicaGroup", "RoutingTable"]

# What a model id routes to: its one backend, or a group behind a balancer (several
# upstreams, or fallbacks).
Route = Backend | ReplicaGroup

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
        kept_groups: Mapping[str, ReplicaGroup] | None = None,
    ) -> None:
        """``kept``: backends carried over from an earlier table (a config reload), with
        their slots and requests in flight; they take their entries from ``config``, and
        the other roles get new backends. ``kept_groups``: that table's groups, whose
        balancers (cooldowns, sessions) go on for the groups that stay. ``environ``
        (default: this process's) holds the keys openai entries send their servers.

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
                backend.balancer = None  # set again below if it is still balanced
                if backend.unusable is not None:  # a CA file fixed since, say: try again
                    backend.remote, backend.unusable = _reach(backend, config, environ)
        self.groups: dict[str, ReplicaGroup] = {}
        for group, roles in config.replica_groups.items():
            replicas = [self.backends[role] for role in roles]
            self.groups[group] = _group(group, replicas, (kept_groups or {}).get(group))
        self._routes: dict[str, list[Route]] = {}
        for backend in self.backends.values():
            if not backend.entry.enabled:
                continue
            group_role = backend.entry.replica_group
            route: Route = backend if group_role is None else self.groups[group_role]
            routes = self._routes.setdefault(backend.entry.id, [])
            if route not in routes:
                routes.append(route)
        # Every model a request may fall back to, and those with fallbacks of their own.
        self.fallbacks_of: dict[str, tuple[str, ...]] = {
            model: tuple(routes[0].entry.fallbacks) for model, routes in self._routes.items()
        }
        for routes in self._routes.values():
            if len(routes) == 1 and isinstance(routes[0], Backend) and routes[0].entry.fallbacks:
                single = routes[0]
                routes[0] = self.groups[single.role] = _group(
                    single.role, [single], (kept_groups or {}).get(single.role)
                )

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
        return sorted(self._routes)

    def lookup(self, model_id: str, endpoint: str) -> Route:
        """What serves ``model_id`` on ``endpoint``: its one enabled backend, or the group
        that balances its upstreams (several, or one with fallbacks)."""
        candidates = self._routes.get(model_id)
        if not candidates:
            known = ", ".join(self.model_ids) or "none (no model is enabled)"
            raise ModelNotFound(
                f"model '{model_id}' not found; known models: {known}", param="model"
            )
        if len(candidates) > 1:
            roles = ", ".join(route.role for route in candidates)
            raise AmbiguousModel(
                f"model '{model_id}' is configured by several enabled entries ({roles}); "
                "give each a unique id or disable all but one",
                param="model",
            )
        route = candidates[0]
        accepted = ENDPOINT_MODEL_TYPES[endpoint]
        if route.entry.model_type not in accepted:
            raise WrongModelType(
                f"model '{model_id}' has model_type '{route.entry.model_type}', "
                f"which {endpoint} does not serve (it needs {' or '.join(sorted(accepted))})",
                param="model",
            )
        return route

    def balanced(self, model_id: str, endpoint: str) -> ReplicaGroup:
        """``model_id``'s upstreams behind a balancer, as a request falling back to it
        picks from them (a model of one upstream gets a group of one, kept for next time)."""
        route = self.lookup(model_id, endpoint)
        if isinstance(route, ReplicaGroup):
            return route
        group = self.groups.get(route.role)
        if group is None or group.replicas[0] is not route:
            group = self.groups[route.role] = _group(route.role, [route], None)
        return group

    def serving(self, model_id: str, endpoint: str, role: str) -> Backend:
        """The backend that serves ``model_id`` now, for a request that went to ``role``
        before a reload: that model's backend, or, for a group, ``role`` if it is still one
        of its replicas. Unreachable when it is not: the request goes to another replica."""
        route = self.lookup(model_id, endpoint)
        if isinstance(route, Backend):
            return route
        if role in route.replicas_by_role:
            return route.replica(role)
        raise Unreachable(
            f"{route.label} was reconfigured while the request waited; try again",
            retry_after=1,
        )


def _group(role: str, replicas: list[Backend], kept: ReplicaGroup | None) -> ReplicaGroup:
    """The group of ``replicas``, with the balancer of the group it replaces (``kept``) if
    any, so cooldowns and sessions go on across a reload for the servers that stay where
    they were. A replica's role is positional (``<role>@<index>``): one removed from the
    middle moves the next ones down, and what was learnt under a role is of the server
    that had it, so a role whose server changed starts afresh."""
    settings = settings_of(replicas[0].entry)
    if kept is None:
        return ReplicaGroup(role, replicas, Balancer(role, settings))
    balancer = kept.balancer
    balancer.settings = settings
    balancer.cooldowns.cooldown_after = settings.cooldown_after
    balancer.cooldowns.cooldown_s = settings.cooldown_s
    group = ReplicaGroup(role, replicas, balancer)
    for upstream, place in kept.places.items():
        if group.places.get(upstream) != place:  # gone, or the name of another server now
            balancer.forget(upstream)
    return group


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
