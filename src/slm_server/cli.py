"""Command line: ``python -m slm_server <command>``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from slm_server.config import ConfigError, LoadedConfig, load_config, resolve_config_path

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

    router = commands.add_parser("router", help="serve the routing service (backends run already)")
    _add_config_flag(router)
    router.add_argument("--host", help="bind address (default: router.host, else 0.0.0.0)")
    router.add_argument("--port", type=int, help="port (default: router.port, else 8000)")
    router.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser


def _load_or_report(config_arg: str | None) -> LoadedConfig | None:
    path = resolve_config_path(config_arg)
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(exc.problems)} error(s); nothing started", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return 1
    for problem in loaded.problems:
        print(problem)
    errors = len(loaded.errors)
    warnings = len(loaded.problems) - errors
    enabled = sum(1 for entry in loaded.models.values() if entry.enabled)
    print(
        f"{loaded.path}: {len(loaded.models)} model(s), {enabled} enabled; "
        f"{errors} error(s), {warnings} warning(s)"
    )
    return 1 if errors else 0


def _router(args: argparse.Namespace) -> int:
    from slm_server.router.serve import run_router

    loaded = _load_or_report(args.config)
    if loaded is None:
        return 1
    for problem in loaded.problems:
        log.warning("%s", problem)
    return run_router(loaded, host=args.host, port=args.port, log_level=args.log_level)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "router":
        return _router(args)
    raise AssertionError(f"unhandled command {args.command}")
