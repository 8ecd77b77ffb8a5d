"""What the router counts per request, without sockets: histograms, usage, slots, records."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from slm_server.router.asgi import ENDED_IN_ERROR, Message
from slm_server.router.load_figures import LoadFigures
from slm_server.router.metrics import RouterMetrics
from slm_server.router.metrics.histogram import Histogram
from slm_server.router.metrics.tallies import CUT, RequestTallies
from slm_server.router.metrics.usage import (
    TAIL_BYTES,
    answer_tail,
    answer_usage,
    reported_usage,
    whole_answer_usage,
)
from slm_server.router.stopwatch import Stopwatch

CHAT = "/v1/chat/completions"


def test_histogram_counts_each_value_in_the_bucket_of_the_first_bound_not_below_it() -> None:
    histogram = Histogram((0.1, 1.0, 10.0))
    for value in (0.05, 0.1, 0.5, 1.0, 11.0):
        histogram.observe(value)
    # le is inclusive: 0.1 and 1.0 belong to their own bounds' buckets.
    assert histogram.buckets() == [("0.1", 2), ("1.0", 4), ("10.0", 4), ("+Inf", 5)]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(12.65)


def test_histogram_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Histogram((1.0, 0.5))


def chat_answer(**fields: Any) -> bytes:
    """A chat completion as llama-server writes it: usage last, token details nested."""
    answer = {
        "choices": [{"message": {"role": "assistant", "content": 'He said "usage": no'}}],
        "object": "chat.completion",
        "timings": {"prompt_n": 9, "predicted_n": 3},
        **fields,
    }
    return json.dumps(answer).encode()


def test_usage_of_a_json_answer_with_nested_token_details() -> None:
    usage = {
        "completion_tokens": 3,
        "prompt_tokens": 9,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert reported_usage(chat_answer(usage=usage)) == (9, 3)


def test_usage_in_input_and_output_tokens_as_responses_and_messages_spell_it() -> None:
    answer = json.dumps({"type": "message", "usage": {"input_tokens": 7, "output_tokens": 2}})
    assert reported_usage(answer.encode()) == (7, 2)


def test_a_messages_prompt_counts_its_cached_tokens_too() -> None:
    # Anthropic's input_tokens leave out the cached part that Chat's prompt_tokens include.
    usage = {"input_tokens": 3, "cache_read_input_tokens": 8, "cache_creation_input_tokens": 1}
    answer = json.dumps({"type": "message", "usage": {**usage, "output_tokens": 2}})
    assert reported_usage(answer.encode()) == (12, 2)


def test_an_embeddings_usage_has_prompt_tokens_only() -> None:
    answer = json.dumps({"data": [], "usage": {"prompt_tokens": 5, "total_tokens": 5}})
    assert reported_usage(answer.encode()) == (5, 0)


@pytest.mark.parametrize(
    "answer",
    [
        chat_answer(),  # no usage; the quoted "usage" in the content is escaped, not a key
        chat_answer(usage=None),
        chat_answer(usage={"prompt_tokens": "nine", "completion_tokens": 3}),
        b"not json at all",
    ],
)
def test_no_usage_is_none(answer: bytes) -> None:
    assert reported_usage(answer) is None


@pytest.mark.parametrize(
    ("answer", "tokens"),
    [
        (chat_answer(usage={"prompt_tokens": 9, "completion_tokens": 3}), (9, 3)),
        # Its own usage, not one quoted in the content nor nested deeper.
        (chat_answer(usage={"prompt_tokens": 1, "x": {"usage": 0}}), (1, 0)),
        (json.dumps({"type": "message", "usage": {"input_tokens": 7}}).encode(), (7, 0)),
        (chat_answer(), None),
        (chat_answer(usage=None), None),
        (chat_answer(usage={"prompt_tokens": "nine", "completion_tokens": 3}), None),
        (b"not json at all", None),
        (b'[{"usage": {"prompt_tokens": 1}}]', (1, 0)),  # not an object: searched, as before
        # Too large to decode whole: its end is searched, as a stream's is.
        (chat_answer(pad="x" * TAIL_BYTES, usage={"prompt_tokens": 4}), (4, 0)),
    ],
)
def test_a_whole_answer_gives_the_usage_a_search_of_its_end_gives(
    answer: bytes, tokens: tuple[int, int] | None
) -> None:
    assert whole_answer_usage(answer) == tokens


def test_a_stream_usage_split_over_its_last_two_pieces() -> None:
    event = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}}
    stream_end = b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n"
    previous, latest = stream_end[:30], stream_end[30:]  # the usage key in one, counts in other
    assert reported_usage(answer_tail([previous], latest)) == (4, 6)


def test_a_stream_usage_spread_over_many_small_pieces() -> None:
    event = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}}
    stream_end = b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n"
    pieces = [stream_end[at : at + 5] for at in range(0, len(stream_end), 5)]
    assert reported_usage(answer_tail(pieces[:-1], pieces[-1])) == (4, 6)


def test_a_messages_stream_counts_input_from_its_start_and_output_from_its_end() -> None:
    start = b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
    start += b'{"input_tokens":12,"output_tokens":1}}}\n\n'
    delta = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":7}}'
    end = b'\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    assert answer_usage(start, answer_tail([start, b"x" * 100, delta], end)) == (12, 7)


def test_only_the_end_of_a_large_answer_is_searched() -> None:
    usage = b'{"usage": {"prompt_tokens": 1, "completion_tokens": 1}, "data": "'
    large = usage + b"x" * TAIL_BYTES + b'"}'
    assert len(answer_tail([], large)) == TAIL_BYTES
    assert reported_usage(answer_tail([], large)) is None
    assert reported_usage(answer_tail([large[:-1]], b"}")) is None  # nor with two pieces


def test_tallies_count_by_status_class_and_key_and_refusals_by_reason() -> None:
    tallies = RequestTallies(["m-chat", "m-chat"])  # an id served twice (disabled): one slot
    slot = tallies.slot("m-chat", CHAT)
    for status_class in (2, 2, 4, 4, 5, 0, CUT):
        slot.count("-", status_class)
    slot.count("alice", 2)
    assert slot.by_key == {"-": [1, 0, 2, 0, 2, 1, 1], "alice": [0, 0, 1, 0, 0, 0, 0]}
    assert tallies.slot("unknown", CHAT) is tallies.unrouted[CHAT]
    tallies.reject("m-chat", "queue_full")
    tallies.reject("m-chat", "queue_full")
    tallies.reject("-", "invalid_api_key")
    tallies.reject("m-chat", "backend_timeout")
    tallies.reject("m-chat", "insufficient_memory")
    tallies.reject("m-chat", "router_busy")  # the router's body allowance, not backend memory
    tallies.reject("m-chat", "invalid_request")  # a bad request is an answer, not a refusal
    tallies.reject("m-chat", None)
    assert tallies.rejected == {
        ("m-chat", "queue_full"): 2,
        ("-", "auth"): 1,
        ("m-chat", "timeout"): 1,
        ("m-chat", "memory"): 1,
        ("m-chat", "router_busy"): 1,
    }


class Client:
    """Where a record's messages go: kept, as a server would send them."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def send(self, message: Message) -> None:
        self.messages.append(message)


