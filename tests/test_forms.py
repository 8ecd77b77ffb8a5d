"""Finding the `model` field of an upload's multipart form."""

from __future__ import annotations

import pytest

from slm_server.router.errors import InvalidRequest
from slm_server.router.forms import form_model, with_form_model

TYPE = "multipart/form-data; boundary=XyZ"


def form(*parts: bytes, preamble: bytes = b"") -> bytes:
    body = preamble + b"".join(b"--XyZ\r\n" + part + b"\r\n" for part in parts)
    return body + b"--XyZ--\r\n"


def field(name: str, value: bytes, extra: str = "") -> bytes:
    return f'Content-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode() + value


FILE_WITH_BOUNDARY_LOOKALIKES = (
    b"RIFF\r\n--XyZ-is-not-a-delimiter\r\n--XyZ \tx\r\n\r\n" + bytes(range(256)) * 40
)


def test_model_after_a_file_that_holds_boundary_lookalikes() -> None:
    body = form(
        field("file", FILE_WITH_BOUNDARY_LOOKALIKES, '; filename="model.wav"'),
        field("model", b"whisper"),
    )
    assert form_model(TYPE, body) == "whisper"


def test_the_model_field_is_renamed_and_every_other_byte_kept() -> None:
    upload = field("file", FILE_WITH_BOUNDARY_LOOKALIKES, '; filename="model.wav"')
    body = form(upload, field("model", b"my-stt"), field("language", b"en"))
    renamed = with_form_model(TYPE, body, "whisper-1")
    assert renamed == form(upload, field("model", b"whisper-1"), field("language", b"en"))
    assert form_model(TYPE, renamed) == "whisper-1"


def test_preamble_quoted_boundary_and_padding() -> None:
    body = form(field("model", b" whisper\r\n"), preamble=b"ignored --XyZ text\r\n")
    body = body.replace(b"--XyZ\r\n", b"--XyZ  \r\n")  # transport padding after a delimiter
    assert form_model('multipart/form-data; boundary="XyZ"', body) == "whisper"


def test_form_without_model() -> None:
    assert form_model(TYPE, form(field("file", b"abc", '; filename="a.wav"'))) is None


@pytest.mark.parametrize(
    ("content_type", "body", "complaint"),
    [
        ("multipart/form-data", form(field("model", b"w")), "needs a boundary"),
        (TYPE, b"model=whisper", "none of its boundary lines"),
        (TYPE, b"--XyZ\r\n" + field("model", b"whisper"), "ends inside a part"),
        (TYPE, form(field("model", b"x", '; filename="m.bin"')), "is a file"),
        (TYPE, form(field("model", b"x" * 300)), "too long"),
    ],
)
def test_forms_that_cannot_be_routed_are_a_clear_400(
    content_type: str, body: bytes, complaint: str
) -> None:
    with pytest.raises(InvalidRequest, match=complaint) as refused:
        form_model(content_type, body)
    assert refused.value.status == 400


def test_a_form_of_countless_parts_is_refused_before_its_model_is_looked_for() -> None:
    # 49 MB of such parts kept the router's event loop (every other client) busy for 21 s
    parts = [field("a", b"")] * 10_000
    with pytest.raises(InvalidRequest, match="more than 100 parts") as refused:
        form_model(TYPE, form(*parts, field("model", b"whisper")))
    assert refused.value.status == 400


def test_part_headers_beyond_any_real_forms_are_refused() -> None:
    # 16 MB of short header lines took 5 s to parse, on the event loop
    heavy = b"X-A: a\r\n" * 5_000 + field("a", b"")
    with pytest.raises(InvalidRequest, match="part headers") as refused:
        form_model(TYPE, form(heavy, field("model", b"whisper")))
    assert refused.value.status == 400


def test_a_usual_upload_form_stays_within_the_bounds() -> None:
    images = [field("image[]", b"\x89PNG" * 1000, f'; filename="{i}.png"') for i in range(16)]
    text = [field(name, b"v") for name in ("prompt", "size", "n", "quality", "user")]
    assert form_model(TYPE, form(*images, *text, field("model", b"edit"))) == "edit"
