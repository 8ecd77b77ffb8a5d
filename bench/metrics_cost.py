"""What the metrics add to one request, in microseconds: ``python -m bench.metrics_cost``.

The router's per-request metrics work, run without sockets: the record an answer goes out
through, its two messages (status line, body), its routing to a slot and its count once
done, against the plain SentMessages it replaces. For scale, the same counts kept with
prometheus_client's own labelled Counter and Histograms are timed too. Each figure is the
best of several rounds (the least disturbed by other work on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram

from slm_server.router.asgi import Message
from slm_server.router.load_figures import LoadFigures
from slm_server.router.metrics import RouterMetrics
from slm_server.router.metrics.histogram import LATENCY_BUCKETS_S, OVERHEAD_BUCKETS_S
from slm_server.router.sent import SentMessages
from slm_server.router.stopwatch import Stopwatch

PATH = "/v1/chat/completions"
# A chat completion as llama-server writes it: keys in order, usage last.
ANSWER = json.dumps(
    {
        "choices": [{"finish_reason": "stop", "index": 0, "message": {"content": "Hi " * 40}}],
        "created": 1,
        "id": "chatcmpl-1",
        "model": "bench",
        "object": "chat.completion",
        "timings": {"prompt_n": 9, "prompt_ms": 1.5, "predicted_n": 40, "predicted_ms": 80.0},
        "usage": {"completion_tokens": 40, "prompt_tokens": 9, "total_tokens": 49},
    },
    separators=(",", ":"),
).encode()
START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json")],
}
BODY: Message = {"type": "http.response.body", "body": ANSWER}
BODY_WITHOUT_USAGE: Message = {
    "type": "http.response.body",
    "body": ANSWER[: ANSWER.rfind(b',"usage"')] + b"}",
}


Send = Callable[[Message], Awaitable[None]]


def instant_send(loop: asyncio.AbstractEventLoop) -> Send:
    """A send that is done at once, as uvicorn's is when the socket takes the bytes."""
    done = loop.create_future()
    done.set_result(None)

    def send(message: Message) -> asyncio.Future[None]:
        return done

    return send


def plain(send: Send) -> Callable[[], None]:
    """Before: what the request path did without metrics (the stopwatch was there already)."""

    def request() -> None:
        sent = SentMessages(send)
        Stopwatch().headers()
        sent.send(START)
        sent.send(BODY)

    return request


def with_metrics(metrics: RouterMetrics, body: Message, send: Send) -> Callable[[], None]:
    def request() -> None:
        sent = metrics.record(send, PATH)
        stopwatch = Stopwatch()
        sent.routed(metrics.slot("bench", PATH), stopwatch)
        stopwatch.headers()
        sent.send(START)
        sent.send(body)
        sent.finish()

    return request


def with_library(send: Send) -> Callable[[], None]:
    """The same counts with prometheus_client's labelled metrics (no usage parsing)."""
    registry = CollectorRegistry()
    requests = Counter("r", "", ["model", "endpoint", "status_class", "key"], registry=registry)
    duration = Histogram("d", "", ["model", "endpoint"], buckets=LATENCY_BUCKETS_S)
    overhead = Histogram("o", "", buckets=OVERHEAD_BUCKETS_S, registry=registry)

    def request() -> None:
        sent = SentMessages(send)
        Stopwatch().headers()
        sent.send(START)
        sent.send(BODY)
        requests.labels("bench", PATH, "2xx", "-").inc()
        duration.labels("bench", PATH).observe(0.01)
        overhead.observe(0.00005)

    return request


def best_us(run: Callable[[], None], number: int, rounds: int) -> float:
    return min(timeit.repeat(run, number=number, repeat=rounds)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=50_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    send = instant_send(loop)
    metrics = RouterMetrics(["bench"], {}, {}, LoadFigures(Path(".")))
    before = best_us(plain(send), args.number, args.rounds)
    after = best_us(with_metrics(metrics, BODY, send), args.number, args.rounds)
    no_usage = best_us(with_metrics(metrics, BODY_WITHOUT_USAGE, send), args.number, args.rounds)
    library = best_us(with_library(send), args.number, args.rounds)
    print(f"without metrics:                    {before:6.2f} us/request")
    print(f"with metrics:                       {after:6.2f} us/request (+{after - before:.2f})")
    print(
        f"with metrics, answer without usage: {no_usage:6.2f} us/request (+{no_usage - before:.2f})"
    )
    print(
        f"prometheus_client's own metrics:    {library:6.2f} us/request "
        f"(+{library - before:.2f}, without tokens)"
    )
    loop.close()


if __name__ == "__main__":
    main()
