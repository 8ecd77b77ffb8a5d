"""The ``model`` field of a multipart/form-data request (image edits, transcriptions).

Those requests carry a file, so the router reads only the parts' headers to find the
field it routes by, and forwards the body exactly as it came.
"""

from __future__ import annotations

from email.message import Message
from email.parser import BytesHeaderParser

from slm_server.router.errors import InvalidRequest

FORM_DATA = "multipart/form-data"
_HEAD_END = b"\r\n\r\n"


def is_form(content_type: str) -> bool:
    return content_type.lower().startswith(FORM_DATA)


def form_field(content_type: str, body: bytes, name: str) -> str | None:
    """The text of the form field ``name``; None when the form has no such field."""
    boundary = _param(content_type, "boundary")
    if not boundary:
        raise InvalidRequest(f"a {FORM_DATA} request needs a boundary in its Content-Type")
    delimiter = b"--" + boundary.encode("latin-1")
    position = body.find(delimiter)
    if position < 0:
        raise InvalidRequest(f"the {FORM_DATA} body has none of its boundary lines")
    while True:
        start = position + len(delimiter)
        if body.startswith(b"--", start):
            return None  # the closing delimiter
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise InvalidRequest(f"the {FORM_DATA} body ends inside a part")
        head_end = body.find(_HEAD_END, start, end)
        if head_end >= 0:
            headers = BytesHeaderParser().parsebytes(body[start:head_end].lstrip(b"\r\n"))
            if headers.get_param("name", header="content-disposition") == name:
                value = body[head_end + len(_HEAD_END) : end]
                return value.decode("utf-8", errors="replace")
        position = end + 2


def _param(content_type: str, name: str) -> str | None:
    header = Message()
    header["content-type"] = content_type
    value = header.get_param(name)
    return value if isinstance(value, str) else None
