"""The key ring and what check-config says about keys: plain calls, no sockets."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from pydantic import ValidationError

from config_builder import entry, make_config
from slm_server.auth import Grant, KeyRing, KeyRingError, key_ring
from slm_server.auth.client import key_at_hand
from slm_server.auth.rules import key_problems
from slm_server.config import ApiKey, RouterSettings
from slm_server.router.asgi import Headers
from slm_server.router.auth import grant_of, require_admin, require_model
from slm_server.router.errors import AdminRequired, InvalidApiKey, ModelNotAllowed
from slm_server.router.proxy import forwarded_request_headers
from slm_server.router.request_head import read_head


def authenticate(ring: KeyRing, headers: Headers) -> Grant:
    """What the router does with a request's headers: its keys read, then granted."""
    _, bearer, api_key, _ = read_head(headers)
    return grant_of(ring, bearer, api_key)


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys(*specs: dict[str, Any]) -> list[ApiKey]:
    return [ApiKey.model_validate(spec) for spec in specs]


def ring(*specs: dict[str, Any], environ: dict[str, str] | None = None) -> KeyRing:
    made = key_ring(keys(*specs), environ or {})
    assert made is not None
    return made


def test_each_way_of_giving_a_key_grants_what_its_entry_says() -> None:
    made = ring(
        {"name": "alice", "key_env": "KEY_ALICE", "models": ["chat"]},
        {"name": "ops", "key_sha256": sha("ops-key").upper(), "admin": True},
        {"name": "plain", "key": "plain-key"},
        environ={"KEY_ALICE": "alice-key"},
    )
    assert made.grant(b"alice-key") == Grant("alice", frozenset({"chat"}), admin=False)
    assert made.grant(b"ops-key") == Grant("ops", None, admin=True)
    assert made.grant(b"plain-key") == Grant("plain", None, admin=False)
    assert made.grant(b"KEY_ALICE") is None  # the variable's name is no key
    assert made.grant(b"") is None
    assert made.names == ["alice", "ops", "plain"]


def test_a_key_is_found_by_its_digest_alone_whatever_the_number_of_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = ring(*({"name": f"k{n}", "key": f"key-{n}"} for n in range(1000)))
    hashed: list[bytes] = []
    digest = hashlib.sha256

    def counting(data: bytes) -> Any:
        hashed.append(data)
        return digest(data)

    # One hash of the presented key, and no per-key work: the cost of 1 key with 1000.
    monkeypatch.setattr("slm_server.auth.ring.hashlib.sha256", counting)
    assert made.grant(b"key-999") == Grant("k999", None, admin=False)
    assert made.grant(b"key-1000") is None
    assert hashed == [b"key-999", b"key-1000"]


def test_a_key_that_matched_is_not_hashed_again_and_an_unknown_one_is_never_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = ring({"name": "alice", "key": "alice-key"}, {"name": "ops", "key": "ops-key"})
    hashed: list[bytes] = []
    digest = hashlib.sha256

    def counting(data: bytes) -> Any:
        hashed.append(data)
        return digest(data)

    monkeypatch.setattr("slm_server.auth.ring.hashlib.sha256", counting)
    alice = Grant("alice", None, admin=False)
    assert [made.grant(b"alice-key") for _ in range(3)] == [alice] * 3
    # Unknown keys, one a byte off a remembered one, are hashed each time: none is kept,
    # so no number of them grows the memo.
    for _ in range(2):
        for unknown in (b"alice-kez", b"alice-key ", b"alice-ke", b"other"):
            assert made.grant(unknown) is None
    assert made.grant(b"ops-key") == Grant("ops", None, admin=False)
    assert made.grant(b"alice-key") == alice
    unknowns = [b"alice-kez", b"alice-key ", b"alice-ke", b"other"]
    assert hashed == [b"alice-key", *unknowns, *unknowns, b"ops-key"]


def test_an_empty_presented_key_never_matches_even_the_digest_of_an_empty_key() -> None:
    # The schema refuses this digest; a ring made around it must still let nobody in.
    grants = [(hashlib.sha256(b"").digest(), Grant("empty", None, admin=True))]
    assert KeyRing(grants).grant(b"") is None
    for headers in ([(b"authorization", b"Bearer ")], [(b"x-api-key", b"  ")]):
        with pytest.raises(InvalidApiKey, match="needs an API key"):
            authenticate(KeyRing(grants), headers)


def test_no_keys_means_no_ring_and_no_key_asked_for() -> None:
    assert key_ring([], {}) is None


