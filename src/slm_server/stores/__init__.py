"""Where the router keeps earlier Responses turns (``previous_response_id``).

In this process's memory by default; in Redis with ``router.response_store_url``, so that
several routers behind one load balancer continue each other's conversations. Both
stores answer the same asynchronous interface, ``ConversationStore``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from slm_server.config import RouterSettings


class StoreUnreachable(Exception):
    """The store could not be asked (down, too slow, or it refused the router); the
    message says so to the client, and whether trying again may help."""


class StoreSettingError(Exception):
    """The store's settings cannot be used as they are (e.g. its password variable unset)."""


class ConversationStore(Protocol):
    """Response id -> the chat messages of its conversation, for its owner alone.

    ``owner`` is the API key's name (None without keys): a conversation is found only by
    the key that made it. What goes in and what comes out are copies.
    """

    @property
    def forgets(self) -> str:
        """When stored turns go, in words, for the message about an unknown id."""
        ...

    async def check(self) -> None:
        """Ask the store once (at start-up), so that a wrong address or password is logged
        before the first request needs the store; never raises."""
        ...

    async def get(self, response_id: str, owner: str | None) -> list[dict[str, Any]] | None:
        """The conversation ending with ``response_id``, None when unknown or expired.

        StoreUnreachable when the store cannot be asked."""
        ...

    async def put(
        self, response_id: str, messages: list[dict[str, Any]], owner: str | None
    ) -> bool:
        """Store the conversation; False when it is too large to keep.

        StoreUnreachable when the store cannot be asked."""
        ...

    async def aclose(self) -> None:
        """Let go of what the store holds open (connections)."""
        ...


def make_store(settings: RouterSettings, environ: Mapping[str, str]) -> ConversationStore:
    """The store ``settings`` ask for; StoreSettingError if its password variable is unset."""
    max_bytes = int(settings.response_store_mb * 1024 * 1024)
    if settings.response_store_url is None:
        from slm_server.stores.memory import MemoryStore
        from slm_server.translate.response_store import ResponseStore

        return MemoryStore(ResponseStore(max_bytes))
    from slm_server.stores.redis_store import RedisStore

    return RedisStore(
        settings.response_store_url,
        password=store_password(settings, environ),
        ttl_s=settings.response_store_ttl_s,
        max_bytes=max_bytes,
    )


def store_password(settings: RouterSettings, environ: Mapping[str, str]) -> str | None:
    """The password ``response_store_password_env`` names; StoreSettingError if unset."""
    variable = settings.response_store_password_env
    if variable is None:
        return None
    password = environ.get(variable)
    if not password:
        # Not named: what was written there could be the password itself, pasted by mistake.
        raise StoreSettingError(
            "the environment variable named by response_store_password_env is not set (or "
            "is empty): set it to the Redis password"
        )
    return password