def samples(metrics: RouterMetrics) -> dict[str, list[Sample]]:
    text = metrics.exposition().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(found: list[Sample], name: str, **labels: str) -> float:
    matching = [s.value for s in found if s.name == name and s.labels == labels]
    assert len(matching) == 1, (name, labels, found)
    return matching[0]


def new_metrics() -> RouterMetrics:
    return RouterMetrics(["m-chat"], {}, {}, LoadFigures(Path(".")))


async def answer(metrics: RouterMetrics, *messages: Message, routed: bool = True) -> None:
    client = Client()
    record = metrics.record(client.send, CHAT)
    if routed:
        stopwatch = Stopwatch()
        record.routed(metrics.slot("m-chat", CHAT), stopwatch)
        stopwatch.headers()
    for message in messages:
        await record.send(message)
    record.finish()
    assert client.messages == list(messages)  # passed on as they were


def start(status: int, content_type: bytes = b"application/json") -> Message:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type)],
    }


def test_a_json_answer_counts_its_status_duration_overhead_and_tokens() -> None:
    metrics = new_metrics()
    body = {
        "type": "http.response.body",
        "body": chat_answer(usage={"prompt_tokens": 2, "completion_tokens": 5}),
    }
    asyncio.run(answer(metrics, start(200), body))
    found = samples(metrics)
    labels = {"model": "m-chat", "endpoint": CHAT}
    assert (
        value(found["slm_requests"], "slm_requests_total", **labels, status_class="2xx", key="-")
        == 1
    )
    assert (
        value(found["slm_request_duration_seconds"], "slm_request_duration_seconds_count", **labels)
        == 1
    )
    assert value(found["slm_router_overhead_seconds"], "slm_router_overhead_seconds_count") == 1
    assert found["slm_time_to_first_byte_seconds"] == []  # not a stream
    tokens = found["slm_tokens"]
    assert value(tokens, "slm_tokens_total", model="m-chat", kind="prompt") == 2
    assert value(tokens, "slm_tokens_total", model="m-chat", kind="completion") == 5