def test_a_key_variable_unset_or_empty_stops_the_start_naming_it() -> None:
    specs = (
        {"name": "alice", "key_env": "KEY_ALICE"},
        {"name": "bob", "key_env": "KEY_BOB"},
        {"name": "carol", "key_env": "KEY_CAROL"},
    )
    with pytest.raises(KeyRingError) as error:
        key_ring(keys(*specs), {"KEY_BOB": "", "KEY_CAROL": "set"})
    assert [(f.index, f.field) for f in error.value.faults] == [(0, "key_env"), (1, "key_env")]
    # Empty would let in anyone sending an empty key.
    assert [fault.message for fault in error.value.faults] == [
        f"key '{name}': the environment variable named by key_env is not set (or is empty); "
        "set it to the key before starting"
        for name in ("alice", "bob")
    ]


@pytest.mark.parametrize("value", [" alice-key", "alice-key\n", "\talice-key"])
def test_a_key_with_whitespace_around_it_stops_the_start_without_being_shown(
    value: str,
) -> None:
    with pytest.raises(KeyRingError) as error:
        key_ring(keys({"name": "alice", "key_env": "KEY_ALICE"}), {"KEY_ALICE": value})
    assert "key 'alice': the key in the environment variable named by key_env starts or " in str(
        error.value
    )
    assert "alice-key" not in str(error.value)
    with pytest.raises(ValidationError, match="starts or ends with whitespace"):
        ApiKey.model_validate({"name": "alice", "key": value})


def test_the_same_key_twice_is_refused_however_it_is_given() -> None:
    specs = (
        {"name": "alice", "key": "same"},
        {"name": "bob", "key_sha256": sha("same")},
        {"name": "carol", "key_env": "KEY_CAROL"},
    )
    with pytest.raises(KeyRingError) as error:
        key_ring(keys(*specs), {"KEY_CAROL": "same"})
    messages = [fault.message for fault in error.value.faults]
    assert messages == [
        "key 'bob' is the same key as 'alice': give each its own key",
        "key 'carol' is the same key as 'alice': give each its own key",
    ]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"name": "a"}, "exactly one of key_env, key_sha256 or key (got none)"),
        ({"name": "a", "key": "k", "key_env": "K"}, "(got key_env and key)"),
        ({"name": "a", "key_sha256": "abc"}, "must be 64 hex digits"),
        ({"name": "a", "key_sha256": "g" * 64}, "must be 64 hex digits"),
        ({"name": "a", "key": ""}, "must not be empty"),
        ({"name": "a", "key": "k", "admni": True}, "Extra inputs"),
        ({"name": "a", "key_sha256": sha("")}, "the SHA-256 of an empty key"),
        ({"name": "a", "key_env": "sk-live-1234"}, "the name of an environment variable"),
        ({"name": "a", "key_env": "1KEY"}, "the name of an environment variable"),
    ],
)
def test_a_key_entry_that_cannot_be_right_is_a_schema_error(
    spec: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace(")", r"\)")):
        ApiKey.model_validate(spec)


def test_two_keys_of_one_name_are_a_schema_error() -> None:
    twice = [{"name": "alice", "key": "one"}, {"name": "alice", "key": "two"}]
    with pytest.raises(ValidationError, match="used more than once: alice"):
        RouterSettings.model_validate({"api_keys": twice})


def test_check_config_says_each_key_problem_where_it_is() -> None:
    config = make_config(
        {"chat": entry("m-chat", 9001), "off": entry("m-off", 9002, enabled=False)},
        api_keys=[
            {"name": "alice", "key_env": "KEY_ALICE", "models": ["m-chat", "m-off", "m-typo"]},
            {"name": "plain", "key": "in-the-file"},
            {"name": "copy", "key_sha256": sha("in-the-file")},
            {"name": "ops", "key_env": "KEY_OPS", "admin": True},
        ],
    )
    found = [(p.severity, p.field, p.message) for p in key_problems(config, {"KEY_OPS": "ops-key"})]
    assert [(severity, field) for severity, field, _ in found] == [
        ("error", "router.api_keys.0.key_env"),
        ("error", "router.api_keys.2.key_sha256"),
        ("warning", "router.api_keys.0.models"),
        ("warning", "router.api_keys.1.key"),
    ]
    assert "named by key_env is not set" in found[0][2]
    assert "same key as 'plain'" in found[1][2]
    assert "'m-off', 'm-typo', which no enabled entry serves" in found[2][2]
    assert "prefer key_env" in found[3][2]
    assert str(key_problems(config, {})[0]).startswith(
        "error: test-models.yaml: field 'router.api_keys.0.key_env': key 'alice'"
    )


def test_a_key_in_the_config_is_not_shown_by_repr_nor_a_dump() -> None:
    config = make_config({"chat": entry("m-chat", 9001)}, api_keys=[{"name": "a", "key": "k-42"}])
    assert "k-42" not in repr(config)
    assert "k-42" not in str(config.file.model_dump())
    assert "k-42" not in config.file.model_dump_json()
    assert key_ring(config.file.router.api_keys, {}) is not None  # the key is still usable
    assert key_at_hand(config.file.router.api_keys, {}) == "k-42"


