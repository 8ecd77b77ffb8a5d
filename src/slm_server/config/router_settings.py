"""Pydantic schema of the ``router:`` section of ``models.yaml``: the routing service's
settings and its API keys (see schema.py for the models and the whole file)."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from slm_server.config.store_url import parse_store_url

# What a browser sends as Origin: scheme://host[:port], nothing after.
_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]+")


def _budget(value: object) -> float | str | None:
    """One plain message for the union, instead of one per member."""
    if value is None or value == "auto":
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < float("inf"):
        return float(value)
    raise ValueError(f"must be a number of GB greater than 0, or auto (got {value!r})")


MemoryBudget = Annotated[float | Literal["auto"] | None, PlainValidator(_budget)]


# An environment variable's name, as api_key_env and key_env take it.
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EMPTY_KEY_SHA256 = hashlib.sha256(b"").hexdigest()
# A presented key is stripped of surrounding whitespace, so such a key could never match.
_SPACE_AROUND_KEY = (
    "starts or ends with whitespace (a space, a tab, a newline), which no request can send: "
    "remove it"
)


class ApiKey(BaseModel):
    """One API key the router accepts, and what it may use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1, description="Names the key in messages and logs; the key itself never is."
    )
    key_env: str | None = Field(
        default=None,
        min_length=1,
        description="Environment variable holding the key, read when the router starts.",
    )
    key_sha256: str | None = Field(
        default=None,
        description="The key's SHA-256 as 64 hex digits (see `slm-server hash-key`).",
    )
    # A SecretStr: the key stays in the loaded config for the process's life, and repr()
    # or a dump of the config (a log line, a traceback) must not show it.
    key: SecretStr | None = Field(
        default=None,
        description="The key itself, in the file (warned: prefer key_env or key_sha256).",
    )
    models: list[str] | None = Field(
        default=None, description="Model ids the key may use. Default: every model."
    )
    admin: bool = Field(default=False, description="May use the admin endpoints (load, unload).")

    @field_validator("key_sha256")
    @classmethod
    def _is_a_digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise ValueError(
                "must be 64 hex digits, the SHA-256 of the key (`slm-server hash-key` "
                f"prints it); got {len(value)} characters"
            )
        if value.lower() == _EMPTY_KEY_SHA256:
            raise ValueError("is the SHA-256 of an empty key, which anyone could send")
        return value.lower()

    # The messages never quote the value: it may be the key itself, pasted in by mistake.
    @field_validator("key_env")
    @classmethod
    def _is_a_variable_name(cls, value: str | None) -> str | None:
        if value is not None and not VARIABLE_NAME.fullmatch(value):
            raise ValueError(
                "must be the name of an environment variable (letters, digits and _, not "
                "starting with a digit), not the key itself"
            )
        return value

    @field_validator("key")
    @classmethod
    def _can_be_sent(cls, value: SecretStr | None) -> SecretStr | None:
        secret = None if value is None else value.get_secret_value()
        if secret == "":
            raise ValueError("must not be empty: an empty key is one anyone could send")
        if secret is not None and secret != secret.strip():
            raise ValueError(_SPACE_AROUND_KEY)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        given = [
            name for name in ("key_env", "key_sha256", "key") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            raise ValueError(
                f"key '{self.name}' needs exactly one of key_env, key_sha256 or key (got {got})"
            )
        return self


class RouterSettings(BaseModel):
    """Settings of the routing service itself (all optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="0.0.0.0", description="Address the router binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the router listens on.")
    max_body_mb: float = Field(
        default=64,
        gt=0,
        allow_inf_nan=False,
        description="Largest request body accepted, in MiB; larger -> 413.",
    )
    max_queue: int = Field(
        default=64,
        ge=0,
        description="Requests that may wait per model once max_concurrency is busy; more -> 429.",
    )
    health_timeout: float = Field(
        default=2.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a backend health probe may take.",
    )
    shutdown_grace_s: float = Field(
        default=10,
        ge=0,
        allow_inf_nan=False,
        description=(
            "On SIGTERM/SIGINT: seconds requests in flight may take to finish; those still "
            "running are then ended with an error, and the backends stopped."
        ),
    )
    body_timeout_s: float = Field(
        default=30,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds a request body may stop arriving before the request gets 408; after "
            "that long, the body must also arrive at 64 KiB/s on average."
        ),
    )
    max_inflight_body_mb: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Request body bytes the router holds at once, across all requests, in MiB; "
            "beyond it -> 503 with Retry-After. Default: twice max_body_mb (128 MiB)."
        ),
    )
    # A floor: a smaller store would be 0 bytes once counted, which cannot hold anything.
    response_store_mb: float = Field(
        default=256,
        ge=1 / 1024,
        allow_inf_nan=False,
        description=(
            "Memory for earlier /v1/responses turns (previous_response_id), in MiB (at "
            "least 1/1024, one KiB); the least recently used go first."
        ),
    )
    response_store_url: str | None = Field(
        default=None,
        description=(
            "Keep earlier /v1/responses turns in Redis instead of this router's memory, so "
            "several routers continue each other's conversations: "
            "redis://[user@]host[:port][/db], or rediss://... for TLS. Default: in memory."
        ),
    )
    response_store_password_env: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Environment variable holding the Redis password, read when the router starts "
            "(better than a password written in response_store_url)."
        ),
    )
    response_store_ttl_s: float = Field(
        default=86400,
        gt=0,
        allow_inf_nan=False,
        description=(
            "With response_store_url: seconds Redis keeps each stored turn (every turn of a "
            "conversation is stored anew, so an active one lives on). Default: one day."
        ),
    )

    memory_budget_gb: MemoryBudget = Field(
        default=None,
        description=(
            "Memory the running backends may take together, in GB (10^9 bytes), or `auto`: "
            "physical memory less a reserve of 10% (at least 2 GB). Idle backends are "
            "stopped to make room, least recently used first. Default: no budget."
        ),
    )
    max_loaded_models: int | None = Field(
        default=None, ge=1, description="At most this many backends running at once."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description=(
            "Web pages allowed to call the router from a browser, by origin "
            '(`https://app.example.com`, `http://localhost:3000`), or ["*"] for any. '
            "Default: none (no CORS headers; browsers refuse cross-origin calls)."
        ),
    )
    access_log: bool = Field(
        default=True,
        description=(
            "Log one line per request once it ends, on the `slm_server.access` logger "
            "(GET /health excepted)."
        ),
    )

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port], without a path "
                    'or a trailing slash (e.g. https://app.example.com), or "*"'
                )
        # Browsers send the scheme and host in lower case.
        return [origin.lower() for origin in origins]

    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description=(
            "Keys a client must send (`Authorization: Bearer <key>` or `x-api-key: <key>`) "
            "for every endpoint but /health. Default: none, and no key is asked for."
        ),
    )
    metrics_public: bool = Field(
        default=False,
        description="With api_keys: /metrics answers without a key (else it needs an admin key).",
    )

    @field_validator("api_keys")
    @classmethod
    def _unique_names(cls, keys: list[ApiKey]) -> list[ApiKey]:
        names = [key.name for key in keys]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            used = ", ".join(repeated)
            raise ValueError(f"each key needs a name of its own; used more than once: {used}")
        return keys

    @field_validator("response_store_url")
    @classmethod
    def _store_url(cls, url: str | None) -> str | None:
        if url is not None:
            parse_store_url(url)  # its messages never quote the URL: it may hold a password
        return url

    @field_validator("response_store_password_env")
    @classmethod
    def _password_variable(cls, value: str | None) -> str | None:
        if value is not None and not VARIABLE_NAME.fullmatch(value):
            raise ValueError(
                "must be the name of an environment variable (letters, digits and _, not "
                "starting with a digit), not the password itself"
            )
        return value

    @model_validator(mode="after")
    def _one_store_password(self) -> RouterSettings:
        if self.response_store_password_env is None:
            return self
        if self.response_store_url is None:
            raise ValueError("response_store_password_env applies with response_store_url only")
        if parse_store_url(self.response_store_url).has_password:
            raise ValueError(
                "the Redis password is given twice: in response_store_url and by "
                "response_store_password_env; keep response_store_password_env"
            )
        return self

    @field_validator("max_inflight_body_mb")
    @classmethod
    def _holds_the_largest_body(cls, value: float | None, info: ValidationInfo) -> float | None:
        largest = info.data.get("max_body_mb")
        if value is not None and largest is not None and value < largest:
            raise ValueError(
                f"{value:g} is below max_body_mb ({largest:g}): a body of the largest "
                "accepted size could never be held"
            )
        return value

    @property
    def inflight_body_bytes(self) -> int:
        """The body budget in bytes (``max_inflight_body_mb``, or twice ``max_body_mb``)."""
        megabytes = self.max_inflight_body_mb or 2 * self.max_body_mb
        return int(megabytes * 1024 * 1024)
