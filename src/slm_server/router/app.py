"""The routing service as an ASGI application."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

# The module, not its names: it imports from this package, and may be imported first.
from slm_server.admin import log_stream
from slm_server.admin.dashboard import DASHBOARD_PATHS, STATUS_PATH, Dashboard
from slm_server.admin.page import PAGE_PATHS
from slm_server.admin.reload import Reloader
from slm_server.admin.reload_triggers import ReloadRequests, Triggers
from slm_server.admin.router_log import RouterLog
from slm_server.auth import Grant, key_ring
from slm_server.config import LoadedConfig
from slm_server.router import health
from slm_server.router.access_log import AccessLog
from slm_server.router.asgi import (
    WATCH_DISCONNECT,
    WRITE_PIECE,
    Body,
    ClientDisconnected,
    Headers,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_json,
    send_response,
)
from slm_server.router.auth import grant_of, require_admin, require_model
from slm_server.router.backend_control import (
    as_unloaded,
    control_target,
    load,
    removed,
    removed_report,
    restart,
)
from slm_server.router.body_budget import BodyBudget
from slm_server.router.body_deadlines import BodyDeadlines
from slm_server.router.bridge import BRIDGED_PATHS, Bridge
from slm_server.router.cors import Cors, is_preflight
from slm_server.router.errors import (
    EndpointNotFound,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    RoleNotFound,
    RouterError,
)
from slm_server.router.failover import NO_REFUSALS, Balanced
from slm_server.router.forms import (
    FORM_DATA,
    FORM_PATHS,
    form_model,
    is_form,
    with_form_model,
)
from slm_server.router.interrupted import end_cut_short, end_with_error
from slm_server.router.lifetime import LOADING, RequestLifetime
from slm_server.router.load_figures import LoadFigures, unix_time
from slm_server.router.metrics import CONTENT_TYPE, METRICS_PATH, RequestRecord, RouterMetrics
from slm_server.router.model_name import restoring_model_name
from slm_server.router.proxy import (
    forward,
    forwarded_request_headers,
    new_upstream_pool,
)
from slm_server.router.remote_answers import to_remote
from slm_server.router.replicas import replica_standing
from slm_server.router.request_head import read_head
from slm_server.router.request_id import REQUEST_ID_HEADER, RequestIds
from slm_server.router.request_json import model_of, parse_object
from slm_server.router.routing import (
    ENDPOINT_MODEL_TYPES,
    Backend,
    RoutingTable,
    may_change,
    router_changes,
)
from slm_server.router.turns import cannot_be_used, hold_slot, start_failed
from slm_server.scheduler.budget import budget_bytes
from slm_server.scheduler.owner import Scheduler
from slm_server.stores import make_store
from slm_server.supervisor import BackendFailed, BackendProcess, Supervisor

log = logging.getLogger(__name__)

_GET_ENDPOINTS = frozenset({"/health", "/v1/models", "/v1/backends/health"})
RELOAD_PATH = "/admin/reload"

# A backend's state as GET /v1/models tells it (stopping counts as unloaded already).
_MODEL_STATUS = {"ready": "loaded", "starting": "loading", "failed": "failed"}
_STATUS_ORDER = ["loaded", "loading", "failed", "unloaded"]

# Net allocations between young-generation collections (CPython's default: 700).
_GC_YOUNG_THRESHOLD = 50_000


class RouterApp:
    """Routes each request to the backend named by its ``model`` field."""

    def __init__(
        self,
        config: LoadedConfig,
        supervisor: Supervisor | None = None,
        *,
        settle_gc: bool = False,
        router_log: RouterLog | None = None,
        reload_triggers: Triggers | None = None,
    ) -> None:
        """``supervisor``: given when this router owns the backends (``serve``).

        ``router_log``: the router's own log lines, for ``GET /admin/logs/router``.

        ``settle_gc``: tune the process's garbage collector at start-up (see
        ``settle_garbage_collector``); for the server process, not for apps in tests.
        """
        self.settle_gc = settle_gc
        self.reload_triggers = reload_triggers or Triggers()  # besides POST /admin/reload
        self.config = config
        self.supervisor = supervisor
        self.processes: Mapping[str, BackendProcess] = supervisor.processes if supervisor else {}
        self.router_log = router_log
        self.log_streams = log_stream.LogStreams()
        self.table = RoutingTable(config)
        self.bodies = BodyBudget(config.file.router.inflight_body_bytes)
        self.body_deadlines = BodyDeadlines(config.file.router.body_timeout_s)
        self.started_at = int(time.time())
        self.pool = new_upstream_pool()
        self.bridge = Bridge(make_store(config.file.router, os.environ))
        self.load = LoadFigures(config.base_dir)
        self.request_ids = RequestIds()
        self.access_log = AccessLog(config.file.router.access_log)
        # The loop serving between lifespan start-up and shutdown, so that a request need
        # not ask for it (see RequestLifetime); None outside them, as in tests without.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.scheduler = self._scheduler(supervisor) if supervisor is not None else None
        if self.scheduler is not None:
            self.load.waiting_to_start = self.scheduler.waiting
        self.metrics = RouterMetrics(
            self.table.model_ids, self.table.backends, self.processes, self.load
        )
        self.dashboard = Dashboard(
            functools.partial(self._info, "/v1/backends/health"),
            lambda: self.metrics.tallies,
            lambda: self.scheduler.budget_bytes if self.scheduler is not None else None,
            runs_backends=self.scheduler is not None,
            started_at=self.started_at,
            processes=self.processes,
        )
        self.apply_settings(config)
        self.reloader = Reloader(self)
        self.reload_requests = ReloadRequests(self.reloader.reload_asked)

    def apply_settings(self, config: LoadedConfig) -> None:
        """Take ``config``'s router settings: at start-up, and from a reloaded config (then
        in one step with the new routing table, between two requests)."""
        settings = config.file.router
        # None without router.api_keys: then no request is asked for a key.
        self.keys = key_ring(settings.api_keys, os.environ)
        self.strip_credentials = self.keys is not None  # a backend never sees a client's key
        public = {"/health", METRICS_PATH} if settings.metrics_public else {"/health"}
        # A liveness probe needs no key, nor the dashboard's page (it holds no data).
        self.keyless_paths = frozenset(public | PAGE_PATHS)
        self.max_body_bytes = int(settings.max_body_mb * 1024 * 1024)
        self.bodies.limit = settings.inflight_body_bytes
        self.body_deadlines.idle_timeout_s = settings.body_timeout_s
        self.access_log.enabled = settings.access_log
        self.cors = Cors(settings.cors_origins) if settings.cors_origins else None
        # A load may wait for others to drain and stop, then for its own start.
        self.load_timeout_s = settings.shutdown_grace_s
        if self.supervisor is not None:
            policy = self.supervisor.policy
            self.load_timeout_s += policy.stop_grace_s + policy.startup_timeout_s

    def _scheduler(self, supervisor: Supervisor) -> Scheduler:
        settings = self.config.file.router
        backends = self.table.backends

        async def measure() -> None:  # the roles of the day: a reload changes the table
            await self.load.measure(self.table.backends, supervisor.processes)

        return Scheduler(
            {role: backends[role].entry for role in supervisor.processes},
            supervisor.processes,
            backends,
            self.load,
            measure,
            budget_bytes=budget_bytes(settings.memory_budget_gb),
            max_loaded=settings.max_loaded_models,
            unload_grace_s=settings.shutdown_grace_s,
            max_waiting=settings.max_queue
            + max(b.entry.max_concurrency for b in backends.values()),
        )

    async def stop_backends(self) -> None:
        """Stop deciding, then stop every backend (for shutdown)."""
        if self.scheduler is not None:
            await self.scheduler.aclose()
        if self.supervisor is not None:
            await self.supervisor.stop_all()

    async def aclose(self) -> None:
        self.pool.close()
        await self.bridge.store.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.loop = asyncio.get_running_loop()
                if self.router_log is not None:
                    self.router_log.attach(asyncio.get_running_loop())
                if self.settle_gc:  # before the supervisor's tasks exist: they are not frozen
                    settle_garbage_collector()
                if self.scheduler is not None:
                    await self.scheduler.start()  # it starts the backends due at launch
                self.dashboard.sampler.start()
                self.reload_requests.start(self.reload_triggers, self.config.path)
                await self.bridge.store.check()  # a wrong password is said now, not later
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.reload_requests.aclose()
                await self.dashboard.sampler.aclose()
                await self.stop_backends()
                await self.aclose()
                if self.router_log is not None:
                    self.router_log.detach()
                self.loop = None
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id, bearer, api_key, origin = read_head(scope["headers"])
        request_id, answer_headers = self._answer_headers(request_id, origin)
        extensions = scope.get("extensions")
        write_piece = extensions.get(WRITE_PIECE) if extensions else None
        sent = self.metrics.record(send, scope["path"], request_id, answer_headers, write_piece)
        preflight = origin is not None and self._preflight(scope, origin)
        refused: str | None = None
        # Errors go out through sent.send too: the metrics count the status they answer.
        try:
            if preflight:
                await _answer_preflight(scope["path"], sent)
            else:
                await self._dispatch(scope, receive, sent, bearer, api_key)
        except asyncio.CancelledError:
            # Only the server cancels a request: its shutdown grace is over. The request is
            # ended here, in its protocol's way, instead of by a dropped connection (or
            # uvicorn's text/plain 500); the task ends right after, as the cancel asked.
            await end_cut_short(sent.send, scope["path"], sent.start, sent.last)
        except RouterError as error:
            refused = error.code
            if error.status >= 500 and error.log_each:
                log.warning("%s %s -> %d: %s", scope["method"], scope["path"], error.status, error)
            await end_with_error(sent.send, scope["path"], sent.start, sent.last, error)
        except ClientDisconnected:
            log.debug("client left before sending its whole request")
        except Exception:  # a bug: said as a 500 in the client's shape, never uvicorn's text/plain
            log.exception("%s %s: unexpected error", scope["method"], scope["path"])
            internal = InternalError("internal error in the router (logged with details)")
            await end_with_error(sent.send, scope["path"], sent.start, sent.last, internal)
        finally:
            sent.finish(refused)
            self.access_log.write(scope["method"], scope["path"], sent)

    def _answer_headers(self, sent_id: bytes | None, origin: bytes | None) -> tuple[bytes, Headers]:
        """The request's id (its client's ``sent_id`` if sane), and the headers its answer
        gets: the id, and the CORS headers if ``origin`` is allowed."""
        request_id = self.request_ids.given(sent_id)
        headers = [(REQUEST_ID_HEADER, request_id)]
        if origin is not None and self.cors is not None and self.cors.allows(origin):
            headers += self.cors.answer_headers(origin)
        # To other origins the router looks as it does without CORS.
        return request_id, headers

    def _preflight(self, scope: Scope, origin: bytes) -> bool:
        """True for a preflight from an allowed ``origin``."""
        if self.cors is None or not self.cors.allows(origin):
            return False
        return is_preflight(scope["method"], scope["headers"])

    async def _dispatch(
        self,
        scope: Scope,
        receive: Receive,
        sent: RequestRecord,
        bearer: bytes | None,
        api_key: bytes | None,
    ) -> None:
        """Serve the request; ``bearer`` and ``api_key``: the keys it presents (read_head)."""
        path: str = scope["path"]
        method: str = scope["method"]
        grant: Grant | None = None  # None: no keys are configured
        if self.keys is not None and path not in self.keyless_paths:
            grant = grant_of(self.keys, bearer, api_key)
            sent.key = grant.name  # the metrics count requests by key name
        if path in ENDPOINT_MODEL_TYPES:
            if method != "POST":
                raise MethodNotAllowed(f"{path} takes POST, not {method}", allow="POST")
            await self._model_request(scope, receive, sent, path, grant)
        elif path in _GET_ENDPOINTS:
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{path} takes GET, not {method}", allow="GET, HEAD")
            await send_json(sent.send, 200, await self._info(path, grant))
        elif path == METRICS_PATH:
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{path} takes GET, not {method}", allow="GET, HEAD")
            if grant is not None:  # keys are set, and the metrics are not public
                require_admin(grant, "reading /metrics")
            exposition = self.metrics.exposition()
            await send_response(sent.send, 200, exposition, [(b"content-type", CONTENT_TYPE)])
        elif (target := control_target(path)) is not None:
            if method != "POST":
                raise MethodNotAllowed(f"{path} takes POST, not {method}", allow="POST")
            if grant is not None:
                require_admin(grant, "loading, unloading and restarting models")
            await send_json(sent.send, 200, await self._control_any(*target))
        elif (log := log_stream.log_name(path)) is not None:
            if method != "GET":
                raise MethodNotAllowed(f"{path} takes GET, not {method}", allow="GET")
            if grant is not None:
                require_admin(grant, "reading logs")
            runs = self.supervisor is not None
            elsewhere = {
                role: backend.entry.server_url
                for role, backend in self.table.backends.items()
                if backend.entry.enabled and backend.entry.remote_url is not None
            }
            feed = log_stream.feed_of(
                log, self.processes, self.router_log, runs_backends=runs, elsewhere=elsewhere
            )
            query = log_stream.parse_query(scope["query_string"])
            await self.log_streams.answer(feed, query, receive, sent.send)
        elif path in DASHBOARD_PATHS:
            if path == STATUS_PATH and grant is not None:  # per-model traffic, log tails
                require_admin(grant, "the dashboard")
            await self.dashboard.answer(method, path, grant, sent.send)
        elif path == RELOAD_PATH:
            if method != "POST":
                raise MethodNotAllowed(f"{path} takes POST, not {method}", allow="POST")
            if grant is not None:
                require_admin(grant, "reloading the config")
            await send_json(sent.send, 200, await self.reloader.reload())
        else:
            raise EndpointNotFound(f"no endpoint {method} {path}")

    async def _info(self, path: str, grant: Grant | None) -> Any:
        if path == "/health":
            return {"status": "ok", "pid": os.getpid()}
        if path == "/v1/models":
            return self._models(grant)
        # Like /v1/models: a key scoped to some models learns nothing of the others.
        backends = {
            role: backend
            for role, backend in self.table.backends.items()
            if grant is None or grant.admin or grant.allows(backend.entry.id)
        }
        return await self._health(backends)

    async def _health(
        self,
        backends: Mapping[str, Backend],
        processes: Mapping[str, BackendProcess] | None = None,
    ) -> dict[str, dict[str, Any]]:
        timeout = self.config.file.router.health_timeout
        # A model a reload moved elsewhere: the process of its old config, stopping, is not its.
        processes = {
            role: process
            for role, process in (self.processes if processes is None else processes).items()
            if role in backends and backends[role].entry.started_here
        }
        reports, figures = await asyncio.gather(
            health.probe_all(self.pool, backends, timeout, processes),
            self.load.figures(backends, processes, timeout),
        )
        now = asyncio.get_running_loop().time()
        for role, report in reports.items():
            process = processes.get(role)
            if process is not None:
                report.update(process.snapshot())
            report.update(figures.get(role, {}))
            entry = backends[role].entry
            if entry.enabled and entry.started_here:
                report.update(idle_ttl_s=entry.idle_ttl_s, pinned=entry.pinned)
                report["on_demand"] = entry.on_demand
            if self.scheduler is not None and process is not None:
                report["idle_since"] = unix_time(self.scheduler.idle_since(role))
            replica_standing(backends[role], report, now)
        return reports

    async def _control_any(self, role: str, action: str) -> dict[str, Any]:
        """``_control`` of ``role``, or of each replica of the group ``role`` names: one
        after another, so that a restarted group keeps serving from the others meanwhile."""
        replicas = self.config.replica_groups.get(role)
        if replicas is None:
            return await self._control(role, action)
        reports = {replica: await self._control(replica, action) for replica in replicas}
        return {"role": role, "replicas": reports}

    async def _control(self, role: str, action: str) -> dict[str, Any]:
        """Load, unload or restart ``role``; its health entry once done."""
        process = self.processes.get(role)
        backend = self.table.backends.get(role)
        if backend is not None and not backend.entry.started_here:
            raise InvalidRequest(
                f"{backend.label} runs elsewhere: slm_server does not start, stop or "
                f"restart it, so it cannot {action} it"
            )
        if process is None or self.scheduler is None:
            if role in self.table.backends and self.scheduler is None:
                raise InvalidRequest(
                    "this router does not run its backends (started as `slm-server router`): "
                    "it cannot load or unload them"
                )
            roles = ", ".join(sorted(self.processes)) or "none"
            raise RoleNotFound(f"no enabled backend role '{role}'; roles: {roles}")
        if backend is None:  # a reload removed it: it drains, then stops for good
            if action != "unload":
                raise removed(role)
            await self.scheduler.unload(role)
            return removed_report(process)
        if action == "load":
            await load(self.scheduler, self.processes, role, self.load_timeout_s)
        elif action == "restart":
            await restart(self.scheduler, self.processes, role, self.load_timeout_s)
        else:
            await self.scheduler.unload(role)
        if role in self.table.backends:  # the process of the day: a reload may replace it
            report = (await self._health({role: self.table.backends[role]}))[role]
        else:  # a reload removed it meanwhile: stopped, and gone with its process
            report = (await self._health({role: backend}, {role: process}))[role]
        return as_unloaded(report) if action == "unload" else report

    def _models(self, grant: Grant | None) -> dict[str, Any]:
        """The enabled models, only those ``grant`` may use (all without keys)."""
        data: list[dict[str, Any]] = [
            {
                "id": backend.entry.id,
                "object": "model",
                "created": self.started_at,
                "owned_by": "slm_server",
                "role": backend.entry.replica_group or backend.role,
                "backend": backend.entry.backend,
                "port": backend.entry.port,
                "model_type": backend.entry.model_type,
                "context_length": backend.entry.context_length,
                "quantization": backend.entry.quantization,
                "supports_function_calling": backend.entry.supports_function_calling,
                **_replicas_of(backend, self.config.replica_groups),
            }
            for backend in self.table.backends.values()
            if backend.entry.enabled
            and (grant is None or grant.allows(backend.entry.id))
            and not backend.entry.replica  # a group is listed once, by its first replica
        ]
        groups = self.config.replica_groups
        for model in data:  # only a router that runs the backends knows their state
            roles = groups.get(model["role"], (model["role"],))
            states = [
                _MODEL_STATUS.get(process.state, "unloaded")
                for role in roles
                if (process := self.processes.get(role)) is not None
                and self.table.backends[role].entry.started_here
            ]
            if states:  # a group is as loaded as its most loaded replica
                model["status"] = min(states, key=_STATUS_ORDER.index)
        return {"object": "list", "data": data}

    async def _model_request(
        self, scope: Scope, receive: Receive, sent: RequestRecord, path: str, grant: Grant | None
    ) -> None:
        # The deadline runs from arrival, upload too.
        extensions = scope.get("extensions")
        told = extensions.get(WATCH_DISCONNECT) if extensions else None
        lifetime = RequestLifetime(receive, sent, self.loop, told)
        body = await read_body(
            scope, receive, self.max_body_bytes, self.bodies, self.body_deadlines, lifetime.task
        )
        lifetime.stopwatch.resume()  # the router's own time starts once the client has sent
        try:
            await self._route(scope, sent, path, body, lifetime, grant)
        finally:
            self.bodies.give_back(len(body))

    async def _route(
        self,
        scope: Scope,
        sent: RequestRecord,
        path: str,
        body: Body,
        lifetime: RequestLifetime,
        grant: Grant | None,
    ) -> None:
        # Only the upload endpoints look at the content type: the JSON ones stay as quick as before.
        content_type = (header(scope, b"content-type") or "") if path in FORM_PATHS else ""
        form = is_form(content_type)
        model = form_model(content_type, body) if form else _model_of(scope, path, body)
        if not isinstance(model, str) or not model:
            raise InvalidRequest("the request needs a `model` field naming a model", param="model")
        slot = self.metrics.slot(model, path)  # the backend's model: it is found by that id
        if grant is not None:  # before the lookup: a key learns nothing of models outside it
            sent.slot = slot  # a refusal counts under a served id
            require_model(grant, model)
        route = self.table.lookup(model, path)
        lifetime.begin(route.entry.default_timeout, route)
        sent.routed(slot, lifetime.stopwatch)
        try:
            if isinstance(route, Backend):  # one upstream, no fallbacks: nothing to balance
                await self._admitted(scope, sent, path, model, body, form, route, lifetime)
            else:  # several upstreams, or fallbacks: the balancer picks, failures move on
                form_type = content_type if form else None
                balanced = Balanced(
                    route,
                    model,
                    path,
                    body,
                    scope,
                    form_type,
                    grant,
                    sent,
                    lifetime,
                    self._table_of_the_day,
                    self.processes,
                )
                backend = balanced.pick()
                if backend is not None:
                    # The first attempt is sent from here, with no coroutine between: most
                    # requests are answered by it, and an answer's way is its cost.
                    try:
                        refusals = balanced.refusals
                        await self._admitted(
                            scope, sent, path, model, body, form, backend, lifetime, refusals
                        )
                    except BaseException as error:
                        balanced.failed(error)  # raised again unless go_on can act on it
                    else:
                        balanced.answered()
                        return
                await balanced.go_on(self._admitted)
        except asyncio.CancelledError:
            if not lifetime.client_left():
                raise
            # The backend it went to: a reload may have moved it while it waited.
            gone_from = lifetime.for_whom or route
            log.info("%s: client disconnected; its request was dropped", gone_from.label)
        finally:
            lifetime.end()

    def _table_of_the_day(self) -> RoutingTable:  # a reload replaces it
        return self.table

    async def _admitted(
        self,
        scope: Scope,
        sent: RequestRecord,
        path: str,
        model: str,
        body: Body,
        form: bool,
        backend: Backend,
        lifetime: RequestLifetime,
        refusals: frozenset[int] = NO_REFUSALS,
    ) -> None:
        """Serve the request for ``model`` with one of ``backend``'s slots, waiting if need be.

        The slot is taken before waiting for a loading backend, so the queue bounds those
        waits too, and it is held through a converted retry (which must not queue again).
        ``refusals``: answer statuses raised as UpstreamRefusal instead of relayed (another
        upstream may take the request).
        """
        if backend.unusable is not None:
            raise cannot_be_used(backend)
        # Not open (not running, being stopped, or held for another's turn), or no slot
        # free: wait for one. A full queue answers 429 at once, before any waiting starts.
        if not backend.open or not backend.gate.try_acquire():
            backend = await hold_slot(
                self.scheduler, backend, lifetime, lambda: self.table, model, path
            )
        gate = backend.gate
        send: Send = sent.send
        # A stream's events may skip the messages while nothing wraps the send.
        pieces = sent if sent.writes_pieces else None
        answer_headers = sent.answer_headers
        if answer_headers is not None:
            answer_headers.append(backend.upstream_header)
        try:
            # A model a reload just moved to a server elsewhere has none: the process of
            # its old config may still be stopping, and must not be waited for.
            process = self.processes.get(backend.role) if backend.entry.started_here else None
            started_as = None
            if process is not None:
                await _wait_until_ready(process, backend, lifetime)
                started_as = process.upstream_model
            upstream_model = backend.upstream_model(started_as)
            remote = backend.remote
            strip = self.strip_credentials or remote is not None
            headers = forwarded_request_headers(scope["headers"], strip)
            if remote is not None:
                headers = to_remote(headers)
                headers += remote.headers  # the server's own key, if it asks for one
            headers.append((REQUEST_ID_HEADER, sent.request_id))  # in place of the client's own
            query: bytes = scope["query_string"]
            target = f"{path}?{query.decode('latin-1')}" if query else path
            if upstream_model is not None:  # a native answer on a bridged path, too
                # A server elsewhere may answer a longer name than it was sent: any goes.
                served = None if remote is not None else upstream_model
                send = restoring_model_name(send, served=served, asked=model)
                pieces = None
            # A form (a file upload) is forwarded as sent but for its model's name; so is
            # JSON the router neither converts nor changes, without building its document.
            if form:
                if upstream_model is not None and upstream_model != model:
                    content_type = header(scope, b"content-type") or ""
                    body = with_form_model(content_type, body, upstream_model)
            elif path in BRIDGED_PATHS or may_change(backend, path, upstream_model):
                request = parse_object(body)
                body = _with_injected_fields(backend, path, request, body, upstream_model)
                if path in BRIDGED_PATHS:
                    await self.bridge.handle(
                        self.pool,
                        backend,
                        process,
                        path,
                        target,
                        request,
                        body,
                        headers,
                        send,
                        lifetime,
                        sent.key,
                        refusals,
                    )
                    return
            await forward(
                self.pool,
                backend,
                target,
                headers,
                body,
                send,
                lifetime,
                refusals=refusals,
                pieces=pieces,
            )
        finally:
            gate.release()
            backend.last_used = time.monotonic()
            if backend.watched:  # a model waiting for memory may now have its turn
                assert self.scheduler is not None
                self.scheduler.wake()


def _replicas_of(backend: Backend, groups: Mapping[str, tuple[str, ...]]) -> dict[str, int]:
    group = backend.entry.replica_group
    return {} if group is None else {"replicas": len(groups[group])}


def _methods_of(path: str) -> str | None:
    """The methods ``path`` takes, for a preflight; None for no endpoint."""
    if path in ENDPOINT_MODEL_TYPES or control_target(path) is not None or path == RELOAD_PATH:
        return "POST"
    if path in _GET_ENDPOINTS or path == METRICS_PATH or path in DASHBOARD_PATHS:
        return "GET, HEAD"
    if log_stream.log_name(path) is not None:
        return "GET"
    return None


async def _answer_preflight(path: str, sent: RequestRecord) -> None:
    methods = _methods_of(path)
    if methods is None:
        raise EndpointNotFound(f"no endpoint {path}")
    headers = Cors.preflight_headers(methods)
    await sent.send({"type": "http.response.start", "status": 204, "headers": headers})
    await sent.send({"type": "http.response.body", "body": b""})


def settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the hot path once start-up is done.

    Measured under load (64-256 connections, one core): the collector took 10-13% of the
    router's CPU. Full collections re-walked everything imported at start-up (about 50 ms
    each, a latency spike too); young ones ran every 700 net allocations, which the
    objects of the requests in flight alone exceed. Freezing moves the start-up objects
    out of the collector's sight; the larger young threshold leaves collections to real
    garbage cycles, which requests rarely make (with it, none ran under load at all).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def _wait_until_ready(
    process: BackendProcess, backend: Backend, lifetime: RequestLifetime
) -> None:
    """Hold a request while its backend starts, within the request's deadline."""
    if process.state == "ready":  # ensure_ready decides; this only spares a ready one a timer
        return
    try:
        await lifetime.wait_for(process.ensure_ready(), LOADING)
    except BackendFailed as exc:
        raise start_failed(backend.label, exc) from None


def _model_of(scope: Scope, path: str, body: Body) -> object:
    try:
        return model_of(body)
    except InvalidRequest:
        if is_form(header(scope, b"content-type") or ""):  # say why, rather than "not JSON"
            raise InvalidRequest(f"{path} takes a JSON body, not {FORM_DATA}") from None
        raise


def _with_injected_fields(
    backend: Backend,
    path: str,
    request: dict[str, Any],
    body: Body,
    upstream_model: str | None = None,
) -> Body:
    """The body to forward: the client's own bytes unless the router must change it."""
    changes = router_changes(backend, path, request, upstream_model)
    if not changes:
        return body
    return json.dumps({**request, **changes}).encode()
