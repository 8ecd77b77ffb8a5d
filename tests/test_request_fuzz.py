"""Generated request bodies against every model endpoint: the router never fails by itself.

Valid requests are bent (a field of the wrong type, a field missing, deep
nesting, huge strings, odd unicode), or their bytes broken (invalid UTF-8,
truncated JSON, not an object), and posted to the real app (in process, over
the ASGI transport) in front of two fake backends: one that has every bridged
endpoint natively, one that lacks them all (so requests are converted). For
every answer:

- no 5xx of the router's own making: a 5xx is allowed only when relayed from the
  backend (it then carries the backend's ``Server`` header);
- an error is JSON, and when the router made it, in the path's envelope
  (Anthropic's on /v1/messages*, OpenAI's elsewhere);
- a stream ends the way its protocol ends (``[DONE]``, a final response event,
  ``message_stop`` or an error event); an exception in the app fails the example.

After each run the router still answers /health and a plain chat request.
Derandomized with a fixed number of examples, so CI runs the same bodies each time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config_builder import entry, make_config
from fake_backend_proc import FakeBackend
from form_bodies import FORMS, form_requests
from slm_server.config import LoadedConfig
from slm_server.router.app import RouterApp
from slm_server.router.forms import FORM_PATHS
from slm_server.router.routing import ENDPOINT_MODEL_TYPES
from slm_server.translate.sse import SseParser

ANTHROPIC_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
FUZZ = settings(
    max_examples=150,
    deadline=5000,  # ms per example: a request to a local fake takes a few
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Model ids: "-full" entries sit on the backend with every bridged endpoint, "-bare" on the one
# without; the other model types need only one backend.
CHAT_MODELS = ("chat-full", "chat-bare")

RESPONSES_BODY: dict[str, Any] = {
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
    ],
    "instructions": "be brief",
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    "tool_choice": "auto",
    "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}},
    "include": [],
    "reasoning": {"effort": "low"},
    "metadata": {"k": "v"},
    "temperature": 0.5,
    "max_output_tokens": 16,
    "stream": False,
}
TEXT_BLOCK = {"type": "text", "text": "r"}
MESSAGES_BODY: dict[str, Any] = {
    "max_tokens": 16,
    "system": [{"type": "text", "text": "be brief"}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": "r"}],
                }
            ],
        },
    ],
    "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "auto"},
    "metadata": {"user_id": "u"},
    "stop_sequences": ["STOP"],
    "temperature": 0.5,
    "stream": False,
}
COUNT_BODY = {k: v for k, v in MESSAGES_BODY.items() if k not in ("max_tokens", "stream")}
RERANK_BODY = {"model": "rank", "query": "q", "documents": ["a b", "q"], "top_n": 1}

# path -> the valid requests to start from (a list: the bridged ones once per chat backend)
BASES: dict[str, list[dict[str, Any]]] = {
    "/v1/chat/completions": [
        {"model": m, "messages": [{"role": "user", "content": "hi"}], "stream": False}
        for m in CHAT_MODELS
    ],
    "/v1/completions": [{"model": "chat-full", "prompt": "hi", "stream": False}],
    "/v1/responses": [{"model": m, **RESPONSES_BODY} for m in CHAT_MODELS],
    "/v1/messages": [{"model": m, **MESSAGES_BODY} for m in CHAT_MODELS],
    "/v1/messages/count_tokens": [{"model": m, **COUNT_BODY} for m in CHAT_MODELS],
    "/v1/embeddings": [{"model": "embed", "input": ["a", "b"]}],
    "/v1/rerank": [RERANK_BODY],
    "/v1/reranking": [RERANK_BODY],
    "/rerank": [RERANK_BODY],
    "/v1/images/generations": [{"model": "draw", "prompt": "a cat", "n": 1}],
    "/v1/images/edits": [{"model": "edit", "prompt": "a hat"}],  # JSON to a form endpoint
    "/v1/audio/transcriptions": [{"model": "listen", "language": "en"}],
}


def test_every_model_endpoint_is_covered() -> None:
    assert set(BASES) == set(ENDPOINT_MODEL_TYPES)


def test_a_body_nested_too_deeply_to_parse_is_a_400(router: Router) -> None:
    body = b'{"model": "chat-bare", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = router.post("/v1/chat/completions", body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "request body is nested too deeply"


# ------------------------------------------------------------------ strategies

ODD_TEXT = st.sampled_from(
    ["", "\x00", "\ud800", "\U0001f600" * 50, "e\u0301", "\u202e", "\ufeff", "'\"\\{}[]"]
)
HUGE_TEXT = st.builds(
    lambda n, c: c * n,
    st.sampled_from([10_000, 300_000]),
    st.sampled_from(["x", "é", "\U0001f600"]),
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | ODD_TEXT
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
DEEP = st.builds(
    lambda depth, as_list: _nest(depth, as_list),
    st.sampled_from([50, 500, 900, 5000]),
    st.booleans(),
)
VALUES = JSON_VALUES | HUGE_TEXT | DEEP


def _nest(depth: int, as_list: bool) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The places inside ``value`` (a key of an object, an index of a list), 8 levels down."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, inner in items:
        yield (*prefix, key)
        if isinstance(inner, dict | list) and len(prefix) < 8:
            yield from _paths(inner, (*prefix, key))


def _parent(body: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        body = body[key]
    return body


@st.composite
def bodies(draw: st.DrawFn, path: str, model: str | None = None) -> bytes:
    """One request body for ``path``: a valid one bent in a few places, then maybe broken.

    ``model``: start from the base request for that model (else any base of the path).
    The model itself is bent rarely: a request for no model ends before the interesting part.
    """
    bases = [b for b in BASES[path] if model is None or b["model"] == model]
    body = json.loads(json.dumps(draw(st.sampled_from(bases))))  # a deep copy
    if "stream" in body:
        body["stream"] = draw(st.booleans())
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        places = [p for p in _paths(body) if p != ("model",) or draw(st.integers(0, 9)) == 0]
        if not places:
            break
        place = draw(st.sampled_from(places))
        parent = _parent(body, place)
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete":
            del parent[place[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(VALUES)
        else:
            parent[place[-1]] = draw(VALUES)
    raw = _encode(body, ascii=draw(st.booleans()))
    damage = draw(
        st.sampled_from(["none", "none", "none", "truncate", "bad utf-8", "not an object"])
    )
    if damage == "truncate":
        return raw[: draw(st.integers(min_value=0, max_value=max(len(raw) - 1, 0)))]
    if damage == "bad utf-8":
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]))
        return raw[:at] + junk + raw[at:]
    if damage == "not an object":
        return draw(st.sampled_from([b"[]", b"3", b'"model"', b"null", b"", b"[" * 10_000]))
    return raw


def _encode(body: Any, *, ascii: bool) -> bytes:
    """``body`` as JSON; a lone surrogate is a valid ``\\ud800`` escape only with ``ascii``."""
    try:
        return json.dumps(body, ensure_ascii=ascii).encode("utf-8", "surrogatepass")
    except RecursionError:  # nested deeper than json.dumps goes: send it anyway, by hand
        return b'{"model": "chat-full", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"


# ------------------------------------------------------------------ the router under test


def fuzz_config(full: FakeBackend, bare: FakeBackend) -> LoadedConfig:
    """A model of each type: "-full" entries on ``full`` (every bridged endpoint), "-bare"
    on ``bare`` (none), the others on ``full``."""
    models = {
        "chat-full": entry("chat-full", full.port, default_timeout=10),
        "chat-bare": entry("chat-bare", bare.port, default_timeout=10),
        "embed": entry("embed", full.port, model_type="embeddings"),
        "rank": entry("rank", full.port, model_type="rerank"),
    }
    for name, kind in (
        ("draw", "image-generation"),
        ("edit", "image-edit"),
        ("listen", "whisper"),
    ):
        models[name] = entry(
            name, full.port, backend="mlx", model_type=kind, model_path=f"hub/{name}"
        )
    return make_config(models)


class Router:
    """The app and a client for it on one event loop, usable from synchronous tests."""

    def __init__(self, full: FakeBackend, bare: FakeBackend) -> None:
        self.runner = asyncio.Runner()
        self.app = RouterApp(fuzz_config(full, bare))
        transport = httpx.ASGITransport(app=self.app)  # an exception in the app fails the test
        self.client = httpx.AsyncClient(transport=transport, base_url="http://router", timeout=30)

    def post(
        self, path: str, body: bytes, content_type: bytes = b"application/json"
    ) -> httpx.Response:
        headers = {b"content-type": content_type}
        return self.runner.run(self.client.post(path, content=body, headers=headers))

    def get(self, path: str) -> httpx.Response:
        return self.runner.run(self.client.get(path))

    def close(self) -> None:
        self.runner.run(self.client.aclose())
        self.runner.run(self.app.aclose())
        self.runner.close()


@pytest.fixture(scope="module")
def full() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        backend.control(messages=True)  # /v1/responses, /v1/messages and count_tokens, native
        yield backend


@pytest.fixture(scope="module")
def bare() -> Iterator[FakeBackend]:
    with FakeBackend().start(["--no-responses"]) as backend:  # no /v1/messages either
        yield backend


@pytest.fixture(scope="module")
def router(full: FakeBackend, bare: FakeBackend) -> Iterator[Router]:
    served = Router(full, bare)
    try:
        yield served
    finally:
        served.close()


@pytest.fixture(autouse=True)
def _still_healthy(router: Router) -> Iterator[None]:
    yield
    assert router.get("/health").status_code == 200
    chat = {"model": "chat-bare", "messages": [{"role": "user", "content": "still there?"}]}
    answer = router.post("/v1/chat/completions", json.dumps(chat).encode())
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "echo: still there?"


# ------------------------------------------------------------------ the properties


def check(path: str, response: httpx.Response) -> None:
    relayed = "aiohttp" in response.headers.get("server", "")
    status = response.status_code
    assert status < 500 or relayed, f"{status} from the router itself: {response.text[:500]}"
    content_type = response.headers.get("content-type", "")
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, response.text)
        payload = response.json()
        if relayed:
            return
        if path in ANTHROPIC_PATHS:
            assert payload["type"] == "error", payload
            assert set(payload["error"]) == {"type", "message"}, payload
        else:
            assert set(payload["error"]) == {"message", "type", "param", "code"}, payload
        return
    if content_type.startswith("text/event-stream"):
        _check_stream_end(path, response.content)
    else:
        response.json()  # a whole answer is JSON


def _check_stream_end(path: str, body: bytes) -> None:
    events = SseParser().feed(body)
    assert events, body[:500]
    last = events[-1]
    if path in ANTHROPIC_PATHS:
        assert last.event in ("message_stop", "error"), body[-500:]
    elif path == "/v1/responses" and last.event is not None:
        final = ("response.completed", "response.incomplete", "response.failed", "error")
        assert last.event in final, body[-500:]
    else:  # chat style, or the router's own last word: data: {"error": {...}}
        assert last.data == "[DONE]" or "error" in json.loads(last.data), body[-500:]


@settings(FUZZ, max_examples=600)  # the router's own conversions: most of its parsing
@given(st.data())
def test_converted_endpoints(router: Router, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(["/v1/responses", *ANTHROPIC_PATHS]))
    check(path, router.post(path, data.draw(bodies(path, "chat-bare"))))


@FUZZ
@given(st.data())
def test_native_bridged_endpoints(router: Router, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(["/v1/responses", *ANTHROPIC_PATHS]))
    check(path, router.post(path, data.draw(bodies(path, "chat-full"))))


@FUZZ
@given(st.data())
def test_chat_and_completions(router: Router, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
    check(path, router.post(path, data.draw(bodies(path))))


@FUZZ
@given(st.data())
def test_other_model_endpoints(router: Router, data: st.DataObject) -> None:
    others = sorted(set(BASES) - set(ANTHROPIC_PATHS) - {"/v1/responses", "/v1/chat/completions"})
    path = data.draw(st.sampled_from(others))
    check(path, router.post(path, data.draw(bodies(path))))


def test_every_form_endpoint_is_covered() -> None:
    assert set(FORMS) == set(FORM_PATHS)


@settings(FUZZ, max_examples=400)  # router/forms.py parses these bytes by hand
@given(st.data())
def test_form_endpoints(router: Router, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(sorted(FORMS)))
    request = data.draw(form_requests(path))
    check(path, router.post(path, request.body, request.content_type))
