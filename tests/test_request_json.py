"""Reading ``model`` from a request body without building the rest of it."""

from __future__ import annotations

import json

import pytest

from slm_server.router.errors import InvalidRequest
from slm_server.router.request_json import model_of, parse_object


@pytest.mark.parametrize(
    ("body", "model"),
    [
        (b'{"model": "m", "messages": []}', "m"),
        (b'{"input": ["a", {"b": [1, 2.5, null, true]}], "model": "last"}', "last"),
        (b'  {"model": "spaced"}\n', "spaced"),
        (b'{"nested": {"model": "inner"}, "model": "outer"}', "outer"),
        (b'{"nested": {"model": "inner"}}', None),
        (b'{"model": 7}', 7),
        ('{"input": "héllo ☃", "model": "ü"}'.encode(), "ü"),
    ],
)
def test_the_top_level_model_is_found(body: bytes, model: object) -> None:
    assert model_of(body) == model
    assert model == json.loads(body).get("model")  # the same answer as building it all


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"model": "m", ', "not valid JSON"),
        (b'{"x": [1, 2,], "model": "m"}', "not valid JSON"),  # broken where it is skipped
        (b'{"model": "m"} trailing', "not valid JSON"),
        (b'{"x": "\xff", "model": "m"}', "not valid JSON"),  # not UTF-8, where it is skipped
        (b'{"x": "' + b"\xc3\xa9" * 700_000 + b'\xc3", "model": "m"}', "not valid JSON"),
        (b'["m"]', "JSON object"),
        (b'"m"', "JSON object"),
        (b"", "not valid JSON"),
    ],
)
def test_a_malformed_body_is_a_400_saying_why(body: bytes, fragment: str) -> None:
    with pytest.raises(InvalidRequest, match=fragment):
        model_of(body)


def test_a_character_split_across_slices_is_still_utf8() -> None:
    # 2-byte characters from an odd offset: a slice boundary falls inside one of them.
    body = b'{"model": "m", "x": "a' + "é".encode() * 800_000 + b'"}'
    assert model_of(body) == "m"


def test_the_whole_document_when_it_is_needed() -> None:
    assert parse_object(b'{"model": "m", "n": [1]}') == {"model": "m", "n": [1]}
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_object(b"[1]")
