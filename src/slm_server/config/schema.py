"""Pydantic schema of ``models.yaml``: each model's entry and the whole file (the
``router:`` section is in router_settings.py).

Every field of the user's contract lives in one of the two, with a description that the
example config and ``--help`` texts draw on. Unknown keys are errors
(``extra="forbid"``) so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from slm_server.config.base_url import BaseUrl, BaseUrlError, parse_base_url
from slm_server.config.command_line import CommandLineError, stop_signal_name, used_placeholders
from slm_server.config.router_settings import VARIABLE_NAME, RouterSettings

Backend = Literal["mlx", "llamacpp", "command", "openai"]
ModelType = Literal[
    "lm", "multimodal", "image-generation", "image-edit", "embeddings", "rerank", "whisper"
]
# The kinds slm_server knows how to launch itself: they need a model file and its quantization.
BUILT_IN_BACKENDS = frozenset({"mlx", "llamacpp"})
# A server slm_server does not start: it only sends it requests.
REMOTE_BACKENDS = frozenset({"openai"})

# Which model types each backend kind can serve. llama.cpp has no image or
# audio servers; MLX (mlx-openai-server) has no reranker; a command serves what
# its entry says, since only its user knows what the program is.
SUPPORTED_MODEL_TYPES: dict[str, frozenset[str]] = {
    "llamacpp": frozenset({"lm", "multimodal", "embeddings", "rerank"}),
    "mlx": frozenset(
        {"lm", "multimodal", "image-generation", "image-edit", "embeddings", "whisper"}
    ),
    "command": frozenset(typing.get_args(ModelType)),
    "openai": frozenset(typing.get_args(ModelType)),
}
# Endpoints the router can convert to chat completions; a command's server is sent them
# natively only when its entry lists them in ``native_endpoints``.
BridgedEndpoint = Literal["/v1/responses", "/v1/messages", "/v1/messages/count_tokens"]

MLX_ONLY_FIELDS = ("enable_auto_tool_choice", "tool_call_parser", "reasoning_parser", "config_name")
LLAMACPP_ONLY_FIELDS = (
    "chat_template_kwargs",
    "chat_template_file",
    "temp",
    "top_p",
    "top_k",
    "min_p",
    "cache_type_k",
    "cache_type_v",
    "flash_attn",
    "kv_unified",
    "fit",
    "pooling",
)
COMMAND_ONLY_FIELDS = ("command", "env", "ready_timeout_s", "stop_signal")
OPENAI_ONLY_FIELDS = ("base_url", "base_urls", "api_key_env", "upstream_model", "tls_verify")
# How requests spread over several upstreams (replicas or base_urls); retries and
# fallbacks apply to one upstream too.
SPREAD_FIELDS = ("balance", "affinity", "cooldown_after", "cooldown_s")
MAX_REPLICAS = 64
# Read by both kinds whose server the router knows only from its entry.
COMMAND_AND_OPENAI_FIELDS = ("health_path", "native_endpoints")
# What only a server slm_server starts can use; an openai entry's are ignored.
LIFECYCLE_FIELDS = ("on_demand", "idle_ttl_s", "pinned", "memory_gb")
# What a server slm_server starts listens on; an openai entry's server is in base_url.
LISTEN_FIELDS = ("port", "host")


def _number_as_text(value: object) -> object:
    # YAML reads `[-ngl, 99]` as a string and an int; on a command line both are text.
    # A bool stays a bool (and an error): YAML's `on`/`yes` are rarely meant as words.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


CommandLineArg = Annotated[str, BeforeValidator(_number_as_text)]


def _required_by_local(value: object, info: ValidationInfo) -> object:
    """Missing for every kind slm_server starts; optional for openai (it runs elsewhere)."""
    if value is None and info.data.get("backend", "openai") not in REMOTE_BACKENDS:
        raise PydanticCustomError("missing", "Field required")
    return value


def _required_by_built_in(value: object, info: ValidationInfo) -> object:
    """Missing for mlx and llamacpp, whose launch needs it; optional for a command."""
    if value is None and info.data.get("backend", "command") in BUILT_IN_BACKENDS:
        # The same error as any required field's, so the message reads the same.
        raise PydanticCustomError("missing", "Field required")
    return value


def _http_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a URL path; it starts with / (e.g. /health)")
    return value


class ModelEntry(BaseModel):
    """One backend server instance serving one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Common fields.
    id: str = Field(
        min_length=1,
        description="Model identifier clients put in the request's `model` field.",
    )
    backend: Backend = Field(
        description=(
            "Backend kind: `mlx`, `llamacpp`, `command` (any server, by its command line), "
            "or `openai` (an OpenAI-compatible server slm_server does not start)."
        )
    )
    port: Annotated[int | None, AfterValidator(_required_by_local)] = Field(
        default=None,
        validate_default=True,
        description=(
            "Port of this model's backend server; unique per entry. Required for every "
            "backend but openai, whose port is in base_url."
        ),
    )
    model_path: Annotated[str | None, AfterValidator(_required_by_built_in)] = Field(
        default=None,
        min_length=1,
        validate_default=True,
        description=(
            "Local .gguf file, a directory (llamacpp: its first .gguf alphabetically, "
            "projector files aside), or a Hugging Face model ID (MLX, command). "
            "Required for mlx and llamacpp; for a command, what {model_path} stands for."
        ),
    )
    default_timeout: float = Field(
        gt=0, description="Request timeout in seconds; exceeded requests get 504."
    )
    quantization: Annotated[str | None, AfterValidator(_required_by_built_in)] = Field(
        default=None,
        validate_default=True,
        description=(
            "e.g. 8bit, Q8_0, f16. Informational for MLX and command; KV-cache defaults for "
            "llamacpp. Required for mlx and llamacpp."
        ),
    )
    model_type: ModelType = Field(default="lm", description="What the model does.")
    context_length: int | None = Field(
        default=None, gt=0, description="Maximum context length; the model's default when unset."
    )
    max_concurrency: int = Field(
        default=1, ge=1, description="Requests served at once; more wait in a bounded queue."
    )
    host: str = Field(default="0.0.0.0", description="Address the backend server binds to.")
    enabled: bool = Field(default=True, description="false: not started and not routed.")
    supports_function_calling: bool = Field(default=False, description="Reported in /v1/models.")
    on_demand: bool = Field(
        default=False,
        description="Not started at launch: started by the first request or load call.",
    )
    idle_ttl_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Stopped after this many seconds with nothing in flight or waiting; the next "
            "request starts it again. Default: never."
        ),
    )
    pinned: bool = Field(default=False, description="Never stopped to make room for another model.")
    memory_gb: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Memory the running backend needs, in GB (10^9 bytes); replaces the estimate "
            "from its files."
        ),
    )
    extra_args: list[CommandLineArg] = Field(
        default_factory=list,
        description=(
            "Appended to the backend's command line, for flags no field names "
            "(e.g. [-ngl, 99, --threads, 4]); a flag a field sets is an error."
        ),
    )

    # MLX only (mlx-openai-server launch).
    enable_auto_tool_choice: bool = Field(
        default=False, description="MLX: pass --enable-auto-tool-choice."
    )
    tool_call_parser: str | None = Field(default=None, description="MLX: tool-call parser name.")
    reasoning_parser: str | None = Field(
        default=None, description="MLX: reasoning parser; null disables thinking mode."
    )
    config_name: str | None = Field(
        default=None,
        description=(
            "MLX: config for image-generation (default flux-schnell) "
            "or image-edit (default flux-kontext-dev)."
        ),
    )

    # llama.cpp only (llama-server or llama_cpp.server).
    mmproj: str | None = Field(
        default=None,
        description=(
            "llamacpp multimodal: the projector .gguf, passed as --mmproj; resolved like "
            "model_path. Default: the .gguf named *mmproj* in model_path's directory."
        ),
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None,
        description=(
            "llamacpp: passed as --chat-template-kwargs, and injected into chat requests "
            "that carry none."
        ),
    )
    chat_template_file: str | None = Field(
        default=None,
        description="llamacpp: --chat-template-file; relative paths resolve against the repo root.",
    )
    temp: float | None = Field(default=None, ge=0, description="llamacpp: default temperature.")
    top_p: float | None = Field(default=None, ge=0, le=1, description="llamacpp: default top_p.")
    top_k: int | None = Field(default=None, ge=0, description="llamacpp: default top_k.")
    min_p: float | None = Field(default=None, ge=0, le=1, description="llamacpp: default min_p.")
    cache_type_k: str | None = Field(
        default=None, description="llamacpp: K cache type (q8_0, f16, ...)."
    )
    cache_type_v: str | None = Field(
        default=None, description="llamacpp: V cache type (q8_0, f16, ...)."
    )
    flash_attn: bool | None = Field(default=None, description="llamacpp: flash attention on/off.")
    kv_unified: bool | None = Field(
        default=None, description="llamacpp: unified KV cache (native llama-server only)."
    )
    fit: bool | None = Field(
        default=None, description="llamacpp: --fit (native llama-server only)."
    )
    pooling: Literal["mean", "cls", "last"] | None = Field(
        default=None,
        description=(
            "llamacpp embeddings: --pooling; default: the model's own, or mean for a model "
            "whose GGUF declares none (native llama-server only)."
        ),
    )

    # backend: command only (any server slm_server starts and supervises).
    command: list[CommandLineArg] | None = Field(
        default=None,
        min_length=1,
        validate_default=True,
        description=(
            "command: the server's command line, one list item per argument, e.g. "
            "[vllm, serve, '{model_path}', --port, '{port}']. Placeholders: {port}, {host}, "
            "{model_path}, {id}, {context_length}; {{ and }} stand for braces."
        ),
    )
    env: dict[str, CommandLineArg] = Field(
        default_factory=dict,
        description="command: environment variables added to the server's environment.",
    )
    health_path: Annotated[str, AfterValidator(_http_path)] = Field(
        default="/health",
        description=(
            "command, openai: the path that answers 200 once the server is ready to serve "
            "(for openai, e.g. /v1/models for a server without /health)."
        ),
    )
    ready_timeout_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "command: seconds the server may take to become ready before the start counts "
            "as failed. Default: 600, as for every backend."
        ),
    )
    stop_signal: str = Field(
        default="SIGTERM",
        description=(
            "command: the signal that asks the server to stop (SIGTERM, SIGINT, SIGQUIT, "
            "SIGHUP, SIGUSR1, SIGUSR2, SIGKILL); SIGKILL follows if it has not stopped in 10 s."
        ),
    )
    native_endpoints: list[BridgedEndpoint] = Field(
        default_factory=list,
        description=(
            "command, openai: which of /v1/responses, /v1/messages and /v1/messages/count_tokens "
            "the server answers itself. Default: none; the router converts them to "
            "/v1/chat/completions. Every other endpoint is sent to the server as it is."
        ),
    )

    # backend: openai only (a server slm_server does not start).
    base_url: str | None = Field(
        default=None,
        description=(
            "openai: the server's address as the OpenAI SDKs take it, e.g. "
            "http://gpu-1:8000/v1 or https://api.example.com/v1 (no path means /v1)."
        ),
    )
    base_urls: list[str] | None = Field(
        default=None,
        min_length=1,
        description=(
            "openai: several servers of the same model (replicas), each written as base_url "
            "is; requests are spread over them. Instead of base_url."
        ),
    )
    api_key_env: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "openai: environment variable holding the key the server asks for, sent as "
            "`Authorization: Bearer`; a client's own key is never sent to it."
        ),
    )
    upstream_model: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "openai: the name the server knows the model by, when it is not `id`; requests "
            "are sent with it, and answers name `id` again."
        ),
    )
    tls_verify: bool | str = Field(
        default=True,
        description=(
            "openai, https: check the server's certificate against the system's CAs (true), "
            "against a CA file (its path), or not at all (false)."
        ),
    )

    # Several upstreams of one model: replicas started here, or base_urls elsewhere.
    replicas: int = Field(
        default=1,
        ge=1,
        le=MAX_REPLICAS,
        description=(
            "llamacpp, mlx, command: how many servers of this model to run, on ports "
            "port..port+replicas-1; requests are spread over them. Each counts as a loaded "
            "model and needs its memory."
        ),
    )
    balance: Literal["least_busy", "round_robin"] = Field(
        default="least_busy",
        description=(
            "Several upstreams: send each request to the one with the fewest requests in "
            "flight (ties take turns), or to each in turn."
        ),
    )
    affinity: Literal["session"] | None = Field(
        default=None,
        description=(
            "Several upstreams: `session` keeps requests with the same x-session-id header, "
            "previous_response_id or user on one upstream while it is up (its prompt cache)."
        ),
    )
    retries: int = Field(
        default=1,
        ge=0,
        le=10,
        description=(
            "More attempts of a request on another upstream (or a fallback) when one fails "
            "before any of its answer was sent: refused or reset, or it answered 502, 503 "
            "or 429. Always within the request's default_timeout."
        ),
    )
    cooldown_after: int = Field(
        default=3,
        ge=1,
        description=(
            "Several upstreams: consecutive failures that take an upstream out of rotation."
        ),
    )
    cooldown_s: float = Field(
        default=30,
        ge=0,
        allow_inf_nan=False,
        description=(
            "Several upstreams: seconds an upstream stays out; then one request probes it, "
            "and it is back if that one is answered."
        ),
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description=(
            "Other models' ids, tried in order when no upstream of this one can take a "
            "request (all down or cooling, queue full, no memory) or its retries ran out."
        ),
    )

    # Set on the entries a replicated one becomes (see replicas.py), never from the file.
    _replica_group: str | None = PrivateAttr(default=None)
    _replica: int | None = PrivateAttr(default=None)

    @field_validator("base_url")
    @classmethod
    def _reachable_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_base_url(value)
            except BaseUrlError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("api_key_env")
    @classmethod
    def _key_variable(cls, value: str | None) -> str | None:
        if value is not None and not VARIABLE_NAME.fullmatch(value):
            raise ValueError(
                "must be the name of an environment variable (letters, digits and _, not "
                "starting with a digit), not the key itself"
            )
        return value

    @field_validator("tls_verify")
    @classmethod
    def _ca_file_named(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must be true, false, or the path of a CA file")
        return value

    @model_validator(mode="after")
    def _one_upstream(self) -> ModelEntry:
        if self.backend != "openai":
            return self
        if self.base_url is not None and self.base_urls is not None:
            raise ValueError("give base_url (one server) or base_urls (several), not both")
        if self.base_url is None and self.base_urls is None:
            raise ValueError("an openai entry needs base_url, e.g. http://gpu-1:8000/v1")
        if self.replicas != 1:
            raise ValueError(
                "replicas starts servers here; an openai entry's servers run elsewhere: "
                "list each one in base_urls"
            )
        return self

    @field_validator("base_urls")
    @classmethod
    def _reachable_urls(cls, urls: list[str] | None) -> list[str] | None:
        if urls is None:
            return None
        seen: dict[BaseUrl, int] = {}
        for index, value in enumerate(urls):
            try:
                url = parse_base_url(value)
            except BaseUrlError as exc:
                raise ValueError(f"item {index}: {exc}") from None
            if url in seen:
                raise ValueError(
                    f"item {index} is the same server as item {seen[url]}: "
                    "each replica is listed once"
                )
            seen[url] = index
        return urls

    @model_validator(mode="after")
    def _replica_ports_exist(self) -> ModelEntry:
        if self.replicas > 1 and self.port is not None and self.port + self.replicas - 1 > 65535:
            raise ValueError(
                f"replicas {self.replicas} from port {self.port} would need ports past 65535"
            )
        return self

    @field_validator("fallbacks")
    @classmethod
    def _each_fallback_once(cls, ids: list[str]) -> list[str]:
        repeated = sorted({model for model in ids if ids.count(model) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once")
        return ids

    @field_validator("command")
    @classmethod
    def _command_can_run(cls, argv: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if argv is None:
            if info.data.get("backend") == "command":
                raise PydanticCustomError("missing", "Field required")
            return None
        if not argv[0].strip():
            raise ValueError("the first item, the program to run, is empty")
        try:
            used = used_placeholders(argv)
        except CommandLineError as exc:
            raise ValueError(str(exc)) from None
        # Fields declared before `command` are in info.data once they validated.
        for name in ("model_path", "context_length"):
            if name in used and name in info.data and info.data[name] is None:
                raise ValueError(f"{{{name}}} is used, but the entry sets no {name}")
        return argv

    @field_validator("env")
    @classmethod
    def _can_be_set(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"{name!r} cannot be the name of an environment variable")
        return env

    @field_validator("stop_signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        return stop_signal_name(value)

    @model_validator(mode="after")
    def _pinned_never_idles_out(self) -> ModelEntry:
        if self.pinned and self.idle_ttl_s is not None:
            raise ValueError(
                "pinned and idle_ttl_s contradict each other: a pinned entry is never "
                "stopped; drop one of them"
            )
        return self

    @property
    def replica_group(self) -> str | None:
        """The role this entry is a replica of (None: an entry with one upstream)."""
        return self._replica_group

    @property
    def replica(self) -> int | None:
        """Which replica of its group this entry is, from 0 (None: not a replica)."""
        return self._replica

    @property
    def upstream_count(self) -> int:
        """How many servers the entry as written stands for."""
        return len(self.base_urls) if self.base_urls is not None else self.replicas

    @property
    def started_here(self) -> bool:
        """Whether slm_server runs this entry's server (False: it runs elsewhere)."""
        return self.backend not in REMOTE_BACKENDS

    @property
    def local_port(self) -> int:
        """The port of a server slm_server starts (every kind but openai has one)."""
        if self.port is None:
            raise ValueError(f"{self.id}: backend {self.backend} has no port of its own")
        return self.port

    @property
    def remote_url(self) -> BaseUrl | None:
        """Where an openai entry's server is; None for a server slm_server starts."""
        if self.backend not in REMOTE_BACKENDS or self.base_url is None:
            return None
        return parse_base_url(self.base_url)

    @property
    def connect_host(self) -> str:
        """Address the router uses to reach the backend: loopback for wildcard binds."""
        if self.host in ("0.0.0.0", "", "*"):
            return "127.0.0.1"
        if self.host == "::":
            return "::1"
        return self.host

    @property
    def server_url(self) -> str:
        """Where the router reaches the server, for messages: http://127.0.0.1:8081, or an
        openai entry's base_url."""
        remote = self.remote_url
        if remote is not None:
            return str(remote)
        host = self.connect_host
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


class ConfigFile(BaseModel):
    """The whole ``models.yaml`` file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[str, ModelEntry] = Field(
        description="Role name -> model entry. The role name keys /v1/backends/health."
    )
    router: RouterSettings = Field(
        default_factory=RouterSettings, description="Routing service settings."
    )

    @field_validator("models")
    @classmethod
    def _one_role_per_server(cls, models: dict[str, ModelEntry]) -> dict[str, ModelEntry]:
        # Imported here: the expansion builds on this module's ModelEntry.
        from slm_server.config.replicas import expand_replicas

        return expand_replicas(models)