def test_a_stream_counts_its_first_byte_and_the_usage_of_its_last_event() -> None:
    metrics = new_metrics()
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    pieces = [b'data: {"choices": []}\n\n', f"data: {usage}\n\n".encode(), b"data: [DONE]\n\n", b""]
    bodies = [{"type": "http.response.body", "body": p, "more_body": bool(p)} for p in pieces]
    asyncio.run(answer(metrics, start(200, b"text/event-stream"), *bodies))
    found = samples(metrics)
    labels = {"model": "m-chat", "endpoint": CHAT}
    assert (
        value(
            found["slm_time_to_first_byte_seconds"],
            "slm_time_to_first_byte_seconds_count",
            **labels,
        )
        == 1
    )
    assert value(found["slm_tokens"], "slm_tokens_total", model="m-chat", kind="completion") == 4


def test_an_error_answer_counts_no_tokens_and_a_client_that_left_counts_as_closed() -> None:
    metrics = new_metrics()
    error = {"type": "http.response.body", "body": b'{"error": {}, "usage": {"prompt_tokens": 9}}'}
    asyncio.run(answer(metrics, start(500), error))
    asyncio.run(answer(metrics))  # nothing was sent: the client hung up while it waited
    found = samples(metrics)
    requests = found["slm_requests"]
    labels = {"model": "m-chat", "endpoint": CHAT, "key": "-"}
    assert value(requests, "slm_requests_total", **labels, status_class="5xx") == 1
    assert value(requests, "slm_requests_total", **labels, status_class="closed") == 1
    assert value(found["slm_tokens"], "slm_tokens_total", model="m-chat", kind="prompt") == 0


def stream_pieces(*pieces: bytes, last: bool = True) -> list[Message]:
    """Body messages of a stream; ``last``: its final (empty) message was sent."""
    bodies: list[Message] = [
        {"type": "http.response.body", "body": p, "more_body": True} for p in pieces
    ]
    if last:
        bodies.append({"type": "http.response.body", "body": b"", "more_body": False})
    return bodies


def test_a_stream_that_never_ended_counts_as_cut_not_2xx() -> None:
    metrics = new_metrics()
    sse = start(200, b"text/event-stream")
    asyncio.run(answer(metrics, sse, *stream_pieces(b"data: {}\n\n", last=False)))
    asyncio.run(answer(metrics, sse, *stream_pieces(b"data: {}\n\n")))
    requests = samples(metrics)["slm_requests"]
    labels = {"model": "m-chat", "endpoint": CHAT, "key": "-"}
    assert value(requests, "slm_requests_total", **labels, status_class="cut") == 1
    assert value(requests, "slm_requests_total", **labels, status_class="2xx") == 1


