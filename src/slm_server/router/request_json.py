"""Reading what the router needs from a JSON request body, and no more.

Routing needs only ``model``; building the whole document to find it cost a large
upload several times its size in Python objects (a 50 MB body took the router from 49
to 199 MB). msgspec decodes into a struct of that one field and skips the rest without
building it, while still checking that the whole body is well-formed JSON; on a 1 KB
chat body it is also about eight times quicker than ``json.loads``. The whole document
is built only where the router must read or change more of it (see ``parse_object``).
"""

from __future__ import annotations

import codecs
import json
from typing import Any

import msgspec

from slm_server.router.asgi import Body
from slm_server.router.errors import InvalidRequest


class _Routed(msgspec.Struct):
    model: Any = None  # any JSON value: a wrong type is the caller's 400, with its wording


_ROUTED = msgspec.json.Decoder(_Routed)
_UTF8_SLICE = 1 << 20


def _too_deep() -> InvalidRequest:
    # e.g. 100,000 nested lists: the decoders give up (RecursionError), and so does the router.
    return InvalidRequest("request body is nested too deeply")


def model_of(body: Body) -> object:
    """The top-level ``model`` value of a JSON object body (None when absent)."""
    _require_utf8(body)
    try:
        return _ROUTED.decode(body).model
    except msgspec.ValidationError:  # well-formed JSON, but not an object
        raise InvalidRequest("request body must be a JSON object") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _too_deep() from None


def _require_utf8(body: Body) -> None:
    """What ``json.loads`` would check in the strings msgspec skips: the text is UTF-8.

    Checked in slices, so that a large body never has a whole copy made as text.
    """
    if body.isascii():  # nearly every request, and no copy at all
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(body)
    try:
        for start in range(0, len(view), _UTF8_SLICE):
            decoder.decode(view[start : start + _UTF8_SLICE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def parse_object(body: Body) -> dict[str, Any]:
    """The whole body as a dict, for requests the router converts or changes."""
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(request, dict):
        raise InvalidRequest("request body must be a JSON object")
    return request
