"""The retry rule as a table: only before anything reached the client; retries and time left."""

from __future__ import annotations

import itertools

import pytest

from slm_server.balance import Failure, failure_of_answer, failure_of_status, may_retry

BEFORE_ANSWER = [
    Failure.REFUSED,
    Failure.CONNECT_TIMEOUT,
    Failure.RESET,
    Failure.HEAD_TIMEOUT,
    Failure.BAD_GATEWAY,
    Failure.UNAVAILABLE,
    Failure.TOO_MANY_REQUESTS,
]


@pytest.mark.parametrize(
    ("failure", "answer_started", "retries_left", "time_left_s"),
    list(itertools.product(list(Failure), [False, True], [0, 1, 2], [-1.0, 0.0, 0.001, 30.0])),
)
def test_the_whole_table(
    failure: Failure, answer_started: bool, retries_left: int, time_left_s: float
) -> None:
    expected = (
        failure in BEFORE_ANSWER and not answer_started and retries_left > 0 and time_left_s > 0
    )
    allowed = may_retry(
        failure, answer_started=answer_started, retries_left=retries_left, time_left_s=time_left_s
    )
    assert allowed is expected


def test_every_failure_is_in_the_table() -> None:
    assert set(Failure) == {*BEFORE_ANSWER, Failure.BROKEN, Failure.SERVER_ERROR}


def test_a_broken_stream_is_never_retried_even_if_nothing_was_relayed() -> None:
    assert not may_retry(Failure.BROKEN, answer_started=False, retries_left=5, time_left_s=60)


def test_a_refused_connection_is_retried_while_retries_and_time_remain() -> None:
    assert may_retry(Failure.REFUSED, answer_started=False, retries_left=1, time_left_s=60)


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (502, Failure.BAD_GATEWAY),
        (503, Failure.UNAVAILABLE),
        (429, Failure.TOO_MANY_REQUESTS),
        (200, None),
        (400, None),  # the request's own fault: another upstream would say the same
        (404, None),
        (500, None),  # the upstream's answer: passed on, not retried
        (504, None),
    ],
)
def test_which_response_heads_are_failures(status: int, failure: Failure | None) -> None:
    assert failure_of_status(status) is failure


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (502, Failure.BAD_GATEWAY),
        (503, Failure.UNAVAILABLE),
        (429, Failure.TOO_MANY_REQUESTS),
        (500, Failure.SERVER_ERROR),  # passed on as the answer, but counted against it
        (504, Failure.SERVER_ERROR),
        (200, None),
        (400, None),
        (404, None),
    ],
)
def test_which_answers_count_against_their_upstream(status: int, failure: Failure | None) -> None:
    assert failure_of_answer(status) is failure


def test_a_server_error_is_never_retried() -> None:
    assert not may_retry(Failure.SERVER_ERROR, answer_started=False, retries_left=5, time_left_s=60)