def test_a_stream_ended_with_an_error_after_its_start_counts_as_5xx() -> None:
    metrics = new_metrics()
    sse = start(200, b"text/event-stream")
    pieces = stream_pieces(b"data: {}\n\n", last=False)
    error = b'data: {"error": {}}\n\n'
    end = {"type": "http.response.body", "body": error, ENDED_IN_ERROR: True}
    asyncio.run(answer(metrics, sse, *pieces, end))
    requests = samples(metrics)["slm_requests"]
    labels = {"model": "m-chat", "endpoint": CHAT, "key": "-"}
    assert value(requests, "slm_requests_total", **labels, status_class="5xx") == 1
    assert value(requests, "slm_requests_total", **labels, status_class="2xx") == 0


@pytest.mark.parametrize("padding", range(0, 4000, 150))
def test_a_stream_in_small_pieces_keeps_the_usage_several_pieces_back(padding: int) -> None:
    metrics = new_metrics()
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    end = f"data: {usage}\n\ndata: [DONE]\n\n".encode()
    small = [end[at : at + 8] for at in range(0, len(end), 8)]  # the usage over many pieces
    # Long events first: more than the record keeps, so its earlier pieces are trimmed,
    # at a point that moves with ``padding``; after the usage, SSE comments that keep it
    # within the last 4 KiB.
    long_start = [b"data: " + b"x" * (1000 + padding) + b"\n\n"] * 20
    comments = [b":" + b" " * 97 + b"\n\n"] * 35
    sse = start(200, b"text/event-stream")
    asyncio.run(answer(metrics, sse, *stream_pieces(*long_start, *small, *comments)))
    tokens = samples(metrics)["slm_tokens"]
    assert value(tokens, "slm_tokens_total", model="m-chat", kind="prompt") == 3
    assert value(tokens, "slm_tokens_total", model="m-chat", kind="completion") == 4


def test_a_request_never_routed_counts_under_model_dash_without_overhead() -> None:
    metrics = new_metrics()
    body = {"type": "http.response.body", "body": b'{"error": {}}'}
    asyncio.run(answer(metrics, start(404), body, routed=False))
    found = samples(metrics)
    labels = {"model": "-", "endpoint": CHAT, "key": "-", "status_class": "4xx"}
    assert value(found["slm_requests"], "slm_requests_total", **labels) == 1
    assert value(found["slm_router_overhead_seconds"], "slm_router_overhead_seconds_count") == 0
    assert {s.labels["model"] for s in found["slm_tokens"]} == set()  # no backend, no usage


def test_a_refusal_on_a_path_that_is_not_a_model_endpoint_counts_only_as_refused() -> None:
    metrics = new_metrics()
    record = metrics.record(Client().send, "/v1/models")
    record.finish("invalid_api_key")
    found = samples(metrics)
    assert (
        value(
            found["slm_rejected_requests"], "slm_rejected_requests_total", model="-", reason="auth"
        )
        == 1
    )
    assert found["slm_requests"] == []


def test_the_answer_headers_go_on_the_status_line_without_changing_the_senders_own() -> None:
    metrics, client = new_metrics(), Client()
    constant = [(b"content-type", b"text/event-stream")]  # as a log stream sends its own
    for request_id in (b"id-1", b"id-2"):
        record = metrics.record(client.send, CHAT, request_id, [(b"x-request-id", request_id)])
        start = {"type": "http.response.start", "status": 200, "headers": constant}
        asyncio.run(record.send(start))  # type: ignore[arg-type]
    assert constant == [(b"content-type", b"text/event-stream")]
    assert [message["headers"] for message in client.messages] == [
        [*constant, (b"x-request-id", b"id-1")],
        [*constant, (b"x-request-id", b"id-2")],
    ]
