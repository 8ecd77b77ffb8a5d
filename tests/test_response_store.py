"""The Responses store: bounded in bytes, least recently used out first, copies by value."""

from __future__ import annotations

from typing import Any

import pytest

from slm_server.translate.response_store import DEFAULT_MAX_BYTES, ResponseStore


def turn(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]


def entry_size(messages: list[dict[str, Any]]) -> int:
    """What one entry of ``messages`` counts against the budget, under an id like resp_0."""
    probe = ResponseStore(max_bytes=1 << 30)
    probe.put("resp_p", messages)  # as long as the ids below
    return probe.used_bytes


def stored(store: ResponseStore, count: int) -> list[int]:
    return [n for n in range(count) if f"resp_{n}" in store]


def test_the_default_budget_is_256_mib() -> None:
    assert DEFAULT_MAX_BYTES == ResponseStore().max_bytes == 256 * 1024 * 1024


def test_entries_are_evicted_by_bytes_oldest_first() -> None:
    size = entry_size(turn("a" * 1000))
    store = ResponseStore(max_bytes=3 * size)
    for n in range(3):
        assert store.put(f"resp_{n}", turn(chr(97 + n) * 1000))
    assert store.used_bytes == 3 * size
    store.put("resp_3", turn("d" * 1000))
    assert stored(store, 4) == [1, 2, 3]
    assert store.used_bytes == 3 * size


def test_a_large_entry_evicts_as_many_small_ones_as_it_needs() -> None:
    small = entry_size(turn("s"))
    large = entry_size(turn("L" * 10_000))
    store = ResponseStore(max_bytes=large + 2 * small)
    for n in range(5):
        store.put(f"resp_{n}", turn("s"))
    store.put("resp_5", turn("L" * 10_000))
    assert stored(store, 6) == [3, 4, 5]
    assert store.used_bytes <= store.max_bytes


def test_use_keeps_an_entry_longest() -> None:
    size = entry_size(turn("x"))
    store = ResponseStore(max_bytes=3 * size)
    for n in range(3):
        store.put(f"resp_{n}", turn("x"))
    assert store.get("resp_0") is not None  # now the most recently used
    store.put("resp_3", turn("x"))
    assert stored(store, 4) == [0, 2, 3]
    store.put("resp_2", turn("x"))  # replacing counts as use, and its old bytes go
    store.put("resp_4", turn("x"))
    assert stored(store, 5) == [2, 3, 4]
    assert store.used_bytes == 3 * size


def test_an_entry_larger_than_the_whole_budget_is_not_kept() -> None:
    store = ResponseStore(max_bytes=entry_size(turn("x" * 100)))
    assert store.put("resp_0", turn("x" * 100))
    assert not store.put("resp_1", turn("x" * 101))
    assert "resp_1" not in store
    assert store.get("resp_0") == turn("x" * 100)  # nothing was evicted for it
    # One that grew past the budget under an id already stored: the old turn goes too.
    assert not store.put("resp_0", turn("x" * 500))
    assert "resp_0" not in store
    assert store.used_bytes == 0


def test_what_comes_out_is_the_callers_to_change() -> None:
    store = ResponseStore()
    messages = turn("hi")
    store.put("resp_1", messages)
    messages[0]["content"] = "changed after put"
    got = store.get("resp_1")
    assert got == turn("hi")
    assert got is not None
    got[0]["content"] = "changed after get"
    got.append({"role": "user", "content": "more"})
    assert store.get("resp_1") == turn("hi")


def test_a_budget_must_hold_something() -> None:
    with pytest.raises(ValueError):
        ResponseStore(max_bytes=0)


def test_a_conversation_is_found_only_by_its_owner() -> None:
    store = ResponseStore()
    assert store.put("resp_1", turn("alice's"), owner="alice")
    assert store.put("resp_1", turn("bob's"), owner="bob")  # the same id: kept apart
    assert store.get("resp_1", "alice") == turn("alice's")
    assert store.get("resp_1", "bob") == turn("bob's")
    assert store.get("resp_1", "carol") is None and store.get("resp_1") is None
