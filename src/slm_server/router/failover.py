"""One request for a model behind a balancer: pick an upstream, send, and on a failure
before any byte of the answer went out, send again elsewhere or to a fallback model.

The decisions are balance/'s (which upstream, whether to retry, which fallback); this
module acts on them and reports each pick's outcome back. An attempt is the app's own
way of serving a request on one backend (slot, load, forward or bridge), given the
statuses it must not relay while another upstream may still answer.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from slm_server.auth import Grant
from slm_server.balance import (
    Attempts,
    Balancer,
    Failure,
    Pick,
    Unavailable,
    Why,
    affinity_key,
    failure_of_answer,
    first_may_move_on,
    response_key,
)
from slm_server.router.asgi import Body, Headers, Scope, send_response
from slm_server.router.backend import UPSTREAM_HEADER, Backend
from slm_server.router.errors import (
    BackendTimeout,
    BackendUnavailable,
    InsufficientMemory,
    QueueFull,
    RouterError,
    UpstreamRefusal,
)
from slm_server.router.forms import with_form_model
from slm_server.router.lifetime import RequestLifetime
from slm_server.router.metrics import RequestRecord
from slm_server.router.proxy import UNAVAILABLE_RETRY_AFTER_S
from slm_server.router.replicas import ReplicaGroup
from slm_server.router.request_json import parse_object
from slm_server.router.routing import RoutingTable
from slm_server.supervisor import BackendProcess

# Statuses of an upstream's answer that another upstream may do better than.
RETRY_STATUSES = frozenset({502, 503, 429})
NO_REFUSALS: frozenset[int] = frozenset()

RESPONSES = "/v1/responses"
ATTEMPTS_HEADER = b"x-slm-attempts"
ANSWERED = "answered"  # the attempts counter's result for an answer (else a Failure's value)

# The app's own way of serving a request on one backend, given once for all requests (no
# closure made per request): the scope, the record, the path, the model id it serves the
# request as, the body, whether it is a form, the backend, the lifetime, statuses not to relay.
Attempt = Callable[
    [Scope, RequestRecord, str, str, Body, bool, Backend, RequestLifetime, frozenset[int]],
    Awaitable[None],
]


@dataclass(slots=True)  # not frozen: made per request, and a frozen one is slower to make
class BalancedRequest:
    model: str  # as the client named it
    path: str
    body: Body
    scope: Scope  # the client's request, as ASGI gives it
    form_type: str | None  # the content type of a form upload; None for JSON
    grant: Grant | None = None  # the client's API key's (None: no keys are configured)


async def serve_balanced(
    group: ReplicaGroup,
    request: BalancedRequest,
    sent: RequestRecord,
    lifetime: RequestLifetime,
    table: Callable[[], RoutingTable],
    processes: Mapping[str, BackendProcess],
    attempt: Attempt,
) -> None:
    """Serve ``request`` on one of ``group``'s upstreams, or a fallback model's, within
    the request's one deadline. Raises the last failure when none could answer."""
    loop = lifetime.loop  # not asyncio.get_running_loop(): a system call on Python 3.11
    key = None
    settings = group.settings
    if settings.affinity is not None:
        document = None if request.form_type is not None else parse_object(request.body)
        key = affinity_key(document, request.scope["headers"])
    # Most requests are answered by their first attempt, which needs nothing of what a
    # second one would: the request's Attempts (and the fallback table it reads) are made
    # once the first attempt fails or finds no upstream, unless the settings alone cannot
    # tell whether a refusal of the first attempt could be made good.
    attempts: Attempts | None = None
    may_move_on = first_may_move_on(settings.retries, settings.fallbacks)
    if may_move_on is None:
        attempts = _attempts_of(request, settings.retries, lifetime, table)
    else:
        refusals = RETRY_STATUSES if may_move_on else NO_REFUSALS
    body = request.body
    scope, path, form = request.scope, request.path, request.form_type is not None
    model = request.model  # the model the current attempt is for
    last: RouterError | None = None
    count = 0  # attempts sent upstream
    went_to: tuple[bytes, bytes] | None = None  # the upstream header of the last of them
    while True:
        now = loop.time()
        upstreams = group.upstreams(processes, now)
        if attempts is None:
            choice = group.balancer.pick(upstreams, now, key=key)
        else:
            choice = group.balancer.pick(upstreams, now, key=key, tried=attempts.tried())
        if isinstance(choice, Unavailable):
            final = last if last is not None else unavailable(choice)
            if attempts is None:
                attempts = _attempts_of(request, settings.retries, lifetime, table)
        else:
            backend = group.replicas_by_role[choice.upstream]
            if attempts is not None:
                attempts.sent(choice.upstream)
                refusals = RETRY_STATUSES if attempts.may_move_on() else NO_REFUSALS
            if count:  # an earlier attempt went upstream: drop its header, say how many now
                _set_headers(sent.answer_headers, count + 1, None)
            lifetime.upstream_asked = False
            if choice.probe:  # its good head brings the upstream back, however long the answer
                sent.on_start = _on_head(group.balancer, choice)
            try:
                await attempt(scope, sent, path, model, body, form, backend, lifetime, refusals)
            except RouterError as error:
                if attempts is None:  # the first attempt failed: what comes next needs it
                    attempts = _attempts_of(request, settings.retries, lifetime, table)
                    attempts.sent(choice.upstream)
                if not lifetime.upstream_asked:
                    # Nothing went upstream: a full queue, no memory to load it, a wait for
                    # a slot or a load that ran out, the router's own refusal, or a replica a
                    # reload removed. Nothing is learnt of the upstream, no retry is spent.
                    group.balancer.abandoned(choice)
                    _set_headers(sent.answer_headers, count, went_to)
                    moves_on = isinstance(
                        error, (QueueFull, InsufficientMemory, BackendUnavailable)
                    )
                    if not (moves_on or error.failure is not None) or sent.start is not None:
                        raise
                    last = error
                    continue
                count += 1
                went_to = _upstream_of(sent.answer_headers)
                if error.failure is None or sent.start is not None:
                    _outcome(group, choice, backend, error, loop.time(), sent.start is not None)
                    raise
                group.balancer.failed(choice, loop.time())
                _count(backend, error.failure.value)
                last = final = error
                now = loop.time()
                if attempts.retry(error.failure, answer_started=False, now=now):
                    continue
            except BaseException:  # the client left, a shutdown, or a bug: nothing learnt
                group.balancer.abandoned(choice)
                raise
            else:
                _answered(group, choice, backend, request, sent, loop)
                return
            finally:
                sent.on_start = None
        # No upstream of this model can take the request, or its retries ran out.
        fallback = _fall_back(attempts, table(), request, processes, now)
        if fallback is None:
            await _give_up(final, sent, lifetime)
            return
        group = fallback
        model = attempts.model
        body = _for_model(request, body, model)
        lifetime.for_whom = group


