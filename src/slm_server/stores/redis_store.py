"""The shared store: Redis, so several routers continue each other's conversations.

Each turn is one Redis string, ``slm:resp:<owner>:<response id>``, holding the same JSON
the in-memory store keeps, set to expire after ``ttl_s``: Redis is not bounded by this
router's memory budget, so abandoned conversations must go by themselves. A conversation
larger than ``max_bytes`` (``router.response_store_mb``) is not stored, as in memory.

Every call is bounded by ``timeout_s``. While Redis cannot be reached the router says so
once (and once more when it is back), not once per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from slm_server.config.store_url import parse_store_url
from slm_server.stores import StoreUnreachable

log = logging.getLogger(__name__)

KEY_PREFIX = "slm:resp:"
DEFAULT_TIMEOUT_S = 2.0
# Connections to Redis at most; past them a call waits for one (within timeout_s). Each
# call holds one for a round trip, so a few dozen serve hundreds of concurrent requests.
MAX_CONNECTIONS = 64

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
    ) -> None:
        self.where = f"Redis at {parse_store_url(url).shown}"  # never the password
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.reachable = True
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
    def forgets(self) -> str:
        return (
            f"responses are kept in {self.where} for {self.ttl_ms / 1000:g} s "
            "(router.response_store_ttl_s)"
        )

    async def get(self, response_id: str, owner: str | None) -> list[dict[str, Any]] | None:
        key = entry_key(response_id, owner)
        encoded = await self._call(self.client.get(key))
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
        await self._call(self.client.set(entry_key(response_id, owner), encoded, px=self.ttl_ms))
        return True

    async def aclose(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.aclose()
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("closing the connections to %s: %s", self.where, exc)

    async def _call(self, command: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await command
        except TimeoutError:
            self._lost(f"no answer within {self.timeout_s:g} s")
            raise StoreUnreachable(
                f"the Responses store ({self.where}) did not answer within {self.timeout_s:g} s"
            ) from None
        except (RedisError, OSError) as exc:
            self._lost(str(exc) or type(exc).__name__)
            raise StoreUnreachable(f"the Responses store ({self.where}) is unreachable") from None
        if not self.reachable:
            self.reachable = True
            log.info("%s is back: responses are stored again", self.where)
        return result

    def _lost(self, why: str) -> None:
        if self.reachable:
            self.reachable = False
            log.warning(
                "%s cannot be used (%s): answers go out but are not stored, and requests "
                "with previous_response_id get 503, until it answers again",
                self.where,
                why,
            )
