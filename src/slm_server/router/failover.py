"""One request for a model behind a balancer: pick an upstream, send, and on a failure
before any byte of the answer went out, send again elsewhere or to a fallback model.

The decisions are balance/'s (which upstream, whether to retry, which fallback); this
module acts on them and reports each pick's outcome back. An attempt is the app's own
way of serving a request on one backend (slot, load, forward or bridge), given the
statuses it must not relay while another upstream may still answer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping

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


class Balanced:
    """One request for a model behind a balancer, on its way through the model's upstreams
    and then its fallbacks', within the request's one deadline.

    Its first attempt is the caller's to send: most requests are answered by it, and their
    answers' way then runs through no coroutine of this module. `pick` says where it goes,
    then `answered` or `failed` says how it went; `go_on` makes the next attempts once the
    first has failed or found no upstream, and ends the request with the last failure when
    none could answer.
    """

    __slots__ = (
        "_count",
        "_final",
        "_last",
        "_loop",
        "_now",
        "_pick_next",
        "_processes",
        "_retries",
        "_table",
        "_went_to",
        "attempts",
        "backend",
        "body",
        "choice",
        "form_type",
        "grant",
        "group",
        "key",
        "lifetime",
        "model",
        "path",
        "refusals",
        "scope",
        "sent",
    )

    choice: Pick  # the current attempt's (set by `pick` before it is read)
    backend: Backend  # its upstream's

    def __init__(
        self,
        group: ReplicaGroup,
        model: str,
        path: str,
        body: Body,
        scope: Scope,
        form_type: str | None,
        grant: Grant | None,
        sent: RequestRecord,
        lifetime: RequestLifetime,
        table: Callable[[], RoutingTable],
        processes: Mapping[str, BackendProcess],
    ) -> None:
        """``model``: as the client named it; ``scope``: the client's request, as ASGI gives
        it; ``form_type``: the content type of a form upload (None for JSON); ``grant``: the
        client's API key's (None: no keys are configured); ``table``: the routing table of
        the day (a reload replaces it)."""
        settings = group.settings
        key = None
        if settings.affinity is not None:
            document = None if form_type is not None else parse_object(body)
            key = affinity_key(document, scope["headers"])
        self.group = group
        self.model = model  # the model the current attempt is for
        self.path = path
        self.body = body  # naming that model
        self.scope = scope
        self.form_type = form_type
        self.grant = grant
        self.sent = sent
        self.lifetime = lifetime
        self._table = table
        self._processes = processes
        self._loop = lifetime.loop  # not asyncio.get_running_loop(): a system call on 3.11
        self.key = key
        self._retries = settings.retries  # as the request found them: a reload may change them
        # The request's Attempts (and the fallback table they read) are made once the first
        # attempt fails or finds no upstream: most requests need neither. Unless the
        # settings alone cannot tell whether a refusal of the first could be made good.
        self.attempts: Attempts | None = None
        self.refusals = NO_REFUSALS  # the statuses the current attempt is not to relay
        may_move_on = first_may_move_on(settings.retries, settings.fallbacks)
        if may_move_on is None:
            self.attempts = self._attempts_of()
        elif may_move_on:
            self.refusals = RETRY_STATUSES
        self._last: RouterError | None = None  # the last attempt's failure
        self._final: RouterError | None = None  # what ends the request if nothing answers
        self._count = 0  # attempts sent upstream
        self._went_to: tuple[bytes, bytes] | None = None  # the upstream header of the last
        self._now = 0.0  # when the last pick was made or the last failure seen
        self._pick_next = True  # False: the current model has no upstream left to try

    def pick(self) -> Backend | None:
        """The upstream the next attempt goes to, with its `refusals`; None when none of
        the current model's can take it (a fallback model may, see `go_on`)."""
        group = self.group
        self._now = now = self._loop.time()
        upstreams = group.upstreams(self._processes, now)
        attempts = self.attempts
        if attempts is None:
            choice = group.balancer.pick(upstreams, now, key=self.key)
        else:
            choice = group.balancer.pick(upstreams, now, key=self.key, tried=attempts.tried())
        if isinstance(choice, Unavailable):
            self._final = self._last if self._last is not None else unavailable(choice)
            if attempts is None:
                self.attempts = self._attempts_of()
            self._pick_next = False
            return None
        self.choice = choice
        self.backend = backend = group.replicas_by_role[choice.upstream]
        if attempts is not None:
            attempts.sent(choice.upstream)
            self.refusals = RETRY_STATUSES if attempts.may_move_on() else NO_REFUSALS
        if self._count:  # an earlier attempt went upstream: drop its header, say how many now
            _set_headers(self.sent.answer_headers, self._count + 1, None)
        self.lifetime.upstream_asked = False
        if choice.probe:  # its good head brings the upstream back, however long the answer
            self.sent.on_start = _on_head(group.balancer, choice)
        return backend

    def answered(self) -> None:
        """Report the attempt whose answer went out, whole or not."""
        sent = self.sent
        sent.on_start = None
        choice, backend = self.choice, self.backend
        balancer = self.group.balancer
        start = sent.start
        failure = None if start is None else failure_of_answer(start["status"])
        if failure is not None:  # its own 502, 503 or 429 with no retry left, or another 5xx
            balancer.failed(choice, self._loop.time())
            _count(backend, failure.value)
        elif sent.ended_in_error:  # a stream that broke after its start
            balancer.failed(choice, self._loop.time())
            _count(backend, Failure.BROKEN.value)
        else:  # a probe's success was reported as its head went out already: no matter
            balancer.succeeded(choice)
            _count(backend, ANSWERED)
            if balancer.settings.affinity is not None and self.path == RESPONSES:
                # The conversation's next turn names this answer: send it to the same place.
                answer_id = response_id_of(sent.first_piece)
                if answer_id is not None:
                    balancer.bind(response_key(answer_id), choice.upstream)

    def failed(self, error: BaseException) -> None:
        """Report the attempt that raised ``error``, and raise it again when nothing after
        it can act on it; else return, and `go_on` makes the next attempt or ends the
        request with it."""
        sent = self.sent
        sent.on_start = None
        group, choice, backend = self.group, self.choice, self.backend
        if not isinstance(error, RouterError):  # the client left, a shutdown, or a bug
            group.balancer.abandoned(choice)  # nothing learnt
            raise error
        attempts = self.attempts
        if attempts is None:  # the first attempt failed: what comes next needs them
            self.attempts = attempts = self._attempts_of()
            attempts.sent(choice.upstream)
        if not self.lifetime.upstream_asked:
            # Nothing went upstream: a full queue, no memory to load it, a wait for a slot
            # or a load that ran out, the router's own refusal, or a replica a reload
            # removed. Nothing is learnt of the upstream, no retry is spent.
            group.balancer.abandoned(choice)
            _set_headers(sent.answer_headers, self._count, self._went_to)
            moves_on = isinstance(error, (QueueFull, InsufficientMemory, BackendUnavailable))
            if not (moves_on or error.failure is not None) or sent.start is not None:
                raise error
            self._last = error
            self._pick_next = True
            return
        self._count += 1
        self._went_to = _upstream_of(sent.answer_headers)
        started = sent.start is not None
        if error.failure is None or started:
            _outcome(group, choice, backend, error, self._loop.time(), started)
            raise error
        group.balancer.failed(choice, self._loop.time())
        _count(backend, error.failure.value)
        self._last = self._final = error
        self._now = now = self._loop.time()
        self._pick_next = attempts.retry(error.failure, answer_started=False, now=now)

    async def go_on(self, attempt: Attempt) -> None:
        """Make the attempts after the first (which failed or found no upstream), on this
        model's upstreams and then its fallbacks', until one is answered or none is left:
        then end the request with the last failure (raised, or an upstream's own refusal
        sent as it came). Each attempt is served as a request for one backend is. Its
        pick, attempt, `failed` and `answered` are the app's first attempt again (see
        RouterApp._route), kept there so that no coroutine of this class stands between
        most requests and their answer."""
        scope, path, form = self.scope, self.path, self.form_type is not None
        sent, lifetime = self.sent, self.lifetime
        while True:
            if self._pick_next:
                backend = self.pick()
                if backend is not None:
                    model, body, refusals = self.model, self.body, self.refusals
                    try:
                        await attempt(
                            scope, sent, path, model, body, form, backend, lifetime, refusals
                        )
                    except BaseException as error:
                        self.failed(error)
                        continue
                    self.answered()
                    return
            # No upstream of this model can take the request, or its retries ran out.
            if not await self._fall_back():
                return

    async def _fall_back(self) -> bool:
        """Move on to the next fallback model that can take the request now, if any (True);
        else end the request with the last failure (False). A fallback is one the client's
        key may use: no way around a key's models."""
        attempts, final = self.attempts, self._final
        assert attempts is not None and final is not None  # made by the failure or the pick
        path, grant, processes, now = self.path, self.grant, self._processes, self._now
        table = self._table()

        def can_take(model: str) -> bool:
            if grant is not None and not grant.allows(model):
                return False
            try:
                return table.balanced(model, path).can_take(processes, now)
            except RouterError:  # a fallback of another model type, say
                return False

        model = attempts.fall_back(can_take, now)
        if model is None:
            await _give_up(final, self.sent, self.lifetime)
            return False
        self.group = group = table.balanced(model, path)
        self.model = model
        self.body = _for_model(self.form_type, self.body, model)
        self.lifetime.for_whom = group
        self._pick_next = True
        return True

    def _attempts_of(self) -> Attempts:
        """The request's Attempts, made before any fallback: the model and its retries are
        those the client asked for, and hold for the whole request; the fallbacks are the
        routing table's of the day."""
        return Attempts(
            self.model,
            retries=self._retries,
            deadline=self.lifetime.deadline,
            fallbacks_of=self._table().fallbacks_of,
        )


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


def _for_model(form_type: str | None, body: Body, model: str) -> Body:
    """The request's body, naming ``model`` (a fallback) so that its answer names it too."""
    if form_type is not None:
        return with_form_model(form_type, body, model)
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
