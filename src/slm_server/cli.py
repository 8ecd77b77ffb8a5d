"""Command line: ``python -m slm_server <command>``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from slm_server.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    LoadedConfig,
    RouterSettings,
    base_dir_for,
    load_config,
    resolve_config_path,
)
from slm_server.config.default import DEFAULT_MODEL_ID, default_config
from slm_server.log_format import LOG_FORMATS, configure_logging

log = logging.getLogger("slm_server")


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $SLM_SERVER_CONFIG, else config/models.yaml)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm-server",
        description="One OpenAI-compatible endpoint in front of many local model servers.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check-config", help="validate the config and list every problem")
    _add_config_flag(check)

    serve = commands.add_parser("serve", help="start the backends and serve the router")
    router = commands.add_parser("router", help="serve the router only (backends run already)")
    start = commands.add_parser(
        "start", help="serve in the background; report each model as it becomes ready"
    )
    for command in (serve, router, start):
        _add_config_flag(command)
        command.add_argument("--host", help="bind address (default: router.host, else 0.0.0.0)")
        command.add_argument("--port", type=int, help="port (default: router.port, else 8000)")
        _add_log_level_flag(command)
    for command in (serve, router):
        command.add_argument(
            "--watch-config",
            action="store_true",
            help="reload the config when its file changes (SIGHUP and `slm-server reload` "
            "reload it too)",
        )
    start.add_argument(
        "--wait",
        type=float,
        default=900,
        metavar="SECONDS",
        help="how long to report on loading models before returning (default: 900)",
    )
    _add_api_key_flag(start)
    stop = commands.add_parser("stop", help="stop what `start` started, backends included")
    _add_config_flag(stop)

    ps = commands.add_parser("ps", help="show each model of the running instance: state, memory")
    load = commands.add_parser("load", help="start a model in the running instance; wait for it")
    unload = commands.add_parser("unload", help="stop a model in the running instance")
    restart = commands.add_parser(
        "restart", help="stop a model in the running instance and start it again; wait for it"
    )
    logs = commands.add_parser("logs", help="print a model's log (or the router's), -f to follow")
    reload = commands.add_parser(
        "reload", help="make the running instance read its config file again; apply changes"
    )
    for command in (ps, load, unload, restart, logs, reload):
        _add_config_flag(command)
        command.add_argument(
            "--url",
            help="the instance's address (default: the one `start` started, "
            "else router.port on this machine)",
        )
        _add_api_key_flag(command)
    for command in (load, unload, restart):
        command.add_argument("role", help="the model's role: its key under `models:`")
        command.add_argument(
            "--wait",
            type=float,
            default=900,
            metavar="SECONDS",
            help="how long to wait for the model to be ready or stopped (default: 900)",
        )

    logs.add_argument(
        "role", help="the model's role (its key under `models:`), or `router` for the router's own"
    )
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines as they are written"
    )
    logs.add_argument(
        "-n",
        "--lines",
        type=_non_negative_int,
        default=100,
        metavar="N",
        help="how many of the last lines to print first (default: 100; the server keeps 1000)",
    )

    commands.add_parser(
        "hash-key",
        help="print the SHA-256 of an API key read from stdin, for router.api_keys' key_sha256",
    )

    supervise = commands.add_parser("backends", help="start the backends and keep them up")
    _add_config_flag(supervise)
    _add_log_level_flag(supervise)

    build = commands.add_parser(
        "build-llama-server",
        help="build llama-server for this machine (or reuse the kept build), then check it",
    )
    build.add_argument("--rebuild", action="store_true", help="build again even if a build is kept")
    build.add_argument(
        "--jobs",
        type=_positive_int,
        metavar="N",
        help="compilers at once (default: CPUs, as memory allows)",
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not 0 or more")
    return value


def _add_api_key_flag(parser: argparse.ArgumentParser) -> None:
    # A file, never the key itself: other users can read a command's arguments while it runs.
    parser.add_argument(
        "--api-key-file",
        dest="api_key",
        type=_key_in_file,
        metavar="PATH",
        help="a file whose first line is the key to send when the instance has "
        "router.api_keys (default: $SLM_API_KEY, else a configured key held here: its "
        "key_env set, or a plain key; admin keys first)",
    )


def _key_in_file(path: str) -> str:
    from slm_server.auth.client import KeyFileError, key_from_file

    try:
        return key_from_file(Path(path))
    except KeyFileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_log_level_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="text lines (default), or one JSON object per line",
    )


def _load_or_report(
    config_arg: str | None, *, allow_default: bool = False, consequence: str = "nothing started"
) -> LoadedConfig | None:
    path = resolve_config_path(config_arg)
    if allow_default and path == DEFAULT_CONFIG_PATH and not path.exists():
        default = default_config(Path.cwd())
        if default is not None:
            log.warning(
                "no %s: serving the built-in default model '%s'. To serve your own models: "
                "cp config/models.yaml.example config/models.yaml, then edit it",
                path,
                DEFAULT_MODEL_ID,
            )
            return default
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(exc.problems)} error(s); {consequence}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    from slm_server.config_checks import config_problems

    loaded = _load_or_report(args.config)
    if loaded is None:
        return 1
    problems = config_problems(loaded, os.environ)
    for problem in problems:
        print(problem)
    errors = sum(1 for problem in problems if problem.severity == "error")
    warnings = len(problems) - errors
    written = [entry for entry in loaded.models.values() if not entry.replica]
    enabled = sum(1 for entry in written if entry.enabled)
    print(
        f"{loaded.path}: {len(written)} model(s), {enabled} enabled; "
        f"{errors} error(s), {warnings} warning(s)"
    )
    return 1 if errors else 0


def _router(args: argparse.Namespace) -> int:
    from slm_server.router.serve import run_uvicorn

    loaded = _load_or_report(args.config)
    if loaded is None or not _keys_usable(loaded):
        return 1
    # Lenient: the backends may live elsewhere, where the paths are valid.
    for problem in loaded.problems:
        log.warning("%s", problem)
    if loaded.file.router.api_keys:  # without keys, the router is as open as its backends
        from slm_server.serving import warn_of_open_backends

        warn_of_open_backends(loaded)
    return run_uvicorn(
        loaded,
        None,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        watch_config=args.watch_config,
    )


def _load_for_launch(config_arg: str | None) -> LoadedConfig | None:
    """The config, only if it is good enough to start backends from."""
    loaded = _load_or_report(config_arg, allow_default=True)
    if loaded is None:
        return None
    for problem in loaded.problems:
        log.log(logging.ERROR if problem.severity == "error" else logging.WARNING, "%s", problem)
    if loaded.errors:
        log.error("%s: %d error(s); no backend started", loaded.path, len(loaded.errors))
        return None
    return loaded


def _keys_usable(loaded: LoadedConfig) -> bool:
    """Say what is wrong with the API keys; False when the router cannot start with them."""
    from slm_server.auth.rules import key_problems

    problems = key_problems(loaded, os.environ)
    for problem in problems:
        log.log(logging.ERROR if problem.severity == "error" else logging.WARNING, "%s", problem)
    errors = sum(1 for problem in problems if problem.severity == "error")
    if errors:
        log.error("%s: %d error(s) in router.api_keys; nothing started", loaded.path, errors)
    store_usable = _store_usable(loaded)  # said too when the keys are wrong already
    return not errors and store_usable


def _store_usable(loaded: LoadedConfig) -> bool:
    """Say what is wrong with the Responses store's settings; False when the router cannot
    start with them."""
    from slm_server.stores.rules import store_problems

    problems = store_problems(loaded, os.environ)
    for problem in problems:
        log.log(logging.ERROR if problem.severity == "error" else logging.WARNING, "%s", problem)
    usable = all(problem.severity != "error" for problem in problems)
    if not usable:
        log.error("%s: the Responses store cannot be used; nothing started", loaded.path)
    return usable


def _serve(args: argparse.Namespace) -> int:
    from slm_server.serving import run_serve

    loaded = _load_for_launch(args.config)
    if loaded is None or not _keys_usable(loaded):
        return 1
    return run_serve(
        loaded,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        watch_config=args.watch_config,
    )


def _backends(args: argparse.Namespace) -> int:
    from slm_server.serving import run_backends

    loaded = _load_for_launch(args.config)
    if loaded is None:
        return 1
    return run_backends(loaded)


def _start(args: argparse.Namespace) -> int:
    from slm_server.background import run_start

    loaded = _load_for_launch(args.config)
    if loaded is None or not _keys_usable(loaded):
        return 1
    serve_args = ["--log-level", args.log_level, "--log-format", args.log_format]
    if args.config is not None:
        serve_args += ["--config", str(Path(args.config).resolve())]
    if args.host is not None:
        serve_args += ["--host", args.host]
    if args.port is not None:
        serve_args += ["--port", str(args.port)]
    api_key = _api_key(args, loaded)
    return run_start(
        loaded, serve_args, host=args.host, port=args.port, wait_s=args.wait, api_key=api_key
    )


def _stop(args: argparse.Namespace) -> int:
    from slm_server.background import run_stop

    loaded = _load_or_report(args.config, allow_default=True)
    if loaded is None:
        return 1
    return run_stop(loaded)


def _instance(args: argparse.Namespace) -> tuple[str, str | None] | None:
    """The instance to ask (``--url``, else the one ``start`` recorded, else the configured
    port) and the API key to send it (see ``_api_key``); None if the config is unusable."""
    found = _instance_and_settings(args)
    return None if found is None else (found[0], found[1])


def _instance_and_settings(
    args: argparse.Namespace,
) -> tuple[str, str | None, RouterSettings | None] | None:
    """``_instance``, and the router settings of the config read for it (None with
    ``--url``: no config is read then)."""
    from slm_server.background import pid_file
    from slm_server.control import instance_url

    if args.url is not None:
        url = str(args.url)
        url = url if "://" in url else f"http://{url}"  # `localhost:8000` is meant as HTTP
        return url, _api_key(args, None), None
    path = resolve_config_path(args.config)
    if path == DEFAULT_CONFIG_PATH and not path.exists():
        # No config written: `start` served the built-in default from here, on the default port.
        settings = RouterSettings()
        return instance_url(pid_file(base_dir_for(path)), settings), _api_key(args, None), settings
    loaded = _load_or_report(args.config, consequence="no instance to ask (or give --url)")
    if loaded is None:
        return None
    settings = loaded.file.router
    return instance_url(pid_file(loaded.base_dir), settings), _api_key(args, loaded), settings


def _api_key(args: argparse.Namespace, loaded: LoadedConfig | None) -> str | None:
    """``--api-key-file``'s key, else ``$SLM_API_KEY``, else a key of ``loaded``'s held here."""
    from slm_server.auth.client import API_KEY_ENV, key_at_hand

    if args.api_key:
        return str(args.api_key)
    if os.environ.get(API_KEY_ENV):
        return os.environ[API_KEY_ENV]
    return None if loaded is None else key_at_hand(loaded.file.router.api_keys, os.environ)


def _ps(args: argparse.Namespace) -> int:
    from slm_server.control import run_ps

    found = _instance(args)
    return 1 if found is None else run_ps(*found)


def _load(args: argparse.Namespace) -> int:
    from slm_server.control import run_load

    found = _instance(args)
    return 1 if found is None else run_load(found[0], args.role, args.wait, found[1])


def _unload(args: argparse.Namespace) -> int:
    from slm_server.control import run_unload

    found = _instance(args)
    return 1 if found is None else run_unload(found[0], args.role, args.wait, found[1])


def _restart(args: argparse.Namespace) -> int:
    from slm_server.control import run_restart

    found = _instance(args)
    return 1 if found is None else run_restart(found[0], args.role, args.wait, found[1])


def _logs(args: argparse.Namespace) -> int:
    from slm_server.log_client import run_logs

    found = _instance(args)
    if found is None:
        return 1
    return run_logs(found[0], args.role, follow=args.follow, lines=args.lines, api_key=found[1])


def _reload(args: argparse.Namespace) -> int:
    from slm_server.control import RELOAD_TIMEOUT_S, reload_timeout_s, run_reload

    found = _instance_and_settings(args)
    if found is None:
        return 1
    url, api_key, settings = found
    timeout_s = RELOAD_TIMEOUT_S if settings is None else reload_timeout_s(settings)
    return run_reload(url, api_key, timeout_s)


def _hash_key(args: argparse.Namespace) -> int:
    from slm_server.auth.hash_key import run_hash_key

    return run_hash_key()


def _build_llama_server(args: argparse.Namespace) -> int:
    from slm_server.llama_server.command import run_build

    return run_build(rebuild=args.rebuild, jobs=args.jobs)


_COMMANDS = {
    "check-config": _check_config,
    "router": _router,
    "serve": _serve,
    "backends": _backends,
    "start": _start,
    "stop": _stop,
    "ps": _ps,
    "load": _load,
    "unload": _unload,
    "restart": _restart,
    "logs": _logs,
    "reload": _reload,
    "hash-key": _hash_key,
    "build-llama-server": _build_llama_server,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    configure_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    return _COMMANDS[args.command](args)
