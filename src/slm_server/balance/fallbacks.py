"""Fallback models: where a request goes when none of its model's upstreams can take it."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence


def fallback_order(model: str, fallbacks_of: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """Every model a request for `model` may fall back to, in the order to try them.

    `fallbacks_of` has every configured model id (with `()` for none). The model's own
    fallbacks come first, in the order written, then theirs (breadth first). Each model
    appears once and `model` never, so fallbacks that name each other (a -> b -> a)
    cannot loop; ids that are not configured are skipped.
    """
    order: list[str] = []
    seen = {model}
    waiting = deque(fallbacks_of.get(model, ()))
    while waiting:
        candidate = waiting.popleft()
        if candidate in seen or candidate not in fallbacks_of:
            continue
        seen.add(candidate)
        order.append(candidate)
        waiting.extend(fallbacks_of[candidate])
    return tuple(order)


def next_fallback(
    order: Sequence[str], tried: Collection[str], can_take: Callable[[str], bool]
) -> str | None:
    """The first model in `order` not yet `tried` by this request whose upstreams can take
    it now (`can_take`: some upstream up and in rotation, room in its queue, memory to
    load it); None when there is none."""
    return next((m for m in order if m not in tried and can_take(m)), None)
