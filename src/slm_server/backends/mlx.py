"""MLX: ``mlx-openai-server launch``, or ``mlx_lm.server`` for lm models where only mlx-lm exists.

mlx-openai-server's flags changed across versions (``--max-concurrency`` was
replaced by ``--decode-concurrency``/``--prompt-concurrency``, and
``--served-model-name`` appeared), so the command line is built from the flags
the installed server lists in its ``--help``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Set
from pathlib import Path

from slm_server.backends.spec import BackendUnsupported, LaunchSpec
from slm_server.config import ModelEntry
from slm_server.config.paths import resolve_model_path

log = logging.getLogger(__name__)

DEFAULT_CONFIG_NAMES = {"image-generation": "flux-schnell", "image-edit": "flux-kontext-dev"}
_BATCHED_TYPES = frozenset({"lm", "multimodal"})  # the types its concurrency flags apply to

OPENAI_SERVER_ENDPOINTS = {
    "lm": frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"}),
    "multimodal": frozenset({"/v1/chat/completions", "/v1/responses"}),
    "embeddings": frozenset({"/v1/embeddings"}),
    "image-generation": frozenset({"/v1/images/generations"}),
    "image-edit": frozenset({"/v1/images/edits"}),
    "whisper": frozenset({"/v1/audio/transcriptions"}),
}
MLX_LM_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})


def find_openai_server() -> str | None:
    """``mlx-openai-server`` on PATH, else next to this Python (the ``mlx`` extra's venv)."""
    beside_python = Path(sys.executable).with_name("mlx-openai-server")
    return shutil.which("mlx-openai-server") or (
        str(beside_python) if beside_python.exists() else None
    )


def mlx_lm_available() -> bool:
    return importlib.util.find_spec("mlx_lm") is not None


@functools.cache
def launch_flags(binary: str) -> frozenset[str]:
    """Every ``--flag`` that ``binary launch --help`` mentions (run once per binary)."""
    result = subprocess.run(
        [binary, "launch", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    flags = frozenset(re.findall(r"--[a-z][a-z0-9-]*", result.stdout))
    if result.returncode != 0 or "--model-path" not in flags:
        raise BackendUnsupported(
            f"`{binary} launch --help` failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-300:]}"
        )
    return flags


def _model_path(entry: ModelEntry, base_dir: Path) -> str:
    return resolve_model_path(entry, base_dir).value  # an HF id passes through unchanged


def openai_server_argv(
    entry: ModelEntry, binary: str, flags: Set[str], base_dir: Path
) -> list[str]:
    """The ``mlx-openai-server launch`` command line for ``entry`` and the installed flags."""
    argv = [binary, "launch", "--model-path", _model_path(entry, base_dir)]
    argv += ["--model-type", entry.model_type]
    # Always explicit: its own default port is 8000, the router's.
    argv += ["--host", entry.host, "--port", str(entry.port)]
    if "--served-model-name" in flags:
        argv += ["--served-model-name", entry.id]
    if entry.context_length is not None:
        argv += ["--context-length", str(entry.context_length)]
    wanted: list[tuple[str, str | None]] = []
    if entry.enable_auto_tool_choice:
        wanted.append(("--enable-auto-tool-choice", None))
    if entry.tool_call_parser is not None:
        wanted.append(("--tool-call-parser", entry.tool_call_parser))
    if entry.reasoning_parser is not None:
        wanted.append(("--reasoning-parser", entry.reasoning_parser))
    if entry.model_type in DEFAULT_CONFIG_NAMES:
        config_name = entry.config_name or DEFAULT_CONFIG_NAMES[entry.model_type]
        wanted.append(("--config-name", config_name))
    for flag, value in wanted:
        if flag not in flags:
            raise BackendUnsupported(
                f"the installed mlx-openai-server has no {flag}; upgrade it (uv sync --extra mlx)"
            )
        argv += [flag] if value is None else [flag, value]
    return argv + _concurrency_flags(entry, flags) + entry.extra_args


def _concurrency_flags(entry: ModelEntry, flags: Set[str]) -> list[str]:
    limit = str(entry.max_concurrency)
    if "--max-concurrency" in flags:  # up to 1.6
        return ["--max-concurrency", limit]
    if "--decode-concurrency" in flags and entry.model_type in _BATCHED_TYPES:  # 1.8 on
        return ["--decode-concurrency", limit, "--prompt-concurrency", limit]
    return []  # 1.7 has no such flag: the router's own limit still applies


def mlx_lm_argv(entry: ModelEntry, python: str, base_dir: Path) -> list[str]:
    """The ``python -m mlx_lm.server`` command line: lm models only."""
    if entry.model_type != "lm":
        raise BackendUnsupported(
            f"model_type {entry.model_type} needs mlx-openai-server, which is not installed "
            "(uv sync --extra mlx on macOS); mlx_lm.server serves lm models only"
        )
    refused = [
        name
        for name, value in (
            ("enable_auto_tool_choice", entry.enable_auto_tool_choice or None),
            ("tool_call_parser", entry.tool_call_parser),
            ("reasoning_parser", entry.reasoning_parser),
        )
        if value is not None
    ]
    if refused:
        raise BackendUnsupported(
            f"{', '.join(refused)} need mlx-openai-server, which is not installed; "
            "mlx_lm.server has no such options"
        )
    argv = [python, "-m", "mlx_lm.server", "--model", _model_path(entry, base_dir)]
    argv += ["--host", entry.host, "--port", str(entry.port)]
    limit = str(entry.max_concurrency)
    return [*argv, "--decode-concurrency", limit, "--prompt-concurrency", limit, *entry.extra_args]


def _hf_cache_env() -> dict[str, str]:
    # mlx_lm.server's /v1/models fails when the Hugging Face cache directory is missing.
    cache = os.environ.get("HF_HUB_CACHE") or str(Path.home() / ".cache" / "huggingface" / "hub")
    Path(cache).mkdir(parents=True, exist_ok=True)
    return {"HF_HUB_CACHE": cache}


def launch_spec(entry: ModelEntry, base_dir: Path) -> LaunchSpec:
    binary = find_openai_server()
    if binary is not None:
        argv = openai_server_argv(entry, binary, launch_flags(binary), base_dir)
        return LaunchSpec(argv, native_endpoints=OPENAI_SERVER_ENDPOINTS[entry.model_type])
    if not mlx_lm_available():
        raise BackendUnsupported(
            "no MLX server installed: `uv sync --extra mlx` (mlx-openai-server on macOS, "
            "mlx-lm's mlx_lm.server on Linux)"
        )
    model = _model_path(entry, base_dir)
    log.warning(
        "%s: mlx-openai-server is not installed; serving it with mlx_lm.server "
        "(chat and completions; other endpoints are converted or refused)",
        entry.id,
    )
    return LaunchSpec(
        mlx_lm_argv(entry, sys.executable, base_dir),
        env=_hf_cache_env(),
        native_endpoints=MLX_LM_ENDPOINTS,
        # Its /health answers before the model is loaded; a 1-token reply proves it is.
        ready_request=(
            "/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        ),
        upstream_model=model,  # it accepts no other `model` than its own --model
    )
