"""API keys as clients meet them: the real SDKs against a real ``serve`` (fake llama-servers
on its PATH), with keys scoped to models, one admin key, and one unscoped key."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import fake_llama_server
from config_builder import entry, make_config
from net import free_port
from router_proc import RouterProcess, serving
from slm_server.router.app import RouterApp

ALICE = f"alice-{secrets.token_hex(16)}"  # m-chat only
BOB = f"bob-{secrets.token_hex(16)}"  # every model, not admin
OPS = f"ops-{secrets.token_hex(16)}"  # admin, given as its SHA-256
WRONG = f"wrong-{secrets.token_hex(16)}"
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


class Served:
    def __init__(self, router: RouterProcess, ports: dict[str, int], directory: Path) -> None:
        self.router = router
        self.ports = ports  # role -> its fake backend's port
        self.dir = directory

    def openai(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.router.url}/v1", api_key=key, max_retries=0)

    def anthropic(self, key: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.router.url, api_key=key, max_retries=0)

    def received(self, role: str) -> dict[str, Any]:
        """What the role's fake backend last received (headers with lower-case names)."""
        url = f"http://127.0.0.1:{self.ports[role]}/_fake/last_request"
        seen: dict[str, Any] = httpx.get(url, timeout=5).json()
        return seen

    def requests(self, role: str) -> int:
        """How many requests the role's fake backend has received."""
        url = f"http://127.0.0.1:{self.ports[role]}/_fake/stats"
        count: int = httpx.get(url, timeout=5).json()["requests"]
        return count

    def slm(self, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        """The command line, asking this instance (``key`` in $SLM_API_KEY)."""
        env = {k: v for k, v in os.environ.items() if k != "SLM_API_KEY"}
        if key is not None:
            env["SLM_API_KEY"] = key
        return subprocess.run(
            [sys.executable, "-m", "slm_server", *args, "--url", self.router.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("keys")
    (directory / "m.gguf").write_bytes(b"GGUF")  # never read: the fake ignores --model
    ports = {"chat": free_port(), "other": free_port()}
    config = {
        "models": {
            role: entry(model_id, ports[role], model_path=str(directory / "m.gguf"))
            for role, model_id in (("chat", "m-chat"), ("other", "m-other"))
        },
        "router": {
            "api_keys": [
                {"name": "alice", "key_env": "SLM_TEST_KEY_ALICE", "models": ["m-chat"]},
                {"name": "bob", "key_env": "SLM_TEST_KEY_BOB"},
                {
                    "name": "ops",
                    "key_sha256": hashlib.sha256(OPS.encode()).hexdigest(),
                    "admin": True,
                },
            ]
        },
    }
    bin_dir = fake_llama_server.install(directory / "bin")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLM_SERVER_CACHE": str(directory / "cache"),
        "SLM_TEST_KEY_ALICE": ALICE,
        "SLM_TEST_KEY_BOB": BOB,
        "SLM_API_KEY": BOB,  # as a user of the command line would have it set
    }
    router = RouterProcess(config, directory, command="serve", env=env, api_key=BOB)
    with serving(router, 60):
        yield Served(router, ports, directory)


def test_openai_sdk_with_its_key_is_answered_and_the_key_goes_no_further(
    served: Served,
) -> None:
    with served.openai(ALICE) as client:
        answer = client.chat.completions.create(model="m-chat", messages=MESSAGES)
        assert answer.choices[0].message.content
        assert not _credentials(served.received("chat"))

        stream = client.chat.completions.create(model="m-chat", messages=MESSAGES, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert not _credentials(served.received("chat"))


def test_anthropic_sdk_with_its_key_is_answered_and_the_key_goes_no_further(
    served: Served,
) -> None:
    with served.anthropic(ALICE) as client:
        message = client.messages.create(model="m-chat", max_tokens=16, messages=MESSAGES)
    assert message.content and message.content[0].type == "text"
    assert not _credentials(served.received("chat"))


def test_a_request_without_a_valid_key_is_refused_with_401(served: Served) -> None:
    with served.openai(WRONG) as client, pytest.raises(openai.AuthenticationError) as wrong:
        client.chat.completions.create(model="m-chat", messages=MESSAGES)
    assert wrong.value.status_code == 401 and wrong.value.code == "invalid_api_key"

    bare = httpx.post(
        f"{served.router.url}/v1/chat/completions",
        json={"model": "m-chat", "messages": MESSAGES},
        timeout=10,
    )
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"] == "Bearer"
    error = bare.json()["error"]
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert "x-api-key" in error["message"]  # says how to send one

    # Asked before anything else: without a key, not even which paths exist shows.
    assert httpx.get(f"{served.router.url}/v1/nope", timeout=10).status_code == 401

    with served.anthropic(WRONG) as claude, pytest.raises(anthropic.AuthenticationError) as refused:
        claude.messages.create(model="m-chat", max_tokens=16, messages=MESSAGES)
    assert refused.value.status_code == 401
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_a_key_asking_for_a_model_outside_its_scope_gets_403(served: Served) -> None:
    with served.openai(ALICE) as client:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            client.chat.completions.create(model="m-other", messages=MESSAGES)
        assert denied.value.code == "model_not_allowed"
        assert "m-chat" in denied.value.message  # says what it may use

        # A model no entry serves gets the same answer: the key learns nothing outside it.
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model="m-secret", messages=MESSAGES)

    with served.anthropic(ALICE) as claude, pytest.raises(anthropic.PermissionDeniedError) as no:
        claude.messages.create(model="m-other", max_tokens=16, messages=MESSAGES)
    assert no.value.body["error"]["type"] == "permission_error"  # type: ignore[index]

    with served.openai(BOB) as unscoped:
        answer = unscoped.chat.completions.create(model="m-other", messages=MESSAGES)
    assert answer.choices[0].message.content


def test_the_model_list_shows_only_the_models_of_the_key(served: Served) -> None:
    with served.openai(ALICE) as alice, served.openai(BOB) as bob, served.openai(WRONG) as no:
        assert [model.id for model in alice.models.list()] == ["m-chat"]
        assert sorted(model.id for model in bob.models.list()) == ["m-chat", "m-other"]
        with pytest.raises(openai.AuthenticationError):
            no.models.list()


def test_backend_health_needs_a_key_and_shows_only_the_roles_of_its_models(served: Served) -> None:
    url = served.router.url
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert httpx.head(f"{url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{url}/v1/backends/health", timeout=10).status_code == 401
    scoped = httpx.get(f"{url}/v1/backends/health", headers={"x-api-key": ALICE}, timeout=10)
    assert scoped.status_code == 200 and set(scoped.json()) == {"chat"}  # m-chat only
    unscoped = httpx.get(f"{url}/v1/backends/health", headers={"x-api-key": BOB}, timeout=10)
    assert unscoped.status_code == 200 and set(unscoped.json()) == {"chat", "other"}
    admin = httpx.get(f"{url}/v1/backends/health", headers=_bearer(OPS), timeout=10)
    assert admin.status_code == 200 and set(admin.json()) == {"chat", "other"}


def test_a_stored_response_is_continued_only_with_the_key_that_made_it(served: Served) -> None:
    with served.openai(ALICE) as alice, served.openai(BOB) as bob:
        first = alice.responses.create(model="m-chat", input="my secret plan")
        follow_up = alice.responses.create(
            model="m-chat", input="and?", previous_response_id=first.id
        )
        assert follow_up.output_text
        with pytest.raises(openai.NotFoundError, match="unknown or expired"):
            bob.responses.create(model="m-chat", input="and?", previous_response_id=first.id)


def test_load_and_unload_need_an_admin_key(served: Served) -> None:
    url = served.router.url
    refused = httpx.post(f"{url}/v1/backends/other/unload", headers=_bearer(BOB), timeout=30)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin_required"
    assert served.router.backends()["other"]["state"] == "ready"  # untouched

    unloaded = httpx.post(f"{url}/v1/backends/other/unload", headers=_bearer(OPS), timeout=30)
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["state"] != "ready"
    loaded = httpx.post(f"{url}/v1/backends/other/load", headers=_bearer(OPS), timeout=30)
    assert loaded.status_code == 200 and loaded.json()["state"] == "ready", loaded.text


def test_the_command_line_sends_the_key_it_is_given(served: Served, tmp_path: Path) -> None:
    unkeyed = served.slm("ps")
    assert unkeyed.returncode == 1
    assert "--api-key-file" in unkeyed.stderr and "SLM_API_KEY" in unkeyed.stderr

    listed = served.slm("ps", key=BOB)
    assert listed.returncode == 0, listed.stderr
    assert "m-other" in listed.stdout

    (tmp_path / "bob.key").write_text(f"{BOB}\n")
    not_admin = served.slm("unload", "other", "--api-key-file", str(tmp_path / "bob.key"))
    assert not_admin.returncode == 1
    assert "not an admin key" in not_admin.stderr

    assert served.slm("unload", "other", key=OPS).returncode == 0
    reloaded = served.slm("load", "other", key=OPS)
    assert reloaded.returncode == 0, reloaded.stderr


def test_metrics_need_an_admin_key_and_count_requests_by_key_name(served: Served) -> None:
    url = f"{served.router.url}/metrics"
    assert httpx.get(url, timeout=10).status_code == 401
    refused = httpx.get(url, headers=_bearer(ALICE), timeout=10)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin_required"

    before = _alice_chats(httpx.get(url, headers=_bearer(OPS), timeout=10).text)
    with served.openai(ALICE) as client:
        client.chat.completions.create(model="m-chat", messages=MESSAGES)
    scraped = httpx.get(url, headers=_bearer(OPS), timeout=10)
    assert scraped.status_code == 200
    assert _alice_chats(scraped.text) == before + 1
    assert ALICE not in scraped.text and OPS not in scraped.text


def _alice_chats(text: str) -> float:
    """How many chat answers (2xx) the metrics count for the key named alice."""
    wanted = {"model": "m-chat", "endpoint": "/v1/chat/completions", "status_class": "2xx"}
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "slm_requests_total" and sample.labels == {**wanted, "key": "alice"}
    )


async def test_public_metrics_answer_without_a_key_and_nothing_else_does() -> None:
    ops = {"name": "ops", "key_sha256": hashlib.sha256(OPS.encode()).hexdigest(), "admin": True}
    config = make_config(
        {"chat": entry("m-chat", free_port())}, api_keys=[ops], metrics_public=True
    )
    app = RouterApp(config)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            assert (await client.get("/metrics")).status_code == 200
            assert (await client.get("/v1/models")).status_code == 401
            assert (await client.get("/v1/models", headers=_bearer(OPS))).status_code == 200
    finally:
        await app.aclose()


async def test_a_model_outside_the_key_is_refused_under_its_id_when_it_is_served() -> None:
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    alice = {"name": "alice", "key_sha256": digest(ALICE), "models": ["m-chat"]}
    ops = {"name": "ops", "key_sha256": digest(OPS), "admin": True}
    models = {"chat": entry("m-chat", free_port()), "other": entry("m-other", free_port())}
    app = RouterApp(make_config(models, api_keys=[alice, ops]))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            for model in ("m-other", "no-such-model"):
                chat = {"model": model, "messages": MESSAGES}
                refused = await client.post(
                    "/v1/chat/completions", json=chat, headers=_bearer(ALICE)
                )
                assert refused.status_code == 403, refused.text
            text = (await client.get("/metrics", headers=_bearer(OPS))).text
    finally:
        await app.aclose()
    rejected = {
        sample.labels["model"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "slm_rejected_requests_total" and sample.labels["reason"] == "auth"
    }
    # A served model is named; any other name stays "-" (labels remain bounded).
    assert rejected == {"m-other": 1, "-": 1}


def test_no_key_appears_in_any_log_file_nor_reaches_a_backend(served: Served) -> None:
    for key in (ALICE, BOB, OPS, WRONG):
        for headers in (_bearer(key), {"x-api-key": key}):
            before = served.requests("chat")
            answer = httpx.post(
                f"{served.router.url}/v1/chat/completions",
                json={"model": "m-chat", "messages": MESSAGES},
                headers=headers,
                timeout=10,
            )
            if answer.status_code == 200:
                assert served.requests("chat") == before + 1
                assert not _credentials(served.received("chat"))
            else:  # refused: the backend never saw it
                assert answer.status_code == 401 and key == WRONG
                assert served.requests("chat") == before
    files = [path for path in served.dir.rglob("*") if path.is_file()]
    logs = [path for path in files if path.suffix == ".log"]
    assert served.router.log_path in logs and len(logs) > 1  # the router's and the backends'
    said = "API keys asked for on every endpoint but /health: alice, bob, ops"  # names only
    assert said in served.router.log()
    for path in files:
        text = path.read_bytes()
        for key in (ALICE, BOB, OPS, WRONG):
            assert key.encode() not in text, f"{key[:5]}... in {path}"


def test_a_backend_started_by_serve_holds_no_api_key_in_its_environment(
    served: Served,
) -> None:
    pid = served.router.backends()["chat"]["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"fake_llama_server" in Path(f"/proc/{pid}/cmdline").read_bytes()  # the backend
    names = {item.split(b"=", 1)[0] for item in environ.split(b"\0")}
    assert b"PATH" in names  # the rest of the environment is passed on
    assert not names & {b"SLM_TEST_KEY_ALICE", b"SLM_TEST_KEY_BOB", b"SLM_API_KEY"}
    for key in (ALICE, BOB):
        assert key.encode() not in environ


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _credentials(received: dict[str, Any]) -> list[str]:
    """The credential headers among those a backend received."""
    return [name for name, _ in received["header_list"] if name in ("authorization", "x-api-key")]
