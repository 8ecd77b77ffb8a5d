"""The exact llama.cpp command lines for representative entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config_builder import entry, make_config
from slm_server.backends.llamacpp import (
    default_cache_type,
    native_argv,
    python_server_argv,
)
from slm_server.backends.spec import BackendUnsupported
from slm_server.config import ModelEntry

BIN = Path("/opt/bin/llama-server")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "b.gguf").touch()
    (tmp_path / "models" / "a.gguf").touch()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "chat.jinja").touch()
    return tmp_path


def model(repo: Path, **fields: Any) -> ModelEntry:
    defaults: dict[str, Any] = {"model_path": str(repo / "models"), "quantization": "f16"}
    return make_config({"m": entry("org/m", 8501, **{**defaults, **fields})}).models["m"]


def test_minimal_chat_model(repo: Path) -> None:
    assert native_argv(model(repo), BIN, repo) == [
        str(BIN),
        "--model", str(repo / "models" / "a.gguf"),
        "--host", "127.0.0.1", "--port", "8501", "--alias", "org/m",
        "--parallel", "1",
    ]  # fmt: skip


def test_every_llamacpp_field(repo: Path) -> None:
    entry_ = model(
        repo,
        model_path="models/b.gguf",  # relative: against the repo root
        host="0.0.0.0",
        context_length=8192,
        max_concurrency=4,
        chat_template_kwargs={"enable_thinking": False},
        chat_template_file="templates/chat.jinja",
        temp=0.7,
        top_p=0.8,
        top_k=20,
        min_p=0.0,
        cache_type_k="q4_0",
        cache_type_v="f16",
        flash_attn=True,
        kv_unified=True,
        fit=False,
    )
    assert native_argv(entry_, BIN, repo) == [
        str(BIN),
        "--model", str(repo / "models" / "b.gguf"),
        "--host", "0.0.0.0", "--port", "8501", "--alias", "org/m",
        "--parallel", "4",
        "--ctx-size", "8192",
        "--chat-template-kwargs", '{"enable_thinking": false}',
        "--chat-template-file", str(repo / "templates" / "chat.jinja"),
        "--temp", "0.7", "--top-p", "0.8", "--top-k", "20", "--min-p", "0.0",
        "--cache-type-k", "q4_0", "--cache-type-v", "f16",
        "--flash-attn", "on",
        "--kv-unified",
        "--fit", "off",
    ]  # fmt: skip


def test_embeddings_and_rerank_flags(repo: Path) -> None:
    embed = native_argv(model(repo, model_type="embeddings"), BIN, repo)
    assert embed[-1:] == ["--embedding"]  # pooling: the model's own
    pooled = native_argv(model(repo, model_type="embeddings", pooling="mean"), BIN, repo)
    assert pooled[-3:] == ["--embedding", "--pooling", "mean"]
    rerank = native_argv(model(repo, model_type="rerank"), BIN, repo)
    assert rerank[-4:] == ["--embedding", "--pooling", "rank", "--reranking"]


@pytest.mark.parametrize(
    ("quantization", "expected"),
    [("Q8_0", "q8_0"), ("Q4_K_M", "q8_0"), ("f16", None), ("BF16", None)],
)
def test_quantization_picks_kv_cache_defaults(
    repo: Path, quantization: str, expected: str | None
) -> None:
    assert default_cache_type(quantization) == expected
    argv = native_argv(model(repo, quantization=quantization), BIN, repo)
    if expected is None:
        assert "--cache-type-k" not in argv
    else:
        assert argv[-4:] == ["--cache-type-k", expected, "--cache-type-v", expected]


def test_entry_cache_type_beats_the_default(repo: Path) -> None:
    argv = native_argv(model(repo, quantization="Q8_0", cache_type_k="f16"), BIN, repo)
    assert argv[-4:] == ["--cache-type-k", "f16", "--cache-type-v", "q8_0"]


def test_disabled_options_are_passed_as_off(repo: Path) -> None:
    argv = native_argv(model(repo, flash_attn=False, kv_unified=False), BIN, repo)
    assert argv[-3:] == ["--flash-attn", "off", "--no-kv-unified"]


def test_python_server_argv(repo: Path) -> None:
    entry_ = model(repo, model_type="embeddings", context_length=2048, quantization="Q8_0")
    assert python_server_argv(entry_, "/py", repo) == [
        "/py", "-m", "llama_cpp.server",
        "--model", str(repo / "models" / "a.gguf"),
        "--model_alias", "org/m", "--host", "127.0.0.1", "--port", "8501",
        "--interrupt_requests", "false",
        "--n_ctx", "2048",
        "--embedding", "true",
        "--type_k", "8", "--type_v", "8",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"model_type": "rerank"}, "rerank"),
        ({"kv_unified": True}, "kv_unified"),
        ({"fit": True}, "fit"),
        ({"model_type": "embeddings", "pooling": "mean"}, "pooling"),
        ({"extra_args": ["-ngl", "99"]}, "extra_args"),
    ],
)
def test_python_server_refuses_native_only_features(
    repo: Path, fields: dict[str, Any], needle: str
) -> None:
    with pytest.raises(BackendUnsupported, match=needle) as refused:
        python_server_argv(model(repo, **fields), "/py", repo)
    assert "native llama-server" in str(refused.value)


def test_hf_id_is_refused_for_llamacpp(repo: Path) -> None:
    with pytest.raises(ValueError, match="not supported for llamacpp"):
        native_argv(model(repo, model_path="Qwen/Qwen3-0.6B-GGUF"), BIN, repo)


def test_extra_args_end_the_command_line(repo: Path) -> None:
    extra = ["-ngl", "99", "--threads", "4", "--jinja"]
    entry_ = model(repo, extra_args=extra, flash_attn=True)
    assert native_argv(entry_, BIN, repo)[-7:] == ["--flash-attn", "on", *extra]


@pytest.fixture
def vision(tmp_path: Path) -> Path:
    """A model directory as Hugging Face ships a vision GGUF: model and projector side by side."""
    directory = tmp_path / "vision"
    directory.mkdir()
    # Sorted by name the projectors come first; none may be taken for the model.
    projectors = ("MMPROJ-model-f32.gguf", "llava-mmproj-q4.gguf", "mmproj-model-f16.gguf")
    for name in ("vision-Q4_K_M.gguf", *projectors):
        (directory / name).touch()
    return directory


def test_multimodal_directory_finds_its_projector(repo: Path, vision: Path) -> None:
    argv = native_argv(model(repo, model_path=str(vision), model_type="multimodal"), BIN, repo)
    assert argv[1:3] == ["--model", str(vision / "vision-Q4_K_M.gguf")]
    assert argv[argv.index("--mmproj") + 1] == str(vision / "MMPROJ-model-f32.gguf")


def test_named_mmproj_wins_and_resolves_like_model_path(repo: Path, vision: Path) -> None:
    (repo / "models" / "mmproj-own.gguf").touch()
    multimodal = model(
        repo, model_path=str(vision), model_type="multimodal", mmproj="models/mmproj-own.gguf"
    )
    argv = native_argv(multimodal, BIN, repo)
    assert argv.count("--mmproj") == 1
    assert argv[argv.index("--mmproj") + 1] == str(repo / "models" / "mmproj-own.gguf")


def test_text_model_in_a_directory_with_a_projector_gets_none(repo: Path, vision: Path) -> None:
    argv = native_argv(model(repo, model_path=str(vision)), BIN, repo)
    assert argv[1:3] == ["--model", str(vision / "vision-Q4_K_M.gguf")]
    assert "--mmproj" not in argv


def test_directory_of_projectors_only_has_no_model(repo: Path, vision: Path) -> None:
    (vision / "vision-Q4_K_M.gguf").unlink()
    with pytest.raises(ValueError, match=r"no \.gguf model file"):
        native_argv(model(repo, model_path=str(vision), model_type="multimodal"), BIN, repo)


def test_missing_mmproj_is_refused_like_a_missing_model(repo: Path) -> None:
    multimodal = model(repo, model_type="multimodal", mmproj="models/mmproj-gone.gguf")
    with pytest.raises(ValueError, match=r"mmproj-gone.gguf does not exist"):
        native_argv(multimodal, BIN, repo)


def test_python_server_refuses_a_projector(repo: Path, vision: Path) -> None:
    multimodal = model(repo, model_path=str(vision), model_type="multimodal")
    with pytest.raises(BackendUnsupported, match="mmproj needs the native llama-server"):
        python_server_argv(multimodal, "/py", repo)


def test_mmproj_naming_a_directory_takes_its_projector(repo: Path, vision: Path) -> None:
    multimodal = model(repo, model_type="multimodal", mmproj=str(vision))
    argv = native_argv(multimodal, BIN, repo)
    assert argv[argv.index("--mmproj") + 1] == str(vision / "MMPROJ-model-f32.gguf")
    empty = model(repo, model_type="multimodal", mmproj="templates")
    with pytest.raises(ValueError, match=r"contains no projector"):
        native_argv(empty, BIN, repo)
    not_gguf = model(repo, model_type="multimodal", mmproj="templates/chat.jinja")
    with pytest.raises(ValueError, match=r"is not a \.gguf file"):
        native_argv(not_gguf, BIN, repo)
