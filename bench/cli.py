"""Command line of the benchmark: ``python -m bench [options]``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.procs import choose_cpus, require_tools
from bench.report import render
from bench.results import PARTS, Settings
from bench.suite import progress, run_suite

_QUICK_SOAK_REQUESTS = 5_000


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _gaps(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(","))


def _points(text: str) -> tuple[tuple[int, float], ...]:
    points = []
    for part in text.split(","):
        streams, _, gap = part.partition("@")
        if not gap:
            raise argparse.ArgumentTypeError(f"{part!r}: expected STREAMS@GAP_MS, as 256@20")
        points.append((int(streams), float(gap)))
    return tuple(points)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown part {', '.join(unknown)}; choose from {', '.join(PARTS)}"
        )
    return parts


def _parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="Load a fake backend directly, through nginx and through slm_server's "
        "router; print one table comparing them.",
    )
    parser.add_argument(
        "--repeats",
        "-r",
        type=int,
        default=defaults.repeats,
        help="runs per figure; the median is reported (default: %(default)s)",
    )
    parser.add_argument(
        "--duration",
        "-d",
        type=float,
        default=defaults.duration_s,
        help="seconds per wrk run (default: %(default)s)",
    )
    parser.add_argument(
        "--stream-duration",
        type=float,
        default=defaults.stream_duration_s,
        help="seconds per streaming run (default: %(default)s)",
    )
    parser.add_argument(
        "--connections",
        type=_numbers,
        default=defaults.connections,
        help="wrk connection counts (default: 1,16,64,256)",
    )
    parser.add_argument(
        "--streams",
        type=_numbers,
        default=defaults.stream_concurrency,
        help="concurrent stream counts (default: 1,16,64)",
    )
    parser.add_argument(
        "--gaps",
        type=_gaps,
        default=defaults.gaps_ms,
        help="gaps between stream chunks in ms (default: 0,5)",
    )
    parser.add_argument(
        "--paced",
        type=_points,
        default=defaults.paced_points,
        metavar="C@G[,C@G]",
        help="paced stream points, streams@gap_ms (default: 64@5,256@5,256@20,1024@100)",
    )
    parser.add_argument(
        "--paced-duration",
        type=float,
        default=defaults.paced_duration_s,
        metavar="S",
        help="seconds a paced point's clients keep starting streams, at least 1.5 "
        "streams' length (default: %(default)s; 2 with --quick)",
    )
    parser.add_argument(
        "--chunks",
        type=int,
        default=defaults.chunks,
        help="chunks per stream (default: %(default)s)",
    )
    parser.add_argument(
        "--startups", type=int, default=None, help="router start-ups timed (default: --repeats)"
    )
    parser.add_argument(
        "--proxy-cpu",
        type=int,
        default=None,
        help="CPU for nginx and the router (default: the first usable)",
    )
    parser.add_argument(
        "--load-cpu",
        type=int,
        default=None,
        help="CPU for backend and load generators (default: the next usable)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 run of 2 s each and a 5,000-request soak: a smoke test, not a measurement",
    )
    parser.add_argument(
        "--only",
        type=_parts,
        default=(),
        metavar="PART[,PART]",
        help="run only these parts: `soak` starts just the fake backend and the router; "
        "`cold-start` just serve with an on-demand fake llama-server; `replicas` and "
        "`replica-kill` just the fake replicas and their routers; `streams-paced` the "
        "paced stream points against direct, nginx and slm_server",
    )
    parser.add_argument(
        "--replicas",
        type=_at_least_one,
        default=defaults.replicas,
        help="fake backends behind the replicated entry; 1 gives it one base_url "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--replica-connections",
        type=int,
        default=defaults.replica_connections,
        help="wrk connections in the replicas runs (default: %(default)s)",
    )
    parser.add_argument(
        "--kill-connections",
        type=int,
        default=defaults.kill_connections,
        help="requests kept in flight in the replica-kill run (default: %(default)s)",
    )
    parser.add_argument(
        "--replica-cooldown",
        type=float,
        default=defaults.replica_cooldown_s,
        metavar="S",
        help="the router's cooldown_s in the replica-kill run (default: %(default)s)",
    )
    parser.add_argument(
        "--cold-starts",
        type=int,
        default=None,
        metavar="N",
        help=f"cold requests timed; 0 skips them (default: {defaults.cold_starts})",
    )
    parser.add_argument(
        "--soak-requests",
        type=int,
        default=None,
        metavar="N",
        help=f"requests in the soak run; 0 skips it (default: {defaults.soak_requests:,})",
    )
    parser.add_argument(
        "--soak-connections",
        type=int,
        default=defaults.soak_connections,
        help="concurrent connections in the soak run (default: %(default)s)",
    )
    parser.add_argument(
        "--soak-deadline",
        type=float,
        default=defaults.soak_deadline_s,
        metavar="S",
        help="the soak run stops after S seconds, finished or not (default: %(default)s)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write every raw figure to PATH"
    )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    repeats, duration, stream_duration = args.repeats, args.duration, args.stream_duration
    soak_requests = Settings().soak_requests
    paced_duration = args.paced_duration
    if args.quick:
        repeats, duration, stream_duration = 1, 2.0, 2.0
        soak_requests = _QUICK_SOAK_REQUESTS
        paced_duration = min(paced_duration, 2.0)
    if args.soak_requests is not None:
        soak_requests = args.soak_requests
    cold_starts = Settings().cold_starts if args.cold_starts is None else args.cold_starts
    proxy_cpu, load_cpu = choose_cpus(args.proxy_cpu, args.load_cpu)
    return Settings(
        repeats=repeats,
        duration_s=duration,
        stream_duration_s=stream_duration,
        connections=args.connections,
        stream_concurrency=args.streams,
        gaps_ms=args.gaps,
        chunks=args.chunks,
        paced_points=args.paced,
        paced_duration_s=paced_duration,
        startups=repeats if args.startups is None else args.startups,
        proxy_cpu=proxy_cpu,
        load_cpu=load_cpu,
        rss_connections=max(args.connections),
        soak_requests=soak_requests,
        soak_connections=args.soak_connections,
        soak_deadline_s=args.soak_deadline,
        cold_starts=cold_starts,
        only=args.only,
        replicas=args.replicas,
        replica_connections=args.replica_connections,
        kill_connections=args.kill_connections,
        replica_cooldown_s=args.replica_cooldown,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tools = ["taskset"]
    if not args.only or "replicas" in args.only:
        tools.append("wrk")
    if not args.only or "streams-paced" in args.only:
        tools.append("nginx")
    require_tools(*tools)
    settings = settings_from(args)
    if settings.proxy_cpu is None:
        progress("fewer than 2 usable CPUs: nothing pinned, figures are only comparative")
    results = run_suite(settings)
    print(render(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results.to_json(), indent=1))
        progress(f"raw figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
