"""CORS for browser clients (router.cors_origins): preflights answered for the listed
origins, their answers readable; other origins, and a router without the setting, get
nothing a browser would let through. Real preflight requests over a socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from config_builder import entry, make_config
from fake_backend_proc import FakeBackend
from router_served import router_for

PAGE = "http://localhost:3000"
CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


def preflight_headers(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": method,
        "access-control-request-headers": "authorization, content-type, x-stainless-os",
    }


async def test_a_listed_origins_preflight_is_allowed(fake: FakeBackend) -> None:
    async with router_for(fake.port, cors_origins=[PAGE]) as client:
        response = await client.options("/v1/chat/completions", headers=preflight_headers(PAGE))
    assert response.status_code == 204
    headers = response.headers
    assert headers["access-control-allow-origin"] == PAGE
    assert headers["access-control-allow-methods"] == "POST"
    allowed = {h.strip() for h in headers["access-control-allow-headers"].split(",")}
    expected = {"authorization", "x-api-key", "content-type", "anthropic-version", "x-request-id"}
    assert expected <= allowed
    assert int(headers["access-control-max-age"]) > 0
    assert headers["vary"] == "origin"


async def test_a_get_endpoints_preflight_names_its_methods(fake: FakeBackend) -> None:
    async with router_for(fake.port, cors_origins=[PAGE]) as client:
        response = await client.options("/v1/models", headers=preflight_headers(PAGE, "GET"))
    assert response.status_code == 204
    assert response.headers["access-control-allow-methods"] == "GET, HEAD"


async def test_an_unknown_paths_preflight_is_a_404_the_page_can_read(fake: FakeBackend) -> None:
    async with router_for(fake.port, cors_origins=[PAGE]) as client:
        response = await client.options("/v1/nothing", headers=preflight_headers(PAGE))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_endpoint"
    assert response.headers["access-control-allow-origin"] == PAGE


async def test_an_allowed_origins_answers_are_readable_errors_too(fake: FakeBackend) -> None:
    async with router_for(fake.port, cors_origins=[PAGE]) as client:
        ok = await client.post("/v1/chat/completions", json=CHAT, headers={"origin": PAGE})
        missing = await client.post(
            "/v1/chat/completions", json={**CHAT, "model": "nope"}, headers={"origin": PAGE}
        )
    assert (ok.status_code, missing.status_code) == (200, 404)
    for response in (ok, missing):
        assert response.headers["access-control-allow-origin"] == PAGE
        assert response.headers["vary"] == "origin"
        exposed = response.headers["access-control-expose-headers"]
        assert "x-request-id" in exposed
        assert "x-slm-overhead-ms" in exposed


async def test_another_origin_gets_no_allow_header(fake: FakeBackend) -> None:
    other = "https://evil.example"
    async with router_for(fake.port, cors_origins=[PAGE]) as client:
        preflight = await client.options("/v1/chat/completions", headers=preflight_headers(other))
        answer = await client.post("/v1/chat/completions", json=CHAT, headers={"origin": other})
    assert preflight.status_code == 405  # as without CORS
    assert answer.status_code == 200  # a browser would keep it from the page
    for response in (preflight, answer):
        assert not any(name.startswith("access-control-") for name in response.headers)


async def test_without_cors_origins_a_preflight_gets_405_and_no_cors_header(
    fake: FakeBackend,
) -> None:
    async with router_for(fake.port) as client:
        preflight = await client.options("/v1/chat/completions", headers=preflight_headers(PAGE))
        answer = await client.post("/v1/chat/completions", json=CHAT, headers={"origin": PAGE})
    assert preflight.status_code == 405
    assert preflight.headers["allow"] == "POST"
    for response in (preflight, answer):
        assert not any(name.startswith("access-control-") for name in response.headers)


async def test_a_star_allows_any_origin(fake: FakeBackend) -> None:
    origin = "https://anything.example:8443"
    async with router_for(fake.port, cors_origins=["*"]) as client:
        preflight = await client.options("/v1/embeddings", headers=preflight_headers(origin))
        answer = await client.post("/v1/chat/completions", json=CHAT, headers={"origin": origin})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == origin
    assert answer.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize(
    "origin", ["http://localhost:3000/", "localhost:3000", "https://a.example/app", ""]
)
def test_a_value_that_is_no_origin_is_refused(origin: str) -> None:
    with pytest.raises(ValidationError, match="not an origin"):
        make_config({"chat": entry("m-chat", 1)}, cors_origins=[origin])


def test_origins_are_compared_in_lower_case() -> None:
    config = make_config({"chat": entry("m-chat", 1)}, cors_origins=["https://App.Example"])
    assert config.file.router.cors_origins == ["https://app.example"]


async def test_with_api_keys_a_preflight_needs_no_key_and_a_refusal_is_readable(
    fake: FakeBackend,
) -> None:
    keys = [{"name": "alice", "key": "sk-alice-secret"}]
    async with router_for(fake.port, cors_origins=[PAGE], api_keys=keys) as client:
        # Browsers never send credentials with a preflight.
        preflight = await client.options("/v1/chat/completions", headers=preflight_headers(PAGE))
        refused = await client.post("/v1/chat/completions", json=CHAT, headers={"origin": PAGE})
    assert preflight.status_code == 204
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == PAGE
