"""The ``model`` field of a multipart/form-data request (image edits, transcriptions).

Those requests carry a file, so the router reads only the parts' headers to find the
field it routes by, and forwards the body exactly as it came.
"""

from __future__ import annotations

from email.message import Message
from email.parser import BytesHeaderParser

from slm_server.router.asgi import Body
from slm_server.router.errors import InvalidRequest

FORM_DATA = "multipart/form-data"
# The endpoints whose requests are forms (the others take JSON).
FORM_PATHS = frozenset({"/v1/images/edits", "/v1/audio/transcriptions"})
_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"
_MAX_NAME = 256  # longer is not a model name but, say, a file sent under that field
# What the search for the field may cost, run as it is on the event loop: a real upload
# form has a few dozen parts of a few hundred header bytes (OpenAI's image edit: up to 16
# images and some ten fields). Unbounded, 49 MB of tiny parts took 21 s of the loop.
_MAX_PARTS = 100
_MAX_HEAD_BYTES = 16 * 1024  # all parts' headers together


def is_form(content_type: str) -> bool:
    return content_type.lower().startswith(FORM_DATA)


def form_model(content_type: str, body: Body) -> str | None:
    """The form's ``model`` field; a clear 400 for a form where it cannot be one."""
    found = _field(content_type, body, "model")
    if found is None:
        return None
    headers, start, end = found
    return _text(headers, body[start:end], "model")


def with_form_model(content_type: str, body: Body, model: str) -> Body:
    """``body`` (a form form_model has read) with its ``model`` field's value set to
    ``model``, every other byte as sent: the file parts are not parsed again."""
    found = _field(content_type, body, "model")
    if found is None:
        return body
    _, start, end = found
    return b"".join((body[:start], model.encode(), body[end:]))


def _field(content_type: str, body: Body, name: str) -> tuple[Message, int, int] | None:
    """The part headers of the form's field ``name``, and where its value starts and ends
    in ``body``; None if the form has no such field."""
    boundary = _param(content_type, "boundary")
    if not boundary:
        raise InvalidRequest(f"a {FORM_DATA} request needs a boundary in its Content-Type")
    delimiter = b"--" + boundary.encode("latin-1", errors="replace")
    line_delimiter = _CRLF + delimiter  # every delimiter but an opening one starts a line
    start = _first_part(body, delimiter)
    if start is None:
        raise InvalidRequest(f"the {FORM_DATA} body has none of its boundary lines")
    parts = head_bytes = 0
    while not body.startswith(b"--", start):  # `--` after the delimiter closes the form
        end = _next_delimiter(body, line_delimiter, start)
        if end is None:
            raise InvalidRequest(f"the {FORM_DATA} body ends inside a part")
        parts += 1
        if parts > _MAX_PARTS:
            raise InvalidRequest(
                f"the {FORM_DATA} body has more than {_MAX_PARTS} parts before its `{name}`",
                param=name,
            )
        head_end = body.find(_HEAD_END, start, end)
        if head_end >= 0:
            head_bytes += head_end - start
            if head_bytes > _MAX_HEAD_BYTES:
                raise InvalidRequest(
                    f"the {FORM_DATA} body's part headers exceed {_MAX_HEAD_BYTES} bytes "
                    f"before its `{name}`",
                    param=name,
                )
            headers = BytesHeaderParser().parsebytes(body[start:head_end].lstrip(_CRLF))
            if headers.get_param("name", header="content-disposition") == name:
                return headers, head_end + len(_HEAD_END), end
        start = end + len(line_delimiter)
    return None


def _first_part(body: Body, delimiter: bytes) -> int | None:
    """Where the first part begins: the body opens with the delimiter, or with a preamble."""
    if body.startswith(delimiter) and _ends_delimiter_line(body, len(delimiter)):
        return len(delimiter)
    found = _next_delimiter(body, _CRLF + delimiter, 0)
    return None if found is None else found + len(_CRLF) + len(delimiter)


def _next_delimiter(body: Body, delimiter: bytes, start: int) -> int | None:
    """The next delimiter line: the boundary alone on its line, or followed by `--`."""
    position = body.find(delimiter, start)
    while position >= 0:
        if _ends_delimiter_line(body, position + len(delimiter)):
            return position
        position = body.find(delimiter, position + 1)
    return None


def _ends_delimiter_line(body: Body, position: int) -> bool:
    if body.startswith(b"--", position):
        return True
    line_end = body.find(_CRLF, position)
    return line_end >= 0 and not body[position:line_end].strip(b" \t")


def _text(headers: Message, value: Body, name: str) -> str:
    if headers.get_param("filename", header="content-disposition") is not None:
        raise InvalidRequest(f"the form's `{name}` field is a file, not a name", param=name)
    if len(value) > _MAX_NAME:
        raise InvalidRequest(f"the form's `{name}` field is too long for a name", param=name)
    return value.decode("utf-8", errors="replace").strip()


def _param(content_type: str, name: str) -> str | None:
    header = Message()
    header["content-type"] = content_type
    value = header.get_param(name)
    return value if isinstance(value, str) else None
