"""Replica choice for entries with several upstreams: pure decisions, no I/O.

Nothing here waits, sends or reads a clock: the router passes in what it sees (each
upstream's requests in flight and whether it is up, the time) and acts on the answers.
How the router uses it, per request for a model with several upstreams:

1. `affinity_key(document, headers)` when the entry has `affinity: session`.
2. `balancer.pick(upstreams, now, key=key)` for the first attempt, nothing tried yet,
   sent and reported as below; `first_may_move_on(retries, fallbacks)` says whether a
   refusal of it could be made good. Most requests are answered by it and need no more.
3. Once an attempt has failed or found no upstream (from the start when
   `first_may_move_on` cannot tell: `retries: 0` with fallbacks): `Attempts(model, retries=...,
   deadline=..., fallbacks_of=...)` for the request, told the upstream already `sent`
   to, and from then on `balancer.pick(upstreams, now, key=key, tried=attempts.tried())`:
   - a `Pick`: `attempts.sent(pick.upstream)`, send the attempt there, then report
     `balancer.succeeded(pick)` on a good head, `balancer.failed(pick, now)` on a
     `Failure` (before the head, or the stream breaking later), or
     `balancer.abandoned(pick)` if the client left first.
   - an `Unavailable`: `attempts.fall_back(can_take, now)` names the fallback model to
     pick from next; None ends the request with the `Unavailable`'s message (503, with
     `Retry-After` from `retry_after_s` when the upstreams are cooling).
4. After a failed attempt, `attempts.retry(failure, answer_started=..., now=now)`
   says whether to go back to step 3; if not, the failure is the client's answer.
5. For a Responses answer, `balancer.bind(response_key(answer_id), pick.upstream)`, so
   the conversation's next turn goes back to where its prompt is cached.
"""

from slm_server.balance.affinity import Sessions, affinity_key, response_key
from slm_server.balance.attempts import Attempts, first_may_move_on
from slm_server.balance.balancer import Balancer, Pick, Unavailable, Why
from slm_server.balance.choice import Upstream, choose
from slm_server.balance.cooldown import Cooldowns, Standing
from slm_server.balance.fallbacks import fallback_order, next_fallback
from slm_server.balance.retry import Failure, failure_of_answer, failure_of_status, may_retry
from slm_server.balance.settings import Affinity, BalanceSettings, Strategy

__all__ = [
    "Affinity",
    "Attempts",
    "BalanceSettings",
    "Balancer",
    "Cooldowns",
    "Failure",
    "Pick",
    "Sessions",
    "Standing",
    "Strategy",
    "Unavailable",
    "Upstream",
    "Why",
    "affinity_key",
    "choose",
    "failure_of_answer",
    "failure_of_status",
    "fallback_order",
    "first_may_move_on",
    "may_retry",
    "next_fallback",
    "response_key",
]
