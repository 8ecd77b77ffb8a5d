"""Which API key a request carries, and whether it may do what it asks.

Only asked when ``router.api_keys`` is set; the key is read from ``Authorization: Bearer``
(the OpenAI SDKs) or ``x-api-key`` (the Anthropic SDK), whichever holds a valid one.
Messages name the key by its configured name, never by the key itself.
"""

from __future__ import annotations

from slm_server.auth import Grant, KeyRing
from slm_server.router.errors import AdminRequired, InvalidApiKey, ModelNotAllowed


def grant_of(ring: KeyRing, bearer: bytes | None, api_key: bytes | None) -> Grant:
    """The grant of the key presented as a ``bearer`` token or as ``api_key`` (see
    read_head), whichever is valid; InvalidApiKey (401) when neither is."""
    if bearer is not None:
        grant = ring.grant(bearer)
        if grant is not None:
            return grant
    if api_key is not None:
        grant = ring.grant(api_key)
        if grant is not None:
            return grant
    if bearer is None and api_key is None:
        raise InvalidApiKey(
            "this server needs an API key: send it as `Authorization: Bearer <key>` "
            "or `x-api-key: <key>`"
        )
    raise InvalidApiKey("the API key is not valid")


def require_model(grant: Grant, model: str) -> None:
    """ModelNotAllowed (403) unless ``grant`` may use ``model``."""
    models = grant.models
    if models is not None and model not in models:  # grant.allows, without its call
        allowed = ", ".join(sorted(grant.models or ())) or "none"
        raise ModelNotAllowed(
            f"the API key '{grant.name}' may not use model '{model}'; it may use: {allowed}",
            param="model",
        )


def require_admin(grant: Grant, what: str) -> None:
    """AdminRequired (403) unless ``grant`` is an admin key; ``what`` needs one."""
    if not grant.admin:
        raise AdminRequired(
            f"the API key '{grant.name}' is not an admin key; {what} needs one "
            "(`admin: true` under router.api_keys)"
        )
