"""``backend: openai`` through a real ``slm-server serve``, with the fake backend as the
server elsewhere: where requests go, the keys they carry, the names they use, and what a
client and the health report see when that server fails."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from fake_backend_proc import FakeBackend
from net import free_port, wait_until
from router_proc import RouterProcess
from test_command_served import command_entry
from test_command_served import fake as fake_command

Serve = Callable[..., RouterProcess]
UPSTREAM_KEY = "upstream-secret-1"
CLIENT_KEY = "client-secret-2"


def remote_entry(model_id: str, base_url: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "backend": "openai",
        "base_url": base_url,
        "default_timeout": 30,
        **fields,
    }


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    routers: list[RouterProcess] = []

    def start(models: dict[str, dict[str, Any]], **router: Any) -> RouterProcess:
        config = {"models": models, "router": router}
        env = {"UPSTREAM_KEY": UPSTREAM_KEY}
        process = RouterProcess(config, tmp_path, command="serve", env=env)
        routers.append(process)
        return process.start()

    yield start
    for router in routers:
        router.stop()


@pytest.fixture
def fake() -> Iterator[FakeBackend]:
    backend = FakeBackend().start(["--prefix", "/openai", "--no-health"])
    yield backend
    backend.stop()


def chat(router: RouterProcess, model: str, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "x-api-key": CLIENT_KEY}
    return httpx.post(f"{router.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_requests_go_under_the_base_path_with_the_upstream_key_and_name(
    serve: Serve, fake: FakeBackend
) -> None:
    entry = remote_entry(
        "remote-model",
        f"{fake.url}/openai/v1",
        api_key_env="UPSTREAM_KEY",
        upstream_model="served-upstream",
    )
    router = serve({"remote": entry})
    reply = chat(router, "remote-model")
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "remote-model"
    sent = fake.last_request()
    assert sent["path"] == "/openai/v1/chat/completions"
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "x-api-key" not in sent["headers"]  # the client's key goes nowhere
    assert CLIENT_KEY not in json.dumps(sent["header_list"])
    assert json.loads(sent["body"])["model"] == "served-upstream"

    # A stream's chunks name the entry's id too.
    streamed = {
        "model": "remote-model",
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    with httpx.stream(
        "POST", f"{router.url}/v1/chat/completions", json=streamed, timeout=30
    ) as stream:
        assert stream.status_code == 200
        events = [line for line in stream.iter_lines() if line.startswith("data: {")]
    assert events and all(json.loads(e[6:])["model"] == "remote-model" for e in events)


def test_without_api_key_env_the_client_key_is_still_not_forwarded(
    serve: Serve, fake: FakeBackend
) -> None:
    router = serve({"remote": remote_entry("m", f"{fake.url}/openai/v1")})
    assert chat(router, "m").status_code == 200
    sent = fake.last_request()["headers"]
    assert "authorization" not in sent and "x-api-key" not in sent


def test_responses_and_messages_are_converted_to_chat_on_the_server(
    serve: Serve, fake: FakeBackend
) -> None:
    router = serve({"remote": remote_entry("m", f"{fake.url}/openai/v1")})
    reply = httpx.post(
        f"{router.url}/v1/responses", json={"model": "m", "input": "hello"}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["output"][-1]["content"][0]["text"] == "echo: hello"
    assert reply.json()["model"] == "m"
    assert fake.last_request()["path"] == "/openai/v1/chat/completions"
    message = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "yo"}]}
    reply = httpx.post(f"{router.url}/v1/messages", json=message, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["content"][0]["text"] == "echo: yo"
    assert fake.last_request()["path"] == "/openai/v1/chat/completions"


def test_native_endpoints_are_sent_as_they_are(serve: Serve, fake: FakeBackend) -> None:
    entry = remote_entry("m", f"{fake.url}/openai/v1", native_endpoints=["/v1/responses"])
    router = serve({"remote": entry})
    reply = httpx.post(f"{router.url}/v1/responses", json={"model": "m", "input": "x"}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert fake.last_request()["path"] == "/openai/v1/responses"


def test_an_upload_goes_out_with_the_upstream_model_and_the_file_as_sent(
    serve: Serve, fake: FakeBackend
) -> None:
    entry = remote_entry(
        "my-stt", f"{fake.url}/v1", model_type="whisper", upstream_model="whisper-1"
    )
    router = serve({"stt": entry})
    audio = b"RIFF0000WAVE" + bytes(range(256))
    reply = httpx.post(
        f"{router.url}/v1/audio/transcriptions",
        data={"model": "my-stt", "language": "en"},
        files={"file": ("a.wav", audio, "audio/wav")},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    digest = hashlib.sha256(audio).hexdigest()  # the server parsed the form, file intact
    assert reply.json()["text"] == f"whisper-1 heard {len(audio)} bytes, sha256 {digest}"
    sent = fake.last_request()
    assert sent["path"] == "/v1/audio/transcriptions"
    assert 'name="model"\r\n\r\nwhisper-1\r\n' in sent["body"]
    assert "my-stt" not in sent["body"]


def test_native_answers_on_converted_paths_name_the_entry_id_not_the_upstream_model(
    serve: Serve, fake: FakeBackend
) -> None:
    entry = remote_entry(
        "my-lm",
        f"{fake.url}/v1",
        upstream_model="served-upstream",
        native_endpoints=["/v1/responses"],
    )
    router = serve({"lm": entry})
    asked = {"model": "my-lm", "input": "x"}
    reply = httpx.post(f"{router.url}/v1/responses", json=asked, timeout=30)
    assert reply.status_code == 200, reply.text
    assert fake.last_request()["path"] == "/v1/responses"
    assert json.loads(fake.last_request()["body"])["model"] == "served-upstream"
    assert reply.json()["model"] == "my-lm"
    # Converted to chat completions (not native here), the answer names it too.
    message = {"model": "my-lm", "max_tokens": 20, "messages": [{"role": "user", "content": "y"}]}
    reply = httpx.post(f"{router.url}/v1/messages", json=message, timeout=30)
    assert reply.status_code == 200, reply.text
    assert fake.last_request()["path"] == "/v1/chat/completions"
    assert reply.json()["model"] == "my-lm"


def test_health_probes_the_entry_health_path_under_the_base_path(
    serve: Serve, fake: FakeBackend
) -> None:
    # The fake has no /health: only /v1/models, under the prefix, can find it up.
    up = remote_entry("up", f"{fake.url}/openai/v1", health_path="/v1/models")
    down = remote_entry("down", f"{fake.url}/openai/v1", health_path="/missing")
    router = serve({"up": up, "down": down})
    report = router.backends()
    assert report["up"]["status"] == "healthy", report
    assert report["up"]["base_url"] == f"{fake.url}/openai/v1"
    assert report["down"]["status"] == "unhealthy"
    assert "HTTP 404" in report["down"]["error"]


def test_an_unreachable_server_is_said_in_health_and_answered_503(serve: Serve) -> None:
    gone = f"http://127.0.0.1:{free_port()}/v1"
    router = serve({"gone": remote_entry("gone-model", gone)})
    report = router.backends()["gone"]
    assert report["status"] == "unreachable"
    assert "Connection refused - nothing listens at that address" in report["error"]
    reply = chat(router, "gone-model")
    assert reply.status_code == 503
    error = reply.json()["error"]
    assert error["code"] == "backend_unavailable"
    assert f"gone-model at {gone}" in error["message"]
    assert "not reachable" in error["message"]


def test_a_server_error_passes_through_as_the_server_said_it(
    serve: Serve, fake: FakeBackend
) -> None:
    router = serve({"remote": remote_entry("m", f"{fake.url}/openai/v1")})
    fake.control(fail_status=503)
    reply = chat(router, "m")
    assert reply.status_code == 503
    assert reply.json()["error"]["message"]


def test_the_client_cookies_account_and_address_stay_with_the_router(
    serve: Serve, fake: FakeBackend
) -> None:
    router = serve({"remote": remote_entry("m", f"{fake.url}/openai/v1")})
    own = {
        "cookie": "session=dashboard-secret",
        "openai-organization": "org-client",
        "openai-project": "proj-client",
        "forwarded": "for=10.0.0.7",
        "x-forwarded-for": "10.0.0.7",
        "x-trace": "kept",
    }
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(f"{router.url}/v1/chat/completions", json=body, headers=own, timeout=30)
    assert reply.status_code == 200, reply.text
    sent = fake.last_request()["headers"]
    assert sent["x-trace"] == "kept"  # what is the request's own still goes
    assert not {name for name in own if name != "x-trace"} & set(sent)


def test_a_refused_upstream_key_is_the_routers_failure_not_the_clients(
    serve: Serve, fake: FakeBackend
) -> None:
    url = f"{fake.url}/openai/v1"
    router = serve({"remote": remote_entry("m", url, api_key_env="UPSTREAM_KEY")})
    fake.control(fail_status=401)
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
        ("/v1/messages", {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    ]
    for path, body in requests:
        reply = httpx.post(f"{router.url}{path}", json={"model": "m", **body}, timeout=30)
        assert reply.status_code == 502, (path, reply.text)
        assert "www-authenticate" not in reply.headers
        message = reply.json()["error"]["message"]
        assert message == f"the server at {url} refused the key in api_key_env", path


def test_an_error_page_or_a_redirect_is_told_in_the_envelope(
    serve: Serve, fake: FakeBackend
) -> None:
    router = serve({"remote": remote_entry("m", f"{fake.url}/openai/v1")})
    fake.control(fail_status=404, fail_text="<html><body>404 Not Found</body></html>")
    reply = chat(router, "m")
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert error["code"] == "backend_error" and "<html>" not in error["message"]
    assert f"{fake.url}/openai/v1/chat/completions answered HTTP 404" in error["message"]
    fake.control(fail_status=302, fail_text="")
    moved = chat(router, "m")
    assert moved.status_code == 502 and "location" not in moved.headers
    assert "a redirect the router does not follow" in moved.json()["error"]["message"]


def test_a_server_whose_health_fails_is_said_unhealthy_with_where(serve: Serve) -> None:
    with FakeBackend().start(["--loading"]) as loading:
        router = serve({"remote": remote_entry("m", f"{loading.url}/v1")})
        report = router.backends()["remote"]
        assert report["status"] == "unhealthy"
        assert report["error"].startswith(f"{loading.url}/health answered HTTP 503")
        loading.control(loading=False)
        assert router.backends()["remote"]["status"] == "healthy"


def test_load_unload_and_restart_say_the_model_runs_elsewhere(
    serve: Serve, fake: FakeBackend
) -> None:
    router = serve({"remote": remote_entry("m", f"{fake.url}/openai/v1")})
    for action in ("load", "unload", "restart"):
        reply = httpx.post(f"{router.url}/v1/backends/remote/{action}", timeout=10)
        assert reply.status_code == 400, reply.text
        assert "runs elsewhere" in reply.json()["error"]["message"]
    log = httpx.get(f"{router.url}/admin/logs/remote", timeout=10)
    assert log.status_code == 404
    said = log.json()["error"]["message"]
    assert said.startswith(f"'remote' runs elsewhere ({fake.url}/openai/v1): no log of it here")
    assert chat(router, "m").status_code == 200  # untouched


def test_a_missing_upstream_key_refuses_that_model_only(serve: Serve, fake: FakeBackend) -> None:
    keyless = remote_entry("keyless", f"{fake.url}/openai/v1", api_key_env="NOT_SET_ANYWHERE")
    fine = remote_entry("fine", f"{fake.url}/openai/v1")
    router = serve({"keyless": keyless, "fine": fine})
    report = router.backends()["keyless"]
    assert report["status"] == "error"
    # The variable's name is told in the router's log only: it may be a key pasted there.
    assert report["error"] == "its upstream key is not configured (see the router log)"
    reply = chat(router, "keyless")
    assert reply.status_code == 503
    message = reply.json()["error"]["message"]
    assert "upstream key is not configured" in message and "NOT_SET_ANYWHERE" not in message
    assert chat(router, "fine").status_code == 200
    assert "NOT_SET_ANYWHERE (api_key_env) is not set" in router.log()


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


def test_https_is_verified_unless_the_entry_says_otherwise(serve: Serve, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with FakeBackend().start(["--tls-cert", str(cert), "--tls-key", str(key)]) as fake:
        url = f"https://127.0.0.1:{fake.port}/v1"
        router = serve(
            {
                "checked": remote_entry("checked", url),
                "unchecked": remote_entry("unchecked", url, tls_verify=False),
                "own-ca": remote_entry("own-ca", url, tls_verify=str(cert)),
            }
        )
        refused = chat(router, "checked")
        assert refused.status_code == 503
        assert "CERTIFICATE_VERIFY_FAILED" in refused.json()["error"]["message"]
        assert router.backends()["checked"]["status"] == "unreachable"
        for model in ("unchecked", "own-ca"):
            reply = chat(router, model)
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"] == "echo: hi"
        assert router.backends()["own-ca"]["status"] == "healthy"


def test_a_reload_moves_adds_and_takes_over_models_without_starting_anything(
    serve: Serve, fake: FakeBackend, tmp_path: Path
) -> None:
    local = command_entry("local-model", fake_command())
    router = serve({"a": remote_entry("a", f"{fake.url}/openai/v1"), "local": local})
    # A model elsewhere has no state of its own: only the local one's is waited for.
    wait_until(lambda: router.backends()["local"].get("state") == "ready", 30, "local ready")
    local_pid = router.backends()["local"]["pid"]

    def reload(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
        (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": models}))
        answer = httpx.post(f"{router.url}/admin/reload", timeout=30)
        assert answer.status_code == 200, answer.text
        roles: dict[str, Any] = answer.json()["roles"]
        return roles

    moved = remote_entry("a", f"{fake.url}/v1")  # off the prefix
    roles = reload({"a": moved, "b": remote_entry("b", f"{fake.url}/v1"), "local": local})
    assert (roles["a"], roles["b"], roles["local"]) == ("replaced", "added", "unchanged")
    assert f"reload: a: now points at {fake.url}/v1\n" in router.log()
    assert f"reload: b: now points at {fake.url}/v1\n" in router.log()
    assert chat(router, "a").status_code == 200
    assert fake.last_request()["path"] == "/v1/chat/completions"
    assert chat(router, "b").status_code == 200
    assert router.backends()["local"]["pid"] == local_pid

    # The local model's server now runs elsewhere: its process is stopped, none started.
    taken_over = remote_entry("local-model", f"http://127.0.0.1:{local['port']}/v1")
    reload({"a": moved, "local": taken_over})
    wait_until(lambda: not psutil.pid_exists(local_pid), 15, "the local server to stop")
    assert "reload: local: now points at http://127.0.0.1:" in router.log()
    assert "the server run here for it stops once its requests are done" in router.log()
    report = router.backends()["local"]
    assert report["backend"] == "openai" and "pid" not in report
    assert report["status"] == "unreachable"


def test_a_404_for_a_native_endpoint_is_not_held_against_the_next_server(
    serve: Serve, tmp_path: Path
) -> None:
    with FakeBackend().start() as first, FakeBackend().start() as second:

        def entry(fake: FakeBackend) -> dict[str, Any]:
            return remote_entry("m", f"{fake.url}/v1", native_endpoints=["/v1/responses"])

        router = serve({"m": entry(first)})

        def ask(fake: FakeBackend) -> str:
            body = {"model": "m", "input": "hi"}
            reply = httpx.post(f"{router.url}/v1/responses", json=body, timeout=30)
            assert reply.status_code == 200, reply.text
            return str(fake.last_request()["path"])

        first.control(responses_status=404)
        assert ask(first) == "/v1/chat/completions"  # converted
        (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": {"m": entry(second)}}))
        assert httpx.post(f"{router.url}/admin/reload", timeout=30).status_code == 200
        assert ask(second) == "/v1/responses"  # tried natively again


def test_metrics_say_a_server_elsewhere_is_up_as_its_last_probe_found_it(
    serve: Serve, fake: FakeBackend
) -> None:
    keyless = remote_entry("keyless", f"{fake.url}/openai/v1", api_key_env="NOT_SET_ANYWHERE")
    up = remote_entry("up", f"{fake.url}/openai/v1", health_path="/v1/models")
    router = serve({"keyless": keyless, "up": up})

    def up_lines() -> list[str]:
        text = httpx.get(f"{router.url}/metrics", timeout=10).text
        return sorted(line for line in text.splitlines() if line.startswith("slm_backend_up{"))

    assert up_lines() == ['slm_backend_up{model="keyless",role="keyless"} 0.0']
    assert router.backends()["up"]["status"] == "healthy"
    assert up_lines() == [
        'slm_backend_up{model="keyless",role="keyless"} 0.0',
        'slm_backend_up{model="up",role="up"} 1.0',
    ]
