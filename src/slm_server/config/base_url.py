"""``base_url`` of a ``backend: openai`` entry, read as the OpenAI SDKs read it.

``http://gpu-1:8000/v1`` is where the API's paths hang: ``/v1/chat/completions`` goes to
``http://gpu-1:8000/v1/chat/completions``, and on ``https://host/openai/v1`` to
``https://host/openai/v1/chat/completions``. A URL with no path means ``/v1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_API_PREFIX = "/v1"


class BaseUrlError(ValueError):
    """The text is not a URL a server can be reached at; the message says why."""


@dataclass(frozen=True)
class BaseUrl:
    scheme: str  # http or https
    host: str  # a name or an IP address (an IPv6 one without brackets)
    port: int
    path: str  # what the API's /v1 stands for on this server: "/v1", "/openai/v1", ...

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def root(self) -> str:
        """What the server's own root stands for: the path less a final /v1."""
        return self.path.removesuffix(_API_PREFIX)

    def target(self, path: str) -> str:
        """Where a router path (and query) goes on this server: ``/v1/...`` replaced by the
        base URL's path; any other path (``/health``, ``/rerank``) under its root."""
        if path == _API_PREFIX or path.startswith((_API_PREFIX + "/", _API_PREFIX + "?")):
            return self.path + path[len(_API_PREFIX) :]
        return self.root + path

    @property
    def origin(self) -> str:
        """scheme://host[:port], the port left out where it is the scheme's own."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if _DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}"

    def __str__(self) -> str:
        return self.origin + self.path


def parse_base_url(text: str) -> BaseUrl:
    """``text`` as a BaseUrl; BaseUrlError, in plain words, when it cannot be one."""
    example = "e.g. http://gpu-1:8000/v1 or https://api.example.com/v1"
    if any(c.isspace() for c in text):
        raise BaseUrlError(f"a URL has no spaces; {example}")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise BaseUrlError(f"is not a URL with a port from 1 to 65535; {example}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise BaseUrlError(f"must start with http:// or https://; {example}")
    host = parts.hostname
    if not host:
        raise BaseUrlError(f"names no host; {example}")
    if parts.username is not None or parts.password is not None:
        raise BaseUrlError(
            "must not hold a user or password (they would show in logs); put the key in "
            "the variable api_key_env names"
        )
    if parts.query or parts.fragment:
        raise BaseUrlError(f"must not have a query (?...) or fragment (#...); {example}")
    if port == 0:
        raise BaseUrlError(f"is not a URL with a port from 1 to 65535; {example}")
    path = parts.path.rstrip("/") or _API_PREFIX
    return BaseUrl(scheme, host, port or _DEFAULT_PORTS[scheme], path)
