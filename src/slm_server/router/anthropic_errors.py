"""Errors in Anthropic's shape, for the endpoints that speak its Messages protocol."""

from __future__ import annotations

import json

from slm_server.translate import anthropic_response

ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})


def anthropic_error_payload(status: int, payload: bytes) -> bytes:
    """A backend's (OpenAI-shaped, or any) error body in Anthropic's error shape."""
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        converted = anthropic_response.openai_error_to_anthropic(status, parsed)
    else:
        text = payload.decode("utf-8", errors="replace")[:500] or f"backend error {status}"
        converted = anthropic_response.error_body(status, text)
    return json.dumps(converted).encode()
