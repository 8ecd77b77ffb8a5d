"""Session affinity: requests of one conversation go to the upstream that has its prompt
cached, found by a key taken from the request, remembered in a bounded table."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping

SESSION_HEADER = b"x-session-id"
_LONGEST_KEY = 128  # longer values are kept as a digest, so no client can make entries large


def affinity_key(
    document: Mapping[str, object] | None, headers: Iterable[tuple[bytes, bytes]]
) -> str | None:
    """The key that keeps a request on one upstream, or None when it has none.

    `document` is the request's parsed JSON body (None when it has none); `headers` as
    ASGI gives them, with lower-case names.

    In order: the `x-session-id` header (the client says what a session is), then
    `previous_response_id` (this Responses conversation), then `user` (everything of
    one end user). Each kind is kept apart (`session:`, `response:`, `user:`), so equal
    values of different kinds do not share an upstream by accident. Values that are not
    non-empty strings are no key: the request's own validation reports them.
    """
    for name, value in headers:
        if name == SESSION_HEADER and value:
            return _bounded("session", value.decode("latin-1"))
    if document is not None:
        for field, kind in (("previous_response_id", "response"), ("user", "user")):
            found = document.get(field)
            if isinstance(found, str) and found:
                return _bounded(kind, found)
    return None


def response_key(response_id: str) -> str:
    """The key a later turn with `previous_response_id = response_id` will carry: bound to
    the upstream that made the response, the next turn lands where its prompt is cached."""
    return _bounded("response", response_id)


def _bounded(kind: str, value: str) -> str:
    if len(value) > _LONGEST_KEY:
        value = "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{kind}:{value}"


class Sessions:
    """Key -> upstream, at most `limit` of them: the least recently used key goes first."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be 1 or more, not {limit}")
        self.limit = limit
        self._upstreams: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._upstreams)

    def get(self, key: str) -> str | None:
        upstream = self._upstreams.get(key)
        if upstream is not None:
            self._upstreams.move_to_end(key)
        return upstream

    def bind(self, key: str, upstream: str) -> None:
        self._upstreams[key] = upstream
        self._upstreams.move_to_end(key)
        while len(self._upstreams) > self.limit:
            self._upstreams.popitem(last=False)

    def unbind(self, upstream: str) -> None:
        """Forget every key bound to `upstream` (at most `limit` to look through)."""
        for key in [key for key, bound in self._upstreams.items() if bound == upstream]:
            del self._upstreams[key]
