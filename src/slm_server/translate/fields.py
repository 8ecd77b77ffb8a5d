"""Type checks of request fields, where the converters read them.

A body is JSON from anyone: a field may hold any JSON value. The converters check
each field they read with these helpers, so a wrong type is an ``InvalidField``
naming it (a 400 for the client) rather than a TypeError deep inside a conversion.
``null`` counts as absent for optional fields, as it does for the OpenAI and
Anthropic APIs. Fields nobody reads are not checked: they pass through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slm_server.translate.errors import InvalidField

# What a field must hold: its Python types after json.loads, and the words for the message.
Kind = tuple[tuple[type, ...], str]

STRING: Kind = ((str,), "a string")
INTEGER: Kind = ((int,), "an integer")
NUMBER: Kind = ((int, float), "a number")
BOOLEAN: Kind = ((bool,), "a boolean")
OBJECT: Kind = ((dict,), "an object")
LIST: Kind = ((list,), "a list")


def check_fields(body: Mapping[str, Any], kinds: Mapping[str, Kind], where: str = "") -> None:
    """Each field of ``body`` named in ``kinds`` is absent, null, or of its kind."""
    for key, kind in kinds.items():
        value = body.get(key)
        if value is not None and not is_kind(value, kind):
            raise _wrong(f"{where}{key}", kind)


def is_kind(value: Any, kind: Kind) -> bool:
    # JSON true is not a number, though Python's bool is an int.
    return isinstance(value, kind[0]) and (bool in kind[0] or not isinstance(value, bool))


def required(obj: Mapping[str, Any], key: str, kind: Kind, where: str) -> Any:
    """``obj[key]``, which must be present and of ``kind``; ``where`` is ``obj``'s path."""
    value = obj.get(key)
    if value is None or not is_kind(value, kind):
        raise _wrong(f"{where}.{key}", kind)
    return value


def string_list(value: Any, param: str) -> list[str]:
    """``value`` as a list of strings (null: empty)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidField(param, f"`{param}` must be a list of strings")
    return value


def _wrong(param: str, kind: Kind) -> InvalidField:
    return InvalidField(param, f"`{param}` must be {kind[1]}")