def _attempts_of(
    request: BalancedRequest,
    retries: int,
    lifetime: RequestLifetime,
    table: Callable[[], RoutingTable],
) -> Attempts:
    """The request's Attempts: ``retries`` are the asked model's, and hold for the whole
    request; the fallbacks are the routing table's of the day."""
    return Attempts(
        request.model,
        retries=retries,
        deadline=lifetime.deadline,
        fallbacks_of=table().fallbacks_of,
    )


def _answered(
    group: ReplicaGroup,
    choice: Pick,
    backend: Backend,
    request: BalancedRequest,
    sent: RequestRecord,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Report an attempt whose answer went out, whole or not (the clock is read only for
    a failure: a success needs no time)."""
    balancer = group.balancer
    start = sent.start
    failure = None if start is None else failure_of_answer(start["status"])
    if failure is not None:  # its own 502, 503 or 429 with no retry left, or another 5xx
        balancer.failed(choice, loop.time())
        _count(backend, failure.value)
    elif sent.ended_in_error:  # a stream that broke after its start
        balancer.failed(choice, loop.time())
        _count(backend, Failure.BROKEN.value)
    else:  # a probe's success was reported as its head went out already: no matter
        balancer.succeeded(choice)
        counts = backend.attempts
        counts[ANSWERED] = counts.get(ANSWERED, 0) + 1  # _count's, without its call
        if balancer.settings.affinity is not None and request.path == RESPONSES:
            # The conversation's next turn names this answer: send it to the same place.
            answer_id = response_id_of(sent.first_piece)
            if answer_id is not None:
                balancer.bind(response_key(answer_id), choice.upstream)


def _on_head(balancer: Balancer, choice: Pick) -> Callable[[int], None]:
    """What to do as a probe's answer head goes out with a status: a good answer brings
    its upstream back then, so a probe that is a long stream does not keep it out for the
    stream's length. Only for probes: an upstream in rotation is told its success when its
    answer has ended, so that a stream broken after its head counts as its failure."""

    def head(status: int) -> None:
        if failure_of_answer(status) is None:
            balancer.succeeded(choice)

    return head


def _outcome(
    group: ReplicaGroup,
    choice: Pick,
    backend: Backend,
    error: RouterError,
    now: float,
    answer_started: bool,
) -> None:
    """Report an attempt, sent upstream, that ended in an error no retry can mend."""
    if isinstance(error, BackendTimeout):  # it hung: before its head, or part-way
        failure: Failure | None = Failure.BROKEN if answer_started else Failure.HEAD_TIMEOUT
    elif error.status in (502, 503):
        failure = Failure.BROKEN  # it broke: an answer no client can use
    else:
        failure = failure_of_answer(error.status)  # another 5xx, not in OpenAI's form
    if failure is not None:
        group.balancer.failed(choice, now)  # others should be tried first
        _count(backend, failure.value)
    else:  # the request's own fault (a 400), or the router's
        group.balancer.succeeded(choice)
        _count(backend, ANSWERED)


async def _give_up(error: RouterError, sent: RequestRecord, lifetime: RequestLifetime) -> None:
    """End the request with ``error``, the last attempt's: an upstream's own refusal goes
    out as the upstream gave it, as it would have with no retry or fallback configured."""
    if not isinstance(error, UpstreamRefusal) or error.answer is None:
        raise error
    headers, body = error.answer
    await send_response(sent.send, error.status, body, [*headers, *lifetime.stopwatch.headers()])


def _fall_back(
    attempts: Attempts,
    table: RoutingTable,
    request: BalancedRequest,
    processes: Mapping[str, BackendProcess],
    now: float,
) -> ReplicaGroup | None:
    """The next fallback model's group that can take the request now, if any: one the
    client's key may use (a fallback is no way around a key's models)."""
    path, grant = request.path, request.grant

    def can_take(model: str) -> bool:
        if grant is not None and not grant.allows(model):
            return False
        try:
            return table.balanced(model, path).can_take(processes, now)
        except RouterError:  # a fallback of another model type, say
            return False

    model = attempts.fall_back(can_take, now)
    return None if model is None else table.balanced(model, path)


def _for_model(request: BalancedRequest, body: Body, model: str) -> Body:
    """The request's body, naming ``model`` (a fallback) so that its answer names it too."""
    if request.form_type is not None:
        return with_form_model(request.form_type, body, model)
    return json.dumps({**parse_object(body), "model": model}).encode()


