"""The default store: this router's memory (see ``translate.response_store``)."""

from __future__ import annotations

from typing import Any

from slm_server.translate.response_store import ResponseStore


class MemoryStore:
    """A ``ConversationStore`` over a ``ResponseStore``: bounded in bytes, gone at restart."""

    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    @property
    def forgets(self) -> str:
        megabytes = self.store.max_bytes / (1024 * 1024)
        return (
            f"the router keeps responses in memory until it restarts, within {megabytes:.3g} "
            "MiB (router.response_store_mb), the least recently used going first"
        )

    async def check(self) -> None:
        return None

    async def get(self, response_id: str, owner: str | None) -> list[dict[str, Any]] | None:
        return self.store.get(response_id, owner)

    async def put(
        self, response_id: str, messages: list[dict[str, Any]], owner: str | None
    ) -> bool:
        return self.store.put(response_id, messages, owner)

    async def aclose(self) -> None:
        return None
