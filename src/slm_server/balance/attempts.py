"""One request's way through upstreams and fallback models, inside its one deadline."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from slm_server.balance.fallbacks import fallback_order, next_fallback
from slm_server.balance.retry import Failure, may_retry

_NONE: frozenset[str] = frozenset()


class Attempts:
    """What a request has tried so far, and whether it may try again.

    `retries` and `deadline` are those of the model the client asked for, and hold for
    the whole request: a retry after a failed attempt may go to a fallback model, and a
    request never outlives its deadline however many upstreams and fallbacks it passes
    through. Moving to a fallback because no upstream could take the request spends no
    retry: nothing was sent.

    Made once a request's first attempt has failed or found no upstream (most are
    answered by their first attempt, which needs none of this), and what only a
    fallback needs is worked out when one is sought.
    """

    __slots__ = (
        "_fallbacks",
        "_fallbacks_of",
        "_models_tried",
        "_tried",
        "asked",
        "deadline",
        "model",
        "retries_left",
    )

    def __init__(
        self,
        model: str,
        *,
        retries: int,
        deadline: float,
        fallbacks_of: Mapping[str, Sequence[str]],
    ) -> None:
        self.asked = model  # the model the client asked for
        self.model = model  # the model the current attempt is for
        self.retries_left = retries
        self.deadline = deadline
        self._fallbacks_of = fallbacks_of
        self._fallbacks: tuple[str, ...] | None = None
        self._models_tried: list[str] | None = None
        self._tried: set[str] | None = None  # the current model's upstreams sent to

    @property
    def fallbacks(self) -> tuple[str, ...]:
        """Every model this request may fall back to, in order (see `fallback_order`)."""
        if self._fallbacks is None:
            self._fallbacks = fallback_order(self.asked, self._fallbacks_of)
        return self._fallbacks

    @property
    def models_tried(self) -> list[str]:
        """The model asked for, then each fallback moved to, in order."""
        if self._models_tried is None:
            self._models_tried = [self.asked]
        return self._models_tried

    def tried(self) -> frozenset[str]:
        """The upstreams of the current model this request has been sent to."""
        return _NONE if not self._tried else frozenset(self._tried)

    def sent(self, upstream: str) -> None:
        if self._tried is None:
            self._tried = {upstream}
        else:
            self._tried.add(upstream)

    def retry(self, failure: Failure, *, answer_started: bool, now: float) -> bool:
        """Whether to make another attempt after `failure`; if so, one retry is spent."""
        if not may_retry(
            failure,
            answer_started=answer_started,
            retries_left=self.retries_left,
            time_left_s=self.deadline - now,
        ):
            return False
        self.retries_left -= 1
        return True

    def may_move_on(self) -> bool:
        """Whether a refusal of the next attempt could still be made good: a retry is left,
        or a fallback model not tried yet (the upstream's refusal then goes to the client
        only when none of them can take the request)."""
        return self.retries_left > 0 or any(m not in self.models_tried for m in self.fallbacks)

    def fall_back(self, can_take: Callable[[str], bool], now: float) -> str | None:
        """Move on to the next fallback model that can take the request (None: there is
        none, or no time is left). The current model's upstreams are then its."""
        if now >= self.deadline:
            return None
        model = next_fallback(self.fallbacks, self.models_tried, can_take)
        if model is not None:
            self.models_tried.append(model)
            self.model = model
            self._tried = None
        return model


def first_may_move_on(retries: int, fallbacks: Sequence[str]) -> bool | None:
    """`Attempts.may_move_on` for a request's first attempt, from the asked model's
    settings alone, with no Attempts made: True with a retry configured, False with no
    fallback written either; None when it turns on which fallbacks are configured (the
    request's Attempts says)."""
    if retries > 0:
        return True
    return None if fallbacks else False