def test_a_config_without_keys_has_no_key_problems() -> None:
    assert key_problems(make_config({"chat": entry("m-chat", 9001)}), {}) == []


def test_the_command_line_takes_an_admin_key_it_holds_first() -> None:
    held = keys(
        {"name": "hashed-admin", "key_sha256": sha("x"), "admin": True},
        {"name": "user", "key": "user-key"},
        {"name": "admin-unset", "key_env": "UNSET", "admin": True},
        {"name": "admin", "key_env": "ADMIN", "admin": True},
    )
    assert key_at_hand(held, {"ADMIN": "admin-key"}) == "admin-key"
    assert key_at_hand(held, {}) == "user-key"
    assert key_at_hand(held[:1], {}) is None


ALICE = ring({"name": "alice", "key": "alice-key", "models": ["chat"]})


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer alice-key")],
        [(b"authorization", b"bearer  alice-key ")],
        [(b"x-api-key", b"alice-key")],
        # Either may hold it: SDKs set both at times, one with a placeholder.
        [(b"authorization", b"Bearer placeholder"), (b"x-api-key", b"alice-key")],
        [(b"x-api-key", b"-"), (b"authorization", b"Bearer alice-key")],
    ],
)
def test_a_request_carries_its_key_as_a_bearer_token_or_x_api_key(
    headers: list[tuple[bytes, bytes]],
) -> None:
    assert authenticate(ALICE, [(b"content-type", b"application/json"), *headers]).name == "alice"


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ([], "needs an API key"),
        ([(b"authorization", b"Basic YWxpY2Uta2V5")], "needs an API key"),
        ([(b"authorization", b"Bearer wrong")], "not valid"),
        ([(b"x-api-key", b"alice-key-and-more")], "not valid"),
        # Only the first of each: a client cannot try many keys in one request.
        ([(b"x-api-key", b"wrong"), (b"x-api-key", b"alice-key")], "not valid"),
    ],
)
def test_a_request_without_a_valid_key_is_401(
    headers: list[tuple[bytes, bytes]], says: str
) -> None:
    with pytest.raises(InvalidApiKey, match=says) as error:
        authenticate(ALICE, headers)
    assert error.value.status == 401 and error.value.code == "invalid_api_key"
    assert (b"www-authenticate", b"Bearer") in error.value.headers()


def test_a_key_is_held_to_its_models_and_to_admin_endpoints() -> None:
    alice = Grant("alice", frozenset({"chat", "embed"}), admin=False)
    require_model(alice, "chat")
    with pytest.raises(ModelNotAllowed, match="may not use model 'coder'; it may use: chat, embed"):
        require_model(alice, "coder")
    with pytest.raises(AdminRequired, match="'alice' is not an admin key; reading") as error:
        require_admin(alice, "reading")
    assert (error.value.status, error.value.code) == (403, "admin_required")
    require_admin(Grant("ops", None, admin=True), "reading")
    require_model(Grant("ops", None, admin=True), "anything")


def test_credentials_are_forwarded_only_when_the_router_does_not_check_keys() -> None:
    raw = [
        (b"authorization", b"Bearer backend-key"),
        (b"x-api-key", b"k"),
        (b"x-other", b"kept"),
    ]
    assert forwarded_request_headers(raw)[:3] == raw  # as before keys existed
    assert forwarded_request_headers(raw, strip_credentials=True) == [
        (b"x-other", b"kept"),
        (b"accept-encoding", b"identity"),
        (b"content-type", b"application/json"),
    ]


def test_serve_warns_of_a_backend_others_can_reach_around_the_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from slm_server.serving import make_supervisor

    models = {
        "open": entry("m-open", 9001, host="0.0.0.0"),
        "lan": entry("m-lan", 9002, host="192.168.1.20"),
        "local": entry("m-local", 9003, host="127.0.0.1"),
        "v6": entry("m-v6", 9004, host="::1"),
    }
    with caplog.at_level("WARNING", logger="slm_server.serving"):
        make_supervisor(make_config(models, api_keys=[{"name": "a", "key": "k"}]))
    warned = [record.getMessage() for record in caplog.records]
    assert [message.split(":")[0] for message in warned] == ["open", "lan"]
    assert all("around the router's API keys" in message for message in warned)

    caplog.clear()
    with caplog.at_level("WARNING", logger="slm_server.serving"):
        make_supervisor(make_config(models))
    assert [record.getMessage().split(":")[0] for record in caplog.records] == ["open", "lan"]
    assert not any("API keys" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("*", False),
        ("192.168.1.20", False),
        ("my-server.lan", False),  # a name may stand for any interface
    ],
)
def test_which_bind_addresses_keep_a_server_to_this_machine(host: str, local: bool) -> None:
    from slm_server.router.serve import is_loopback

    assert is_loopback(host) is local
