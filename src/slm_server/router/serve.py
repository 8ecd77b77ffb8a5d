"""Running the routing service under uvicorn."""

from __future__ import annotations

import functools
import ipaddress
import logging

import uvicorn

from slm_server.admin import router_log
from slm_server.admin.reload_triggers import Triggers
from slm_server.config import LoadedConfig
from slm_server.router.app import RouterApp
from slm_server.router.http1 import Http1Protocol
from slm_server.router.shutdown import GracefulServer
from slm_server.supervisor import Supervisor

log = logging.getLogger(__name__)

WILDCARD_HOSTS = ("0.0.0.0", "::", "", "*")


def is_loopback(host: str) -> bool:
    """Whether an address to bind keeps a server to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may name any interface
        return False


def run_uvicorn(
    config: LoadedConfig,
    supervisor: Supervisor | None,
    *,
    host: str | None,
    port: int | None,
    log_level: str,
    watch_config: bool = False,
) -> int:
    """Serve the router until SIGINT/SIGTERM, which also stops ``supervisor``'s backends.

    The requests in flight get ``router.shutdown_grace_s`` to finish; see ``shutdown``.
    SIGHUP reloads the config, and so does a change of its file with ``watch_config``.
    """
    settings = config.file.router
    host = host if host is not None else settings.host
    port = port if port is not None else settings.port
    kept = router_log.install()  # before the first line: GET /admin/logs/router shows them all
    triggers = Triggers(watch_file=watch_config)
    app = RouterApp(config, supervisor, settle_gc=True, router_log=kept, reload_triggers=triggers)
    enabled = [
        f"{b.entry.id} -> {b.entry.server_url}"
        for b in app.table.backends.values()
        if b.entry.enabled
    ]
    log.info("config %s: routing %d model(s)", config.path, len(enabled))
    for line in enabled:
        log.info("  %s", line)
    if settings.response_store_url is not None:
        log.info("previous_response_id: %s", app.bridge.store.forgets)
    if app.keys is not None:
        log.info("API keys asked for on every endpoint but /health: %s", ", ".join(app.keys.names))
    elif not is_loopback(host):
        log.warning(
            "listening on %s: the router is reachable from other machines and has no "
            "authentication; use --host 127.0.0.1 to keep it local, or set router.api_keys",
            host or "all interfaces",
        )
    server_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # one log line per request costs more than the proxying itself
        # Forwarded answers keep the backend's Server header, which uvicorn's would double
        # (their Date is uvicorn's: see proxy). X-Forwarded-* rewriting is for apps behind
        # a proxy: not this.
        server_header=False,
        proxy_headers=False,
        loop="auto",
        http=Http1Protocol,
        lifespan="on",
        log_config=None,  # uvicorn's lines go through our logging setup, in our format
        # Typed int, but any number works: it goes to asyncio.wait_for.
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
    )
    stop_backends = app.stop_backends if supervisor is not None else None
    server = GracefulServer(
        server_config,
        stop_backends,
        app.log_streams.end_all,
        hangup=functools.partial(app.reload_requests.ask, "SIGHUP"),
        grace_s=lambda: app.config.file.router.shutdown_grace_s,
    )
    try:
        server.run()
    finally:
        logging.getLogger().removeHandler(kept)
    return 0
