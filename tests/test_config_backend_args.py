"""``mmproj`` and ``extra_args``: what a config may say, and what check-config reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_server.config import ConfigError, load_config


def llamacpp(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    (tmp_path / "model.gguf").touch()
    return {
        "id": "org/m",
        "backend": "llamacpp",
        "port": 8501,
        "model_path": str(tmp_path / "model.gguf"),
        "default_timeout": 60,
        "quantization": "Q4_K_M",
        **fields,
    }


def mlx(**fields: Any) -> dict[str, Any]:
    return {
        "id": "org/m",
        "backend": "mlx",
        "port": 8501,
        "model_path": "mlx-community/Some-Model-4bit",
        "default_timeout": 60,
        "quantization": "4bit",
        **fields,
    }


def write(tmp_path: Path, entry: dict[str, Any]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"vision": entry}}), encoding="utf-8")
    return path


def fatal(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ("--port", "port"),
        ("--port=9000", "port"),
        ("--host", "host"),
        ("-m", "model_path"),
        ("--model", "model_path"),
        ("-hf", "model_path"),
        ("-c", "context_length"),
        ("--ctx-size", "context_length"),
        ("-np", "max_concurrency"),
        ("-a", "id"),
        ("-mm", "mmproj"),
        ("--mmproj", "mmproj"),
        ("--no-mmproj", "mmproj"),
        ("--pooling", "pooling"),
        ("--embeddings", "model_type"),
        ("--temp", "temp"),
        ("--temperature", "temp"),
        ("-ctk", "cache_type_k"),
        ("-fa", "flash_attn"),
        ("--no-kv-unified", "kv_unified"),
        ("--n_ctx", "context_length"),  # llama_cpp.server's spelling
    ],
)
def test_llamacpp_flag_the_schema_sets_names_the_field(
    tmp_path: Path, flag: str, field: str
) -> None:
    [problem] = fatal(write(tmp_path, llamacpp(tmp_path, extra_args=["--threads", "2", flag])))
    assert "field 'extra_args'" in problem
    assert f"{flag.split('=')[0]} is set from `{field}`" in problem


def test_flag_the_router_owns_has_no_field_to_use(tmp_path: Path) -> None:
    entry = llamacpp(tmp_path, extra_args=["--interrupt_requests", "true"])
    [problem] = fatal(write(tmp_path, entry))
    assert "--interrupt_requests is set by slm-server itself" in problem


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ("--model-path", "model_path"),
        ("--port=9000", "port"),
        ("--served-model-name", "id"),
        ("--context-length", "context_length"),
        ("--decode-concurrency", "max_concurrency"),
        ("--tool-call-parser", "tool_call_parser"),
        ("--model", "model_path"),  # mlx_lm.server's spelling
    ],
)
def test_mlx_flag_the_schema_sets_names_the_field(flag: str, field: str, tmp_path: Path) -> None:
    [problem] = fatal(write(tmp_path, mlx(extra_args=[flag, "x"])))
    assert f"{flag.split('=')[0]} is set from `{field}`" in problem


def test_flags_the_schema_does_not_name_pass(tmp_path: Path) -> None:
    entry = llamacpp(tmp_path, extra_args=["-ngl", 99, "--threads", 4, "--jinja", "-t", "1"])
    loaded = load_config(write(tmp_path, entry))
    # YAML reads `99` as a number; it means the same text on a command line.
    expected = ["-ngl", "99", "--threads", "4", "--jinja", "-t", "1"]
    assert loaded.models["vision"].extra_args == expected
    assert loaded.problems == []
    assert load_config(write(tmp_path, mlx(extra_args=["--trust-remote-code"]))).problems == []


def test_extra_args_must_be_a_list_of_strings(tmp_path: Path) -> None:
    [problem] = fatal(write(tmp_path, llamacpp(tmp_path, extra_args="--threads 2")))
    assert "field 'extra_args'" in problem and "list" in problem
    [problem] = fatal(write(tmp_path, llamacpp(tmp_path, extra_args=["--jinja", True])))
    assert "field 'extra_args.1'" in problem


def test_mmproj_on_mlx_is_an_error(tmp_path: Path) -> None:
    [problem] = fatal(write(tmp_path, mlx(model_type="multimodal", mmproj="mmproj.gguf")))
    assert "field 'mmproj'" in problem and "llamacpp only" in problem


def test_mmproj_on_a_text_model_is_an_error(tmp_path: Path) -> None:
    [problem] = fatal(write(tmp_path, llamacpp(tmp_path, mmproj="mmproj.gguf")))
    assert "field 'mmproj'" in problem and "model_type multimodal only" in problem


def test_missing_mmproj_is_an_error_like_a_missing_model(tmp_path: Path) -> None:
    entry = llamacpp(tmp_path, model_type="multimodal", mmproj="gone/mmproj-f16.gguf")
    [problem] = load_config(write(tmp_path, entry)).problems
    assert problem.severity == "error" and problem.field == "mmproj"
    assert problem.message == f"{tmp_path / 'gone' / 'mmproj-f16.gguf'} does not exist"
    disabled = load_config(write(tmp_path, {**entry, "enabled": False})).problems
    assert [p.severity for p in disabled if p.field == "mmproj"] == ["warning"]


def test_multimodal_directory_without_a_projector_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.gguf").touch()
    entry = llamacpp(tmp_path, model_type="multimodal", model_path=str(tmp_path / "weights"))
    [problem] = load_config(write(tmp_path, entry)).problems
    assert problem.severity == "warning" and problem.field == "mmproj"
    assert "text only" in problem.message
    (tmp_path / "weights" / "mmproj-model-f16.gguf").touch()
    assert load_config(write(tmp_path, entry)).problems == []


def test_check_config_reports_them(tmp_path: Path) -> None:
    entry = llamacpp(tmp_path, model_type="multimodal", extra_args=["-c", "4096"])
    config = write(tmp_path, entry)
    checked = subprocess.run(
        [sys.executable, "-m", "slm_server", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode != 0
    assert "-c is set from `context_length`" in checked.stdout + checked.stderr
