"""Session keys taken from a request, and the bounded table that remembers them."""

from __future__ import annotations

import pytest

from slm_server.balance import Sessions, affinity_key, response_key

HEADER = (b"x-session-id", b"abc")


@pytest.mark.parametrize(
    ("document", "headers", "key"),
    [
        ({"user": "u1"}, [], "user:u1"),
        ({"previous_response_id": "resp_1"}, [], "response:resp_1"),
        ({"user": "u1", "previous_response_id": "resp_1"}, [], "response:resp_1"),
        ({"user": "u1", "previous_response_id": "resp_1"}, [HEADER], "session:abc"),
        (None, [HEADER], "session:abc"),
        (None, [(b"content-type", b"application/json"), HEADER], "session:abc"),
        (None, [], None),
        ({}, [], None),
        ({"user": ""}, [], None),
        ({"user": 7}, [], None),  # not a string: no key (validation reports it)
        ({"user": None, "previous_response_id": ["x"]}, [], None),
        ({"user": "u1"}, [(b"x-session-id", b"")], "user:u1"),  # empty header: no key
        ({"user": "u1"}, [(b"x-session", b"abc")], "user:u1"),  # another header
    ],
)
def test_the_key_comes_from_the_header_then_the_conversation_then_the_user(
    document: dict[str, object] | None, headers: list[tuple[bytes, bytes]], key: str | None
) -> None:
    assert affinity_key(document, headers) == key


def test_equal_values_of_different_kinds_are_different_keys() -> None:
    as_user = affinity_key({"user": "x"}, [])
    as_session = affinity_key(None, [(b"x-session-id", b"x")])
    assert as_user != as_session


def test_a_long_value_is_kept_as_a_fixed_size_digest() -> None:
    huge = affinity_key({"user": "u" * 100_000}, [])
    other = affinity_key({"user": "u" * 99_999 + "v"}, [])
    assert huge is not None and other is not None
    assert len(huge) < 100 and huge.startswith("user:sha256:") and huge != other
    assert affinity_key({"user": "u" * 128}, []) == "user:" + "u" * 128  # kept as is


def test_a_header_that_is_not_utf8_still_gives_a_key() -> None:
    assert affinity_key(None, [(b"x-session-id", b"\xff\xfe")]) == "session:\xff\xfe"


def test_an_answer_id_binds_the_key_its_next_turn_will_carry() -> None:
    next_turn = affinity_key({"previous_response_id": "resp_9"}, [])
    assert response_key("resp_9") == next_turn
    long_id = "r" * 500
    assert response_key(long_id) == affinity_key({"previous_response_id": long_id}, [])


def test_sessions_keep_at_most_their_limit_dropping_the_least_recently_used() -> None:
    sessions = Sessions(limit=3)
    for key in ("a", "b", "c"):
        sessions.bind(key, f"up-{key}")
    assert sessions.get("a") == "up-a"  # a is now the most recently used
    sessions.bind("d", "up-d")
    assert len(sessions) == 3
    assert sessions.get("b") is None  # b was the least recently used
    assert [sessions.get(k) for k in ("a", "c", "d")] == ["up-a", "up-c", "up-d"]


def test_rebinding_a_key_moves_it_and_keeps_one_entry() -> None:
    sessions = Sessions(limit=2)
    sessions.bind("a", "r0")
    sessions.bind("b", "r1")
    sessions.bind("a", "r2")
    sessions.bind("c", "r3")  # b is dropped: a was used more recently
    assert len(sessions) == 2 and sessions.get("a") == "r2" and sessions.get("b") is None


def test_sessions_need_room_for_one() -> None:
    with pytest.raises(ValueError, match="limit"):
        Sessions(limit=0)
