"""Token counts from the ``usage`` a backend reports at the end of its answer.

Only what was sent is read, never re-tokenised: the last ``"usage"`` object in the last
few KiB of the answer (a JSON answer's end, or a stream's last events, where a chat
stream asked with ``stream_options.include_usage`` puts it). Both spellings count: Chat
Completions' prompt/completion tokens and Responses' or Messages' input/output tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec

# How much of an answer's end is searched: a usage object and what servers put after it
# (llama-server: its timings) fit many times over; a large answer is never scanned whole.
TAIL_BYTES = 4096

# The object after a "usage" key, nested objects (token details) one level deep. Inside a
# JSON string a quote is escaped, so `"usage"` followed by a colon is a key.
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*(\{[^{}]*+(?:\{[^{}]*+\}[^{}]*+)*+\})')


class _Reported(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    # Messages' input_tokens leave out the prompt tokens read from or written to the
    # backend's cache; these give them, so that a prompt counts whole as in Chat.
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


class _Answer(msgspec.Struct):
    """A JSON answer as far as its tokens go: its other fields are skipped unread."""

    usage: _Reported | None = None


_decode = msgspec.json.Decoder(_Reported).decode
_decode_answer = msgspec.json.Decoder(_Answer).decode


def answer_tail(earlier: Sequence[bytes], latest: bytes) -> bytes:
    """The last ``TAIL_BYTES`` of an answer whose body ends with the pieces ``earlier``
    then ``latest``; only that much is copied, however large the pieces."""
    wanted = TAIL_BYTES - len(latest)
    if wanted <= 0:
        return latest[-TAIL_BYTES:]
    parts = [latest]
    for piece in reversed(earlier):
        if len(piece) >= wanted:
            parts.append(piece[-wanted:])
            break
        parts.append(piece)
        wanted -= len(piece)
    return b"".join(reversed(parts))


def answer_usage(first: bytes, tail: bytes) -> tuple[int, int] | None:
    """The tokens an answer reported, from its ``first`` body piece and its ``tail``.

    A Messages stream gives its input tokens in its first event (message_start) and its
    output tokens in its last usage (message_delta); when that last usage has no input
    count, the first piece's is taken. Other answers give both at the end.
    """
    usage = reported_usage(tail)
    if usage is None or usage[0] or first is tail:
        return usage
    head = reported_usage(first[:TAIL_BYTES])
    return usage if head is None else (head[0], usage[1])


def whole_answer_usage(body: bytes) -> tuple[int, int] | None:
    """The tokens of an answer sent whole in one piece (not a stream), as ``reported_usage``.

    A small JSON object is decoded whole for its top-level ``usage``: measured, less than
    half the cost of searching it for the key and decoding the object found (which stays
    the way for anything else: an answer too large, or not such an object).
    """
    if len(body) <= TAIL_BYTES:
        try:
            return _counts(_decode_answer(body).usage)
        except msgspec.DecodeError:  # not a JSON object, or a usage that is not counts
            pass
    return reported_usage(body)


def reported_usage(tail: bytes) -> tuple[int, int] | None:
    """The (prompt, completion) tokens of the last usage object in ``tail`` (0 for a kind
    it does not give); None if there is none."""
    at = tail.rfind(b'"usage"')
    if at < 0:
        return None
    match = _USAGE_OBJECT.match(tail, at)
    if match is None:  # cut off by the window's start, or not an object (null)
        return None
    try:
        reported = _decode(match.group(1))
    except msgspec.DecodeError:  # a count that is not an integer: nothing to trust
        return None
    return _counts(reported)


def _counts(reported: _Reported | None) -> tuple[int, int] | None:
    """(prompt, completion) of a usage object, 0 for a kind it does not give."""
    if reported is None:
        return None
    if reported.input_tokens is not None:
        cached = reported.cache_read_input_tokens + reported.cache_creation_input_tokens
        prompt = reported.input_tokens + cached
    else:
        prompt = reported.prompt_tokens or 0
    completion = reported.output_tokens or reported.completion_tokens or 0
    return prompt, completion
