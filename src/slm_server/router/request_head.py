"""The few request headers the router itself reads, found in one pass over them all.

Every request needs its id, and with API keys its key, and with CORS its origin: one loop
that looks each header's name up once costs less than a loop per concern (the headers of
an SDK's request are a dozen or more). The first of each counts, as everywhere else.
"""

from __future__ import annotations

from slm_server.router.asgi import Headers

_REQUEST_ID = b"x-request-id"
_AUTHORIZATION = b"authorization"
_API_KEY = b"x-api-key"
_ORIGIN = b"origin"
_READ = frozenset({_REQUEST_ID, _AUTHORIZATION, _API_KEY, _ORIGIN})
_BEARER = b"bearer "  # the scheme's name is case-insensitive (RFC 9110 11.1)


# (x-request-id as sent, the first non-empty Bearer token of an Authorization header,
# the first non-empty x-api-key stripped, origin). A plain tuple: a NamedTuple's
# constructor is a Python call more on every request.
RequestHead = tuple[bytes | None, bytes | None, bytes | None, bytes | None]


def read_head(headers: Headers) -> RequestHead:
    """What the router reads of ``headers`` (None for each it lacks).

    An empty key counts as none, so a later header may still give one; but a client gets
    two tries at most (a bearer token and an x-api-key), never a list of keys to try.
    """
    request_id = bearer = api_key = origin = None
    for name, value in headers:
        if name not in _READ:
            continue
        if name == _REQUEST_ID:
            if request_id is None:
                request_id = value
        elif name == _AUTHORIZATION:
            if bearer is None and value[:7].lower() == _BEARER:
                bearer = value[7:].strip() or None
        elif name == _API_KEY:
            if api_key is None:
                api_key = value.strip() or None
        elif origin is None:
            origin = value
    return request_id, bearer, api_key, origin
