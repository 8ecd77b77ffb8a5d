"""When an attempt that failed may be made again elsewhere without spoiling the answer.

A retry is safe only while nothing of the answer has reached the client: the client
then sees one whole answer from wherever it came. Once a byte has gone out, another
upstream's answer would be appended to a different one's start, so the attempt's
failure is the client's (a stream ends with an error event).
"""

from __future__ import annotations

from enum import Enum


class Failure(Enum):
    REFUSED = "refused"  # the connection was refused
    RESET = "reset"  # the connection was reset or closed before any of the answer went out
    CONNECT_TIMEOUT = "connect_timeout"  # no connection made in time (a machine that is off)
    HEAD_TIMEOUT = "head_timeout"  # no response head in time
    BAD_GATEWAY = "502"
    UNAVAILABLE = "503"
    TOO_MANY_REQUESTS = "429"
    BROKEN = "broken"  # the answer had started and ended early
    SERVER_ERROR = "server_error"  # an answer of its own, a 5xx other than 502 and 503

    @property
    def before_answer(self) -> bool:
        """Whether the upstream gave no answer of its own: one elsewhere may replace it."""
        return self is not Failure.BROKEN and self is not Failure.SERVER_ERROR


_BY_STATUS = {
    502: Failure.BAD_GATEWAY,
    503: Failure.UNAVAILABLE,
    429: Failure.TOO_MANY_REQUESTS,
}


def failure_of_status(status: int) -> Failure | None:
    """The failure a response head with `status` is, or None when it is the upstream's
    answer to pass on (2xx, and errors that another upstream would repeat, such as 400)."""
    return _BY_STATUS.get(status)


def failure_of_answer(status: int) -> Failure | None:
    """Whether an answer relayed with `status` counts against its upstream: a refusal (as
    `failure_of_status`), or any other 5xx, which the client gets as the upstream's answer
    (another upstream might do better, but a server error is no sign that nothing was done:
    the request is not sent again) yet says the upstream is failing. None: it answered."""
    failure = _BY_STATUS.get(status)
    if failure is None and status >= 500:
        return Failure.SERVER_ERROR
    return failure


def may_retry(
    failure: Failure, *, answer_started: bool, retries_left: int, time_left_s: float
) -> bool:
    """Whether the request may be sent again, to another upstream or a fallback.

    `answer_started`: any byte of the answer (head included) has been sent to the client.
    `time_left_s`: until the request's deadline; retries stay inside it.
    """
    return failure.before_answer and not answer_started and retries_left > 0 and time_left_s > 0
