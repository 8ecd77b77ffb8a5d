"""MLX command lines: mlx-openai-server across its flag generations, and mlx_lm.server."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from slm_server.backends import mlx
from slm_server.backends.spec import BackendUnsupported
from slm_server.config import ModelEntry

BIN = "/opt/bin/mlx-openai-server"
_COMMON = {"--model-path", "--model-type", "--host", "--port", "--context-length"}
_TOOLS = {"--enable-auto-tool-choice", "--tool-call-parser", "--reasoning-parser", "--config-name"}
# What `launch --help` lists, per release line (read from the published packages).
FLAGS_1_3 = frozenset(_COMMON | {"--config-name", "--max-concurrency"})
FLAGS_1_6 = frozenset(_COMMON | _TOOLS | {"--max-concurrency", "--queue-size"})
FLAGS_1_7 = frozenset(_COMMON | _TOOLS | {"--served-model-name", "--queue-size"})
FLAGS_1_8 = FLAGS_1_7 | {"--decode-concurrency", "--prompt-concurrency"}


def model(**fields: Any) -> ModelEntry:
    return ModelEntry.model_validate(
        {
            "id": "qwen/qwen3-4b",
            "backend": "mlx",
            "port": 8501,
            "model_path": "mlx-community/Qwen3-4B-8bit",
            "default_timeout": 60,
            "quantization": "8bit",
            **fields,
        }
    )


def test_lm_on_current_server(tmp_path: Path) -> None:
    entry = model(context_length=8192, max_concurrency=4)
    assert mlx.openai_server_argv(entry, BIN, FLAGS_1_8, tmp_path) == [
        BIN, "launch",
        "--model-path", "mlx-community/Qwen3-4B-8bit",
        "--model-type", "lm",
        "--host", "0.0.0.0", "--port", "8501",
        "--served-model-name", "qwen/qwen3-4b",
        "--context-length", "8192",
        "--decode-concurrency", "4", "--prompt-concurrency", "4",
    ]  # fmt: skip


def test_lm_on_a_server_with_max_concurrency(tmp_path: Path) -> None:
    entry = model(max_concurrency=2)
    assert mlx.openai_server_argv(entry, BIN, FLAGS_1_6, tmp_path) == [
        BIN, "launch",
        "--model-path", "mlx-community/Qwen3-4B-8bit",
        "--model-type", "lm",
        "--host", "0.0.0.0", "--port", "8501",
        "--max-concurrency", "2",
    ]  # fmt: skip


def test_server_without_a_concurrency_flag_gets_none(tmp_path: Path) -> None:
    argv = mlx.openai_server_argv(model(max_concurrency=3), BIN, FLAGS_1_7, tmp_path)
    assert not any("concurrency" in arg for arg in argv)
    assert argv[-2:] == ["--served-model-name", "qwen/qwen3-4b"]


def test_tool_and_reasoning_fields(tmp_path: Path) -> None:
    entry = model(
        model_type="multimodal",
        enable_auto_tool_choice=True,
        tool_call_parser="qwen3_coder",
        reasoning_parser="qwen3",
    )
    argv = mlx.openai_server_argv(entry, BIN, FLAGS_1_8, tmp_path)
    assert argv[argv.index("--model-type") + 1] == "multimodal"
    tail = argv[argv.index("--served-model-name") + 2 :]
    assert tail == [
        "--enable-auto-tool-choice",
        "--tool-call-parser", "qwen3_coder",
        "--reasoning-parser", "qwen3",
        "--decode-concurrency", "1", "--prompt-concurrency", "1",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("model_type", "config_name", "expected"),
    [
        ("image-generation", None, "flux-schnell"),
        ("image-edit", None, "flux-kontext-dev"),
        ("image-generation", "flux-dev", "flux-dev"),
    ],
)
def test_image_models_get_a_config_name(
    tmp_path: Path, model_type: str, config_name: str | None, expected: str
) -> None:
    entry = model(model_type=model_type, config_name=config_name)
    argv = mlx.openai_server_argv(entry, BIN, FLAGS_1_8, tmp_path)
    assert argv[argv.index("--config-name") + 1] == expected
    assert not any("concurrency" in arg for arg in argv)  # batching flags are lm/multimodal only


@pytest.mark.parametrize("model_type", ["embeddings", "whisper"])
def test_other_model_types_pass_through(tmp_path: Path, model_type: str) -> None:
    argv = mlx.openai_server_argv(model(model_type=model_type), BIN, FLAGS_1_8, tmp_path)
    assert argv[argv.index("--model-type") + 1] == model_type
    assert "--config-name" not in argv


def test_field_the_installed_server_lacks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendUnsupported, match="no --tool-call-parser; upgrade"):
        mlx.openai_server_argv(model(tool_call_parser="qwen3"), BIN, FLAGS_1_3, tmp_path)


def test_local_model_directory_is_made_absolute(tmp_path: Path) -> None:
    (tmp_path / "models" / "gemma").mkdir(parents=True)
    argv = mlx.openai_server_argv(model(model_path="models/gemma"), BIN, FLAGS_1_8, tmp_path)
    assert argv[argv.index("--model-path") + 1] == str(tmp_path / "models" / "gemma")


def test_mlx_lm_server_argv(tmp_path: Path) -> None:
    entry = model(host="127.0.0.1", context_length=4096, max_concurrency=2)
    assert mlx.mlx_lm_argv(entry, "/py", tmp_path) == [
        "/py", "-m", "mlx_lm.server",
        "--model", "mlx-community/Qwen3-4B-8bit",
        "--host", "127.0.0.1", "--port", "8501",
        "--decode-concurrency", "2", "--prompt-concurrency", "2",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"model_type": "embeddings"}, "model_type embeddings needs mlx-openai-server"),
        ({"tool_call_parser": "qwen3"}, "tool_call_parser need mlx-openai-server"),
        ({"enable_auto_tool_choice": True}, "enable_auto_tool_choice need"),
    ],
)
def test_mlx_lm_server_refuses_what_it_cannot_do(
    tmp_path: Path, fields: dict[str, Any], needle: str
) -> None:
    with pytest.raises(BackendUnsupported, match=needle):
        mlx.mlx_lm_argv(model(**fields), "/py", tmp_path)


def test_mlx_lm_fallback_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlx, "find_openai_server", lambda: None)
    monkeypatch.setattr(mlx, "mlx_lm_available", lambda: True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    spec = mlx.launch_spec(model(), tmp_path)
    assert spec.argv[1:3] == ["-m", "mlx_lm.server"]
    assert spec.upstream_model == "mlx-community/Qwen3-4B-8bit"
    assert spec.ready_request is not None
    path, body = spec.ready_request
    assert path == "/v1/chat/completions" and body["model"] == spec.upstream_model
    assert body["max_tokens"] == 1
    assert spec.env == {"HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    assert (tmp_path / "hf" / "hub").is_dir()  # created: its /v1/models needs it
    assert "/v1/responses" not in spec.native_endpoints


def test_no_mlx_server_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlx, "find_openai_server", lambda: None)
    monkeypatch.setattr(mlx, "mlx_lm_available", lambda: False)
    with pytest.raises(BackendUnsupported, match="uv sync --extra mlx"):
        mlx.launch_spec(model(), tmp_path)


def fake_server(tmp_path: Path, script: str) -> str:
    path = tmp_path / "mlx-openai-server"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_launch_flags_come_from_the_installed_servers_help(tmp_path: Path) -> None:
    help_text = "Usage: launch [OPTIONS]\\n  --model-path TEXT\\n  --decode-concurrency INTEGER"
    binary = fake_server(tmp_path, f'printf "{help_text}\\n"')
    assert mlx.launch_flags(binary) == {"--model-path", "--decode-concurrency"}


def test_broken_server_is_reported(tmp_path: Path) -> None:
    binary = fake_server(tmp_path, 'echo "ImportError: no mlx" >&2; exit 1')
    with pytest.raises(BackendUnsupported, match="ImportError: no mlx"):
        mlx.launch_flags(binary)


def test_extra_args_end_the_command_line(tmp_path: Path) -> None:
    extra = ["--log-level", "DEBUG", "--trust-remote-code"]
    entry = model(max_concurrency=2, extra_args=extra)
    assert mlx.openai_server_argv(entry, BIN, FLAGS_1_8, tmp_path)[-7:] == [
        "--decode-concurrency", "2", "--prompt-concurrency", "2", *extra,
    ]  # fmt: skip
    assert mlx.mlx_lm_argv(entry, "/py", tmp_path)[-3:] == extra
