"""The headers the router reads itself, found in one pass: the first of each counts."""

from __future__ import annotations

from slm_server.router.request_head import read_head

SDK_HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"accept", b"application/json"),
    (b"content-type", b"application/json"),
    (b"user-agent", b"OpenAI/Python 1.0"),
    (b"x-stainless-lang", b"python"),
]


def test_a_plain_request_has_none_of_them() -> None:
    assert read_head(SDK_HEADERS) == (None, None, None, None)


def test_each_is_found_wherever_it_is() -> None:
    headers = [
        (b"origin", b"https://app.example"),
        *SDK_HEADERS,
        (b"x-api-key", b" sk-anthropic "),
        (b"authorization", b"Bearer sk-openai"),
        (b"x-request-id", b"trace-1"),
    ]
    assert read_head(headers) == (b"trace-1", b"sk-openai", b"sk-anthropic", b"https://app.example")


def test_the_first_of_each_counts() -> None:
    headers = [
        (b"x-request-id", b"first"),
        (b"x-request-id", b"second"),
        (b"origin", b"https://one.example"),
        (b"origin", b"https://two.example"),
        (b"x-api-key", b"key-1"),
        (b"x-api-key", b"key-2"),
    ]
    assert read_head(headers) == (b"first", None, b"key-1", b"https://one.example")


def test_a_bearer_token_is_the_first_non_empty_one_of_the_bearer_scheme() -> None:
    headers = [
        (b"authorization", b"Basic YWxpY2U6c2VjcmV0"),  # another scheme: no key
        (b"authorization", b"Bearer   "),  # empty: no key
        (b"authorization", b"bEaReR  sk-1 "),  # the scheme's name in any case
        (b"authorization", b"Bearer sk-2"),
    ]
    assert read_head(headers)[1] == b"sk-1"


def test_an_empty_api_key_counts_as_none() -> None:
    assert read_head([(b"x-api-key", b"  "), (b"x-api-key", b"k")])[2] == b"k"
