"""Generated multipart/form-data requests for the form endpoints (a hypothesis strategy).

A valid form (a ``model`` field, a text field, a file) is bent the ways clients and
attackers bend one: the model missing, repeated, sent as a file, far too long or not
UTF-8; odd extra fields; boundaries long, short, quoted or found inside the data; a
Content-Type that lacks the boundary, names another one or adds parameters; and the
bytes themselves truncated, left unclosed, given LF line ends or a preamble.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

# path -> (model id, text field, file field): what the fake backend needs to answer
FORMS: dict[str, tuple[str, str, str]] = {
    "/v1/images/edits": ("edit", "prompt", "image"),
    "/v1/audio/transcriptions": ("listen", "language", "file"),
}


@dataclass
class Part:
    name: bytes
    value: bytes
    filename: bytes | None = None
    content_type: bytes | None = None
    disposition: bytes | None = None  # a whole Content-Disposition value, instead of name=...

    def encode(self) -> bytes:
        disposition = self.disposition or b'form-data; name="' + self.name + b'"'
        if self.filename is not None:
            disposition += b'; filename="' + self.filename + b'"'
        head = b"Content-Disposition: " + disposition + b"\r\n"
        if self.content_type is not None:
            head += b"Content-Type: " + self.content_type + b"\r\n"
        return head + b"\r\n" + self.value


BOUNDARIES = st.sampled_from(
    [
        b"x",
        b"----WebKitFormBoundary7MA4YWxkTrZu0gW",
        b"b" * 70,  # the longest RFC 2046 allows
        b"b" * 5000,  # far longer than allowed
        b"'()+_,-./:=? with space",
        b"\xe9t\xe9",  # not ASCII (latin-1 in the header)
        b"edit",  # also a word of the data
        b"--",
    ]
)
ODD_VALUES = st.sampled_from(
    [
        b"",
        b"   ",
        b"\xff\xfe\x00",  # not UTF-8
        b"\xc3",  # a UTF-8 sequence cut short
        b"caf\xc3\xa9",
        b"\r\n\r\n",
        b"--x",
        b"\r\n--x\r\n",  # a delimiter inside the value (for the boundary ``x``)
        b"m" * 257,  # longer than a model name may be
        b"\x00" * 10,
        "\U0001f600".encode(),
    ]
)
ODD_NAMES = st.sampled_from(
    [b"", b"model ", b"MODEL", b'mod"el', b"\xff", b"a" * 1000, b"model\x00", b"x"]
)
FILE_BYTES = st.binary(max_size=64) | st.sampled_from([b"\x89PNG\r\n\x1a\n" * 1000])


DAMAGES = (
    *["none"] * 3,
    "truncate",
    "unclosed",
    "preamble",
    "epilogue",
    "empty",
    "countless parts",
)


@dataclass
class FormRequest:
    content_type: bytes
    body: bytes


@st.composite
def form_requests(draw: st.DrawFn, path: str) -> FormRequest:
    """A request for ``path``: a valid form bent in a few places, then maybe broken."""
    model, text_field, file_field = FORMS[path]
    parts = [
        Part(b"model", model.encode()),
        Part(text_field.encode(), b"en"),
        Part(file_field.encode(), draw(FILE_BYTES), b"a.png", b"image/png"),
    ]
    draw(st.randoms(use_true_random=False)).shuffle(parts)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        _bend(draw, parts)
    boundary = draw(BOUNDARIES)
    body = _encode(parts, boundary, crlf=draw(st.sampled_from([b"\r\n"] * 4 + [b"\n"])))
    body = _break(draw, body, boundary)
    return FormRequest(_content_type(draw, boundary), body)


def _bend(draw: st.DrawFn, parts: list[Part]) -> None:
    action = draw(
        st.sampled_from(
            ["drop", "odd value", "odd name", "as file", "repeat", "add", "rfc2231", "no quotes"]
        )
    )
    if not parts:
        parts.append(Part(draw(ODD_NAMES), draw(ODD_VALUES)))
        return
    part = draw(st.sampled_from(parts))
    if action == "drop":
        parts.remove(part)
    elif action == "odd value":
        part.value = draw(ODD_VALUES)
    elif action == "odd name":
        part.name = draw(ODD_NAMES)
    elif action == "as file":
        part.filename = draw(st.sampled_from([b"", b"m.txt", b"\xff.bin"]))
    elif action == "repeat":
        parts.append(Part(part.name, draw(ODD_VALUES | st.just(part.value))))
    elif action == "add":
        parts.insert(draw(st.integers(0, len(parts))), Part(draw(ODD_NAMES), draw(ODD_VALUES)))
    elif action == "rfc2231":  # the name in RFC 2231's encoded form
        part.disposition = b"form-data; name*=utf-8''" + part.name
    else:
        part.disposition = b"form-data; name=" + part.name


def _encode(parts: list[Part], boundary: bytes, crlf: bytes) -> bytes:
    delimiter = b"--" + boundary
    lines = [delimiter + crlf + part.encode().replace(b"\r\n", crlf) + crlf for part in parts]
    return b"".join(lines) + delimiter + b"--" + crlf


def _break(draw: st.DrawFn, body: bytes, boundary: bytes) -> bytes:
    damage = draw(st.sampled_from(DAMAGES))
    if damage == "truncate":
        return body[: draw(st.integers(min_value=0, max_value=max(len(body) - 1, 0)))]
    if damage == "unclosed":
        return body[: body.rfind(b"--" + boundary)]
    if damage == "preamble":
        return b"ignore me\r\n--" + boundary + b"x\r\n" + body
    if damage == "epilogue":
        return body + b"trailing\r\n--" + boundary + b"\r\n"
    if damage == "empty":
        return b""
    if damage == "countless parts":  # more than any real form has, before the rest
        part = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="a"\r\n\r\n\r\n'
        return part * 150 + body
    return body


def _content_type(draw: st.DrawFn, boundary: bytes) -> bytes:
    quoted = b'"' + boundary + b'"'
    plain = b"multipart/form-data; boundary="
    return draw(
        st.sampled_from(
            [
                plain + quoted,
                plain + quoted,
                plain + boundary,  # unquoted: wrong when it has spaces or specials
                b"Multipart/Form-Data; BOUNDARY=" + quoted,
                b"multipart/form-data",  # no boundary
                plain,  # an empty one
                plain + b'"other"',  # a boundary the body does not use
                b"multipart/form-data; charset=utf-8; boundary=" + quoted + b"; x=y",
                plain + quoted + b"; boundary=second",
                b"multipart/form-data; boundary*=utf-8''" + boundary,
                b"multipart/form-data;;;boundary=" + quoted,
                b"multipart/form-dataX; boundary=" + quoted,
                b"application/json",  # a form sent under the wrong type
            ]
        )
    )
