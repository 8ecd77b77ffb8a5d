"""The shared store: Redis, so several routers continue each other's conversations.

Each turn is one Redis string, ``slm:resp:<owner>:<response id>``, holding the same JSON
the in-memory store keeps, set to expire after ``ttl_s``: Redis is not bounded by this
router's memory budget, so abandoned conversations must go by themselves. A conversation
larger than ``max_bytes`` (``router.response_store_mb``) is not stored, as in memory.

Every call is bounded by ``timeout_s``. Once a call finds Redis unusable, the store stops
asking it: calls fail at once (an answer does not wait ``timeout_s`` to go out unstored)
while one background probe asks Redis every ``probe_interval_s`` until it answers. The
router says so once (and once more when it is back), not once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError, ResponseError

from slm_server.config.store_url import parse_store_url
from slm_server.stores import StoreUnreachable

log = logging.getLogger(__name__)

KEY_PREFIX = "slm:resp:"
DEFAULT_TIMEOUT_S = 2.0
PROBE_INTERVAL_S = 1.0
# Connections to Redis at most; past them a call waits for one (within timeout_s). Each
# call holds one for a round trip, so a few dozen serve hundreds of concurrent requests.
MAX_CONNECTIONS = 64
# Redis answered, but no: a wrong password, a user without the rights, a replica that is
# read-only, a full memory. Asking again will not help until someone changes something.
_REFUSALS = (AuthenticationError, AuthorizationError, ResponseError)

_decode_messages = msgspec.json.Decoder(list[dict[str, Any]]).decode

T = TypeVar("T")


def entry_key(response_id: str, owner: str | None) -> str:
    """The Redis key of ``owner``'s ``response_id``; the owner is quoted so that no name
    (one holding ':') can reach another's keys."""
    return f"{KEY_PREFIX}{quote(owner or '', safe='')}:{response_id}"


class RedisStore:
    """A ``ConversationStore`` in Redis at ``url`` (``redis://`` or ``rediss://``)."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None,
        ttl_s: float,
        max_bytes: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        probe_interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        self.where = f"Redis at {parse_store_url(url).shown}"  # never the password
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.probe_interval_s = probe_interval_s
        # While Redis cannot be used: what every call says at once, instead of asking it.
        self.outage: str | None = None
        self._prober: asyncio.Task[None] | None = None
        options: dict[str, Any] = {} if password is None else {"password": password}
        # Blocking: the default pool refuses a call past its size ("Too many connections"),
        # which would read as an outage under a burst of requests.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            # One quick retry covers a pooled connection that Redis closed meanwhile
            # (a restart); the client's default of 10 with backoff would outlast timeout_s.
            retry=Retry(NoBackoff(), 1),
            **options,
        )
        self.client: Redis = Redis.from_pool(pool)  # closing the client closes the pool

    @property
    def reachable(self) -> bool:
        return self.outage is None

    @property
    def forgets(self) -> str:
        return (
            f"responses are kept in {self.where} for {self.ttl_ms / 1000:g} s "
            "(router.response_store_ttl_s)"
        )

    async def check(self) -> None:
        # Where responses are kept is said at start-up already; here only what is wrong.
        with contextlib.suppress(StoreUnreachable):  # the warning says why
            await self._call(self.client.ping)

    async def get(self, response_id: str, owner: str | None) -> list[dict[str, Any]] | None:
        key = entry_key(response_id, owner)
        encoded = await self._call(lambda: self.client.get(key))
        if encoded is None:
            return None
        try:
            return _decode_messages(encoded)
        except msgspec.DecodeError:  # not written by a router: as good as unknown
            log.warning("%s: %s holds no conversation the router wrote", self.where, key)
            return None

    async def put(
        self, response_id: str, messages: list[dict[str, Any]], owner: str | None
    ) -> bool:
        encoded = msgspec.json.encode(messages)
        if len(encoded) > self.max_bytes:
            return False
        key = entry_key(response_id, owner)
        await self._call(lambda: self.client.set(key, encoded, px=self.ttl_ms))
        return True

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.aclose()
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("closing the connections to %s: %s", self.where, exc)

    async def _call(self, command: Callable[[], Awaitable[T]]) -> T:
        """``command`` within ``timeout_s``; StoreUnreachable at once during an outage."""
        if self.outage is not None:
            raise StoreUnreachable(self.outage)
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await command()
        except TimeoutError:
            self._lost(
                f"no answer within {self.timeout_s:g} s",
                f"the Responses store ({self.where}) did not answer within "
                f"{self.timeout_s:g} s; try again once it answers",
            )
        except _REFUSALS as exc:
            self._refused(str(exc) or type(exc).__name__)
        except (RedisError, OSError) as exc:
            self._lost(
                str(exc) or type(exc).__name__,
                f"the Responses store ({self.where}) is unreachable; try again once it is back",
            )
        self._back()  # an answer that set out before the outage began ends it too
        return result

    def _lost(self, cause: str, outage: str) -> NoReturn:
        if self._begin(outage):
            log.warning(
                "%s cannot be used (%s): answers go out but are not stored, and requests "
                "with previous_response_id get 503, until it answers again",
                self.where,
                cause,
            )
        raise StoreUnreachable(outage)

    def _refused(self, cause: str) -> NoReturn:
        outage = f"the Responses store ({self.where}) refused the router; the router's log says why"
        if self._begin(outage):
            log.warning(
                "%s refused the router (%s): check its password (router."
                "response_store_password_env) and its settings. Until then answers go out "
                "but are not stored, and requests with previous_response_id get 503",
                self.where,
                cause,
            )
        raise StoreUnreachable(outage)

    def _begin(self, outage: str) -> bool:
        """Begin an outage, its probe with it; False when one is already on."""
        if self.outage is not None:
            return False
        self.outage = outage
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe(), name="response-store-probe")
        return True

    async def _probe(self) -> None:
        """Ask Redis until it answers: the way an outage ends, as no request asks it."""
        while self.outage is not None:
            await asyncio.sleep(self.probe_interval_s)
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.client.ping()
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("%s still cannot be used: %s", self.where, exc or type(exc).__name__)
            else:
                self._back()

    def _back(self) -> None:
        if self.outage is not None:
            self.outage = None
            log.info("%s is back: responses are stored again", self.where)
