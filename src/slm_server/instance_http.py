"""How the command line asks a running instance over HTTP: directly, and a key kept local.

The standard library's client, so ``start``, ``stop``, ``ps``, ``load`` and ``unload``
work on a plain install. The router is asked directly, never through a proxy from the
environment (``HTTP_PROXY``).
"""

from __future__ import annotations

import urllib.request

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def instance_request(
    url: str, method: str = "GET", api_key: str | None = None
) -> urllib.request.Request:
    """A request for ``url``, carrying ``api_key`` as a bearer token when given.

    The key goes in an unredirected header: urllib copies ordinary headers onto the request
    it makes when the answer is a redirect, which would hand the key to whatever host the
    redirect names.
    """
    request = urllib.request.Request(url, method=method)
    if api_key is not None:
        request.add_unredirected_header("Authorization", f"Bearer {api_key}")
    return request
