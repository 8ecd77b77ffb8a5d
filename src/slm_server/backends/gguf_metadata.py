"""Reading one value from a GGUF file's metadata, without reading the rest.

The official reader (``gguf.GGUFReader``) builds every array of the header, which for a
262k-token vocabulary took 10 s: too slow for a backend's start. This walks the key-value
section once, skipping what it does not want (a string array costs one length read per
item), and never reads tensor data.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_MAGIC = b"GGUF"
_MAX_KEYS = 1 << 20  # sanity bounds: a corrupt header must fail, not loop or allocate
_MAX_STRING = 1 << 26
# Value type -> struct format, for the fixed-size types.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_VERSIONS = (2, 3)  # little-endian, with 64-bit lengths and counts
_MAX_NESTING = 8  # arrays of arrays: deeper is a corrupt header, not a model
# Numeric arrays read whole (per-layer values: one per layer); longer ones are skipped.
_MAX_READ_ARRAY = 1 << 16

Scalar = int | float | bool | str
Value = Scalar | tuple[Scalar, ...]


class GGUFError(ValueError):
    """Not a GGUF file, or one whose header cannot be read."""


def read_values(path: Path, wanted: Callable[[str], bool]) -> dict[str, Scalar]:
    """The scalar or string values of the ``wanted`` keys in ``path``'s metadata."""
    return {
        key: value
        for key, value in read_fields(path, wanted).items()
        if not isinstance(value, tuple)
    }


def read_fields(path: Path, wanted: Callable[[str], bool]) -> dict[str, Value]:
    """The values of the ``wanted`` keys in ``path``'s metadata: scalars, strings, and
    numeric arrays (as tuples) of up to 65536 items; other arrays are skipped."""
    found: dict[str, Value] = {}
    with path.open("rb") as f:
        if f.read(4) != _MAGIC:
            raise GGUFError(f"{path} is not a GGUF file")
        version = int(_unpack(f, "<I"))
        if version not in _VERSIONS:  # big-endian files read as a huge number: refused too
            raise GGUFError(f"{path}: GGUF version {version} cannot be read here")
        _unpack(f, "<Q")  # tensor count
        count = int(_unpack(f, "<Q"))
        if count > _MAX_KEYS:
            raise GGUFError(f"{path}: {count} metadata keys; the header is corrupt")
        for _ in range(count):
            key = _string(f)
            kind = int(_unpack(f, "<I"))
            if not wanted(key):
                _skip(f, kind)
            elif kind == _ARRAY:
                array = _numeric_array(f)
                if array is not None:
                    found[key] = array
            else:
                found[key] = _value(f, kind)
    return found


def pooling_type(path: Path) -> int | None:
    """The model's declared pooling (llama.cpp's numbering: 0 none, 1 mean, 2 cls, 3 last,
    4 rank), or None when it declares none."""
    values = read_values(
        path, lambda key: key == "general.architecture" or key.endswith(".pooling_type")
    )
    value = values.get(f"{values.get('general.architecture')}.pooling_type")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _unpack(f: BinaryIO, fmt: str) -> Scalar:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFError("the GGUF header ends early")
    value: Scalar = struct.unpack(fmt, data)[0]
    return value


def _string(f: BinaryIO) -> str:
    length = int(_unpack(f, "<Q"))
    if length > _MAX_STRING:
        raise GGUFError("a GGUF string is implausibly long; the header is corrupt")
    data = f.read(length)
    if len(data) != length:
        raise GGUFError("the GGUF header ends early")
    return data.decode("utf-8", errors="replace")


def _value(f: BinaryIO, kind: int) -> Scalar:
    if kind == _STRING:
        return _string(f)
    if kind in _SCALARS:
        return _unpack(f, _SCALARS[kind])
    raise GGUFError(f"unknown GGUF value type {kind}")


def _numeric_array(f: BinaryIO) -> tuple[Scalar, ...] | None:
    """An array of fixed-size items, read whole; any other array skipped (None)."""
    item_kind = int(_unpack(f, "<I"))
    count = int(_unpack(f, "<Q"))
    if item_kind not in _SCALARS or count > _MAX_READ_ARRAY:
        _skip_items(f, item_kind, count, depth=0)
        return None
    fmt = _SCALARS[item_kind]
    size = struct.calcsize(fmt)
    _seek_ahead(f, count * size, move=False)  # a corrupt count fails here, before reading
    data = f.read(count * size)
    return tuple(struct.unpack(f"<{count}{fmt[1:]}", data))


def _skip(f: BinaryIO, kind: int, depth: int = 0) -> None:
    """Move past one value, never beyond the end of the file (a corrupt length fails)."""
    if kind == _STRING:
        _seek_ahead(f, int(_unpack(f, "<Q")))
    elif kind in _SCALARS:
        _seek_ahead(f, struct.calcsize(_SCALARS[kind]))
    elif kind == _ARRAY:
        if depth >= _MAX_NESTING:
            raise GGUFError("GGUF arrays nested implausibly deep; the header is corrupt")
        item_kind = int(_unpack(f, "<I"))
        count = int(_unpack(f, "<Q"))
        _skip_items(f, item_kind, count, depth)
    else:
        raise GGUFError(f"unknown GGUF value type {kind}")


def _skip_items(f: BinaryIO, item_kind: int, count: int, depth: int) -> None:
    if item_kind in _SCALARS:
        _seek_ahead(f, count * struct.calcsize(_SCALARS[item_kind]))
        return
    # Each string or array item takes at least its 8-byte length: a count the rest of
    # the file cannot hold is corrupt, and is refused before looping over it.
    _seek_ahead(f, count * 8, move=False)
    for _ in range(count):
        _skip(f, item_kind, depth + 1)


def _seek_ahead(f: BinaryIO, size: int, *, move: bool = True) -> None:
    here = f.tell()
    if size > os.fstat(f.fileno()).st_size - here:
        raise GGUFError("the GGUF header ends early")
    if move:
        f.seek(here + size)
