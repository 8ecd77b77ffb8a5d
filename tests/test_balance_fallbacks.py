"""Fallback order and one request's attempts: no loops, no retry past the deadline."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from slm_server.balance import (
    Attempts,
    Failure,
    fallback_order,
    first_may_move_on,
    next_fallback,
)


def test_own_fallbacks_first_in_order_then_theirs() -> None:
    fallbacks_of = {"a": ("b", "c"), "b": ("d",), "c": ("e",), "d": (), "e": ()}
    assert fallback_order("a", fallbacks_of) == ("b", "c", "d", "e")
    assert fallback_order("b", fallbacks_of) == ("d",)
    assert fallback_order("d", fallbacks_of) == ()


def test_fallbacks_that_name_each_other_do_not_loop() -> None:
    assert fallback_order("a", {"a": ("b",), "b": ("a",)}) == ("b",)
    assert fallback_order("a", {"a": ("a", "b"), "b": ("b", "a")}) == ("b",)
    assert fallback_order("a", {"a": ("b", "c"), "b": ("c",), "c": ("b", "a")}) == ("b", "c")


def test_ids_that_are_not_configured_are_skipped() -> None:
    assert fallback_order("a", {"a": ("gone", "b"), "b": ("also-gone",)}) == ("b",)
    assert fallback_order("unknown", {"a": ()}) == ()


def test_the_next_fallback_is_the_first_untried_that_can_take_it() -> None:
    order = ("b", "c", "d")
    assert next_fallback(order, {"a"}, lambda m: True) == "b"
    assert next_fallback(order, {"a", "b"}, lambda m: True) == "c"
    assert next_fallback(order, {"a"}, lambda m: m == "d") == "d"  # b and c are full or down
    assert next_fallback(order, {"a"}, lambda m: False) is None
    assert next_fallback(order, {"a", "b", "c", "d"}, lambda m: True) is None


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from("abcdef"), st.lists(st.sampled_from("abcdefxyz"), max_size=5), min_size=1
    )
)
def test_every_fallback_order_is_finite_and_each_model_appears_once(
    graph: dict[str, list[str]],
) -> None:
    for model in graph:
        order = fallback_order(model, graph)
        assert model not in order
        assert len(set(order)) == len(order)
        assert set(order) <= set(graph)
        assert order[: len(set(graph[model]) & (set(graph) - {model}))] == tuple(
            dict.fromkeys(m for m in graph[model] if m in graph and m != model)
        )


# one request's attempts


def test_a_request_tries_each_upstream_once_per_model() -> None:
    attempts = Attempts("a", retries=2, deadline=60.0, fallbacks_of={"a": ("b",), "b": ()})
    attempts.sent("r0")
    attempts.sent("r1")
    assert attempts.tried() == {"r0", "r1"}
    assert attempts.fall_back(lambda m: True, now=1.0) == "b"
    assert attempts.model == "b" and attempts.tried() == frozenset()  # b's upstreams are fresh
    assert attempts.models_tried == ["a", "b"]


def test_retries_are_spent_one_by_one_and_only_before_the_answer() -> None:
    attempts = Attempts("a", retries=2, deadline=60.0, fallbacks_of={"a": ()})
    assert not attempts.retry(Failure.RESET, answer_started=True, now=1.0)
    assert not attempts.retry(Failure.BROKEN, answer_started=False, now=1.0)
    assert attempts.retries_left == 2  # a refusal spends nothing
    assert attempts.retry(Failure.BAD_GATEWAY, answer_started=False, now=1.0)
    assert attempts.retry(Failure.HEAD_TIMEOUT, answer_started=False, now=2.0)
    assert not attempts.retry(Failure.REFUSED, answer_started=False, now=3.0)
    assert attempts.retries_left == 0


def test_no_retry_and_no_fallback_once_the_deadline_has_passed() -> None:
    attempts = Attempts("a", retries=3, deadline=10.0, fallbacks_of={"a": ("b",), "b": ()})
    assert not attempts.retry(Failure.REFUSED, answer_started=False, now=10.0)
    assert attempts.fall_back(lambda m: True, now=10.0) is None
    assert attempts.model == "a"


def test_falling_back_spends_no_retry_and_a_loop_ends() -> None:
    attempts = Attempts("a", retries=1, deadline=60.0, fallbacks_of={"a": ("b",), "b": ("a",)})
    assert attempts.fall_back(lambda m: True, now=1.0) == "b"
    assert attempts.retries_left == 1
    assert attempts.fall_back(lambda m: True, now=1.0) is None  # never back to a


def test_retries_zero_means_one_attempt_only() -> None:
    attempts = Attempts("a", retries=0, deadline=60.0, fallbacks_of={"a": ()})
    assert not attempts.retry(Failure.REFUSED, answer_started=False, now=0.0)


def test_a_request_may_move_on_while_a_retry_or_an_untried_fallback_remains() -> None:
    attempts = Attempts("a", retries=1, deadline=60.0, fallbacks_of={"a": ("b",), "b": ()})
    assert attempts.may_move_on()
    assert attempts.retry(Failure.UNAVAILABLE, answer_started=False, now=1.0)
    assert attempts.may_move_on()  # no retry left, but b is still to try
    assert attempts.fall_back(lambda m: True, now=1.0) == "b"
    assert not attempts.may_move_on()
    alone = Attempts("a", retries=0, deadline=60.0, fallbacks_of={"a": ()})
    assert not alone.may_move_on()


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    retries=st.integers(0, 2),
    graph=st.dictionaries(
        st.sampled_from("abc"), st.lists(st.sampled_from("abcxy"), max_size=3), min_size=1
    ),
)
def test_the_first_attempt_may_move_on_as_its_attempts_would_say(
    retries: int, graph: dict[str, list[str]]
) -> None:
    fallbacks_of = {model: tuple(fallbacks) for model, fallbacks in graph.items()}
    for model, fallbacks in fallbacks_of.items():
        said = first_may_move_on(retries, fallbacks)
        attempts = Attempts(model, retries=retries, deadline=60.0, fallbacks_of=fallbacks_of)
        assert said is None or said == attempts.may_move_on()
        # Unsure only when it turns on the fallbacks: no retry, some written.
        assert (said is None) == (retries == 0 and bool(fallbacks))
