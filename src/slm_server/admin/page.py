"""The dashboard's page: static files shipped in the package, served as they are.

They hold no data (the page asks ``/admin/status`` for it, with the user's key), so they
are served without a key. The Content-Security-Policy lets the page load only its own
files and talk only to this router: no inline script, no other origin, no framing.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from slm_server.router.asgi import Headers

UI_PATH = "/ui"

# Path -> (file in the package's ui folder, its content type).
_FILES = {
    UI_PATH: ("index.html", b"text/html; charset=utf-8"),
    f"{UI_PATH}/": ("index.html", b"text/html; charset=utf-8"),
    f"{UI_PATH}/dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
    # The script, as modules: dashboard.js imports the others.
    **{
        f"{UI_PATH}/{name}": (name, b"text/javascript; charset=utf-8")
        for name in ("dashboard.js", "common.js", "actions.js", "playground.js")
    },
}
PAGE_PATHS = frozenset(_FILES)

CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class PageFile:
    body: bytes
    headers: Headers


def page_file(path: str) -> PageFile:
    """The file served at ``path`` (one of PAGE_PATHS), read from the package."""
    name, content_type = _FILES[path]
    body = files("slm_server.admin").joinpath("ui", name).read_bytes()
    headers = [
        (b"content-type", content_type),
        (b"content-security-policy", CONTENT_SECURITY_POLICY),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        # An upgraded router serves its own page at once, not a cached older one.
        (b"cache-control", b"no-cache"),
    ]
    return PageFile(body, headers)
