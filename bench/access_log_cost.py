"""What the access log adds to one request, in microseconds: ``python -m bench.access_log_cost``.

Run without sockets, as bench.metrics_cost does: a request's record, its two messages and
its count once done, then with its request id and access line added. The line goes
through the logging module to a handler writing to /dev/null (a write per line, as to a
terminal or a file), in the text format and in JSON; and with the access log turned off
(``router.access_log: false``). Each figure is the best of several rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from bench.metrics_cost import BODY, PATH, START, Send, best_us, instant_send, with_metrics
from slm_server.log_format import JsonFormatter, TextFormatter
from slm_server.router.access_log import ACCESS_LOGGER, AccessLog
from slm_server.router.load_figures import LoadFigures
from slm_server.router.metrics import RouterMetrics
from slm_server.router.request_head import read_head
from slm_server.router.request_id import REQUEST_ID_HEADER, RequestIds
from slm_server.router.stopwatch import Stopwatch

HEADERS = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]


def with_access_log(metrics: RouterMetrics, access: AccessLog, send: Send) -> Callable[[], None]:
    """The metrics' request (bench.metrics_cost.with_metrics) with its id and access line."""
    ids = RequestIds()

    def request() -> None:
        request_id = ids.given(read_head(HEADERS)[0])  # as the router reads it
        sent = metrics.record(send, PATH, request_id, [(REQUEST_ID_HEADER, request_id)])
        stopwatch = Stopwatch()
        sent.routed(metrics.slot("bench", PATH), stopwatch)
        stopwatch.headers()
        # Its own status line, as every sender makes one: the id is added to its headers.
        sent.send({**START, "headers": [*START["headers"]]})
        sent.send(BODY)
        sent.finish()
        access.write("POST", PATH, sent)

    return request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--log-to", default=os.devnull, help="where the lines go (default: /dev/null)"
    )
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    send = instant_send(loop)
    metrics = RouterMetrics(["bench"], {}, {}, LoadFigures(Path(".")))
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.StreamHandler(open(args.log_to, "w"))  # noqa: SIM115
    logger.addHandler(handler)

    def best(run: Callable[[], None]) -> float:
        return best_us(run, args.number, args.rounds)

    before = best(with_metrics(metrics, BODY, send))
    off = best(with_access_log(metrics, AccessLog(enabled=False), send))
    handler.setFormatter(TextFormatter())
    text = best(with_access_log(metrics, AccessLog(), send))
    handler.setFormatter(JsonFormatter())
    as_json = best(with_access_log(metrics, AccessLog(), send))
    print(f"metrics only:                 {before:6.2f} us/request")
    print(f"request id, access log off:   {off:6.2f} us/request (+{off - before:.2f})")
    print(f"access log, text:             {text:6.2f} us/request (+{text - before:.2f})")
    print(f"access log, JSON:             {as_json:6.2f} us/request (+{as_json - before:.2f})")
    loop.close()


if __name__ == "__main__":
    main()
