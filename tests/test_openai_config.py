"""``backend: openai`` entries: their base_url read as the SDKs read it, and what
check-config says of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config_builder import load_errors, load_models
from slm_server.backends.openai import KEY_NOT_CONFIGURED, setup_problems, tls_context
from slm_server.config.base_url import BaseUrlError, parse_base_url
from slm_server.router.routing import RoutingTable
from test_openai_served import self_signed


def remote_entry(**fields: Any) -> dict[str, Any]:
    return {
        "id": "remote-model",
        "backend": "openai",
        "base_url": "http://gpu-1:8000/v1",
        "default_timeout": 60,
        **fields,
    }


@pytest.mark.parametrize(
    ("base_url", "path", "sent_to"),
    [
        ("http://gpu-1:8000/v1", "/v1/chat/completions", "http://gpu-1:8000/v1/chat/completions"),
        ("http://gpu-1:8000/v1/", "/v1/embeddings?x=1", "http://gpu-1:8000/v1/embeddings?x=1"),
        ("http://gpu-1:8000", "/v1/chat/completions", "http://gpu-1:8000/v1/chat/completions"),
        ("https://h/openai/v1", "/v1/chat/completions", "https://h/openai/v1/chat/completions"),
        ("https://h/openai/v1", "/health", "https://h/openai/health"),
        ("https://h:8443/v1beta/openai", "/v1/models", "https://h:8443/v1beta/openai/models"),
        ("http://[::1]:9000/v1", "/rerank", "http://[::1]:9000/rerank"),
    ],
)
def test_paths_join_the_base_url_as_the_sdks_do(base_url: str, path: str, sent_to: str) -> None:
    url = parse_base_url(base_url)
    assert url.origin + url.target(path) == sent_to


def test_default_ports_and_tls_follow_the_scheme() -> None:
    assert (parse_base_url("https://api.example.com/v1").port, parse_base_url("http://h").port) == (
        443,
        80,
    )
    assert parse_base_url("HTTPS://h/v1").tls
    assert str(parse_base_url("http://gpu-1:8000")) == "http://gpu-1:8000/v1"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("gpu-1:8000/v1", "must start with http:// or https://"),
        ("ftp://h/v1", "must start with http:// or https://"),
        ("http:///v1", "names no host"),
        ("http://h:99999/v1", "port from 1 to 65535"),
        ("http://user:pw@h/v1", "must not hold a user or password"),
        ("http://h/v1?key=1", "must not have a query"),
        ("http://h /v1", "no spaces"),
    ],
)
def test_urls_a_server_cannot_be_reached_at_are_refused(text: str, says: str) -> None:
    with pytest.raises(BaseUrlError, match=says):
        parse_base_url(text)


def test_an_entry_needs_a_good_base_url_and_not_a_port(tmp_path: Path) -> None:
    config = load_models(tmp_path, remote=remote_entry())
    assert config.models["remote"].port is None
    errors = load_errors(
        tmp_path,
        bad=remote_entry(base_url="gpu-1:8000"),
        none={k: v for k, v in remote_entry().items() if k != "base_url"},
    )
    assert any("models.bad" in e and "must start with http:// or https://" in e for e in errors)
    assert any("models.none" in e and "needs base_url" in e for e in errors), errors


def test_a_key_variable_unset_and_a_missing_ca_file_are_errors(tmp_path: Path) -> None:
    config = load_models(
        tmp_path,
        keyed=remote_entry(api_key_env="GPU1_KEY"),
        ca=remote_entry(id="ca", base_url="https://h/v1", tls_verify="./no-such-ca.pem"),
        plain=remote_entry(id="plain", tls_verify=False),
    )
    found = {(p.role, p.field, p.severity): p.message for p in setup_problems(config, {})}
    assert "GPU1_KEY (api_key_env) is not set" in found[("keyed", "api_key_env", "error")]
    assert "no-such-ca.pem" in found[("ca", "tls_verify", "error")]
    assert "https URLs only" in found[("plain", "tls_verify", "warning")]
    assert not setup_problems(
        load_models(tmp_path, keyed=remote_entry(api_key_env="K")), {"K": "s"}
    )


def test_what_only_a_started_server_uses_is_warned_as_ignored(tmp_path: Path) -> None:
    entry = remote_entry(on_demand=True, idle_ttl_s=60, memory_gb=8, port=8000, temp=0.5)
    config = load_models(tmp_path, remote=entry)
    warned = {p.field: p.message for p in config.problems if p.severity == "warning"}
    for field in ("on_demand", "idle_ttl_s", "memory_gb", "port"):
        assert warned[field] == "ignored for openai: slm_server does not start its server"
    assert warned["temp"] == "applies to llamacpp only; ignored for openai"
    assert not [p for p in config.problems if p.severity == "error"]


def test_command_fields_on_openai_and_openai_fields_elsewhere_are_warned(tmp_path: Path) -> None:
    config = load_models(
        tmp_path,
        remote=remote_entry(health_path="/v1/models", stop_signal="SIGINT"),
        cmd={
            "id": "c",
            "backend": "command",
            "port": 8601,
            "default_timeout": 5,
            "command": ["server"],
            "upstream_model": "x",
        },
    )
    warned = {(p.role, p.field): p.message for p in config.problems if p.severity == "warning"}
    assert ("remote", "health_path") not in warned  # read by both kinds
    assert warned[("remote", "stop_signal")] == "applies to command only; ignored for openai"
    assert warned[("cmd", "upstream_model")] == "applies to openai only; ignored for command"


@pytest.mark.parametrize("value", ["sk-\u20ac", "sk-a\r\nx-injected: 1", "sk a"])
def test_a_key_no_header_can_carry_is_refused_not_sent(tmp_path: Path, value: str) -> None:
    config = load_models(tmp_path, r=remote_entry(api_key_env="RK"))
    [problem] = setup_problems(config, {"RK": value})
    assert (problem.severity, problem.field) == ("error", "api_key_env")
    assert "spaces, line breaks or non-ASCII characters" in problem.message
    backend = RoutingTable(config, environ={"RK": value}).backends["r"]
    assert backend.remote is None
    assert backend.unusable == KEY_NOT_CONFIGURED


def test_a_key_pasted_as_the_variable_name_is_never_repeated(tmp_path: Path) -> None:
    pasted = "gsk_8fJ2kQx0ExampleSecretKeyAbCdEf1234567890"
    config = load_models(tmp_path, r=remote_entry(api_key_env=pasted))
    [problem] = setup_problems(config, {})
    assert problem.severity == "error" and "looks like a key itself" in problem.message
    assert pasted not in problem.message
    backend = RoutingTable(config, environ={}).backends["r"]
    assert backend.unusable == KEY_NOT_CONFIGURED  # what clients and health are told
    # Set after all (an odd name, not a key): it is used, and check-config warns.
    [warned] = setup_problems(config, {pasted: "sk-1"})
    assert warned.severity == "warning" and pasted not in warned.message
    assert RoutingTable(config, environ={pasted: "sk-1"}).backends["r"].unusable is None


def test_a_ca_file_fixed_since_is_read_again_by_the_next_table(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    config = load_models(tmp_path, r=remote_entry(base_url="https://h/v1", tls_verify=str(ca)))
    first = RoutingTable(config, environ={}).backends["r"]
    assert first.unusable is not None and "ca.pem" in first.unusable
    cert, _ = self_signed(tmp_path)
    cert.rename(ca)
    kept = RoutingTable(config, {"r": first}, environ={}).backends["r"]
    assert kept is first  # its slots and requests in flight carried over
    assert kept.unusable is None and kept.remote is not None


def test_one_tls_context_per_setting_so_reloads_reuse_pooled_connections(
    tmp_path: Path,
) -> None:
    cert, _ = self_signed(tmp_path)
    for verify in (True, False, str(cert)):
        assert tls_context(verify, tmp_path) is tls_context(verify, tmp_path)
    assert tls_context(True, tmp_path) is not tls_context(False, tmp_path)