def _set_headers(
    answer_headers: Headers | None, count: int, upstream: tuple[bytes, bytes] | None
) -> None:
    """Say which ``upstream`` (None: the next attempt adds its own) and, past one, how many
    attempts went upstream: an attempt that sent nothing (a full queue) is none of them."""
    if answer_headers is None:
        return
    answer_headers[:] = [
        (name, value)
        for name, value in answer_headers
        if name != UPSTREAM_HEADER and name != ATTEMPTS_HEADER
    ]
    if upstream is not None:
        answer_headers.append(upstream)
    if count > 1:
        answer_headers.append((ATTEMPTS_HEADER, str(count).encode()))


def _upstream_of(answer_headers: Headers | None) -> tuple[bytes, bytes] | None:
    for header in answer_headers or ():
        if header[0] == UPSTREAM_HEADER:
            return header
    return None


def _count(backend: Backend, result: str) -> None:
    backend.attempts[result] = backend.attempts.get(result, 0) + 1


def unavailable(choice: Unavailable) -> BackendUnavailable:
    retry_after = UNAVAILABLE_RETRY_AFTER_S
    if choice.why is Why.ALL_COOLING and choice.retry_after_s is not None:
        retry_after = max(1, math.ceil(choice.retry_after_s))
    return BackendUnavailable(choice.message, retry_after=retry_after)


def response_id_of(first_piece: bytes) -> str | None:
    """The id of a Responses answer from its first body piece: the whole JSON answer, or a
    stream's first event (``response.created``, holding the response). None when the
    piece says none (an error, or an event cut across pieces)."""
    text = first_piece.strip()
    if text.startswith(b"event:") or text.startswith(b"data:"):
        for line in text.splitlines():
            if line.startswith(b"data:"):
                text = line[5:].strip()
                break
    try:
        document = json.loads(text)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    response = document.get("response", document)  # an event holds it, a whole answer is it
    answer_id = response.get("id") if isinstance(response, dict) else None
    return answer_id if isinstance(answer_id, str) and answer_id.startswith("resp") else None
