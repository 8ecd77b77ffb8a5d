"""Reading single values from a GGUF header, checked against files the official writer made."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from slm_server.backends.gguf_metadata import GGUFError, pooling_type, read_fields, read_values
from slm_server.backends.llamacpp import native_argv
from slm_server.config import ModelEntry
from slm_server.llama_server.check import check_model

gguf = pytest.importorskip("gguf", reason="the official GGUF writer (a dev dependency on Linux)")


def written(path: Path, pooling: int | None, vocabulary: int = 1000) -> Path:
    """A GGUF with a vocabulary before the pooling key (so reading it must skip arrays)."""
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_string("general.name", "tiny")
    writer.add_array("tokenizer.ggml.tokens", [f"token{n}" for n in range(vocabulary)])
    writer.add_array("tokenizer.ggml.scores", [float(n) for n in range(vocabulary)])
    if pooling is not None:
        writer.add_pooling_type(gguf.PoolingType(pooling))
    writer.add_uint32("bert.context_length", 512)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("pooling", [None, 0, 1, 2, 4])
def test_the_declared_pooling_is_read_past_the_vocabulary(
    tmp_path: Path, pooling: int | None
) -> None:
    assert pooling_type(written(tmp_path / "m.gguf", pooling)) == pooling


def test_other_values_and_their_types(tmp_path: Path) -> None:
    path = written(tmp_path / "m.gguf", 2)
    values = read_values(path, lambda key: key.startswith(("general.", "bert.")))
    assert values == {
        "general.architecture": "bert",
        "general.name": "tiny",
        "bert.pooling_type": 2,
        "bert.context_length": 512,
    }


def test_the_packaged_model_declares_no_pooling_and_reads_fast() -> None:
    model = check_model()
    assert model is not None, "run scripts/sync"
    started = time.monotonic()
    assert pooling_type(model) is None  # gemma3: a 262k-token vocabulary, no pooling key
    assert time.monotonic() - started < 5  # the official reader took 10 s


def test_what_is_not_a_readable_gguf_is_an_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        pooling_type(text)
    whole = written(tmp_path / "m.gguf", 1).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(GGUFError, match="ends early"):
        pooling_type(cut)


def embeddings_entry(path: Path, **fields: object) -> ModelEntry:
    return ModelEntry.model_validate(
        {
            "id": "embed",
            "backend": "llamacpp",
            "model_type": "embeddings",
            "port": 8502,
            "model_path": str(path),
            "default_timeout": 60,
            "quantization": "f16",
            **fields,
        }
    )


@pytest.mark.parametrize(
    ("declared", "flags"), [(None, ["--pooling", "mean"]), (0, ["--pooling", "mean"]), (2, [])]
)
def test_embeddings_get_mean_pooling_only_when_the_model_declares_none(
    tmp_path: Path, declared: int | None, flags: list[str]
) -> None:
    path = written(tmp_path / "m.gguf", declared)
    argv = native_argv(embeddings_entry(path), Path("llama-server"), tmp_path)
    assert argv[argv.index("--embedding") + 1 :][: len(flags)] == flags
    assert ("--pooling" in argv) == bool(flags)


def test_the_entrys_own_pooling_wins(tmp_path: Path) -> None:
    path = written(tmp_path / "m.gguf", None)
    argv = native_argv(embeddings_entry(path, pooling="cls"), Path("llama-server"), tmp_path)
    assert argv[argv.index("--pooling") + 1] == "cls" and argv.count("--pooling") == 1


def header(*kvs: bytes, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, 0, len(kvs)) + b"".join(kvs)


def key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


ARRAY, STRING, UINT32 = 9, 8, 4


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        # A string array claiming 2**60 items: refused before looping over them.
        (header(key("t") + struct.pack("<IIQ", ARRAY, STRING, 2**60)), "ends early"),
        # A string 2**63 bytes long.
        (header(key("t") + struct.pack("<IQ", STRING, 2**63)), "ends early"),
        # Arrays of arrays of arrays ...
        (header(key("t") + struct.pack("<I", ARRAY) + struct.pack("<IQ", ARRAY, 1) * 50), "deep"),
        # Version 3 written big-endian, and a version this reader does not know.
        (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "version"),
        (header(version=4), "version"),
    ],
    ids=["huge-count", "huge-string", "nested", "big-endian", "version-4"],
)
def test_a_corrupt_header_fails_at_once(tmp_path: Path, raw: bytes, why: str) -> None:
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(raw)
    with path.open("r+b") as f:  # a large file of zeros after it (sparse: no disk used)
        f.truncate(256 * 2**20)
    started = time.monotonic()
    with pytest.raises(GGUFError, match=why):
        pooling_type(path)
    assert time.monotonic() - started < 1


def test_a_hand_written_header_reads_as_written(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    arch = key("general.architecture") + struct.pack("<I", STRING) + key("llama")
    tokens = key("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARRAY, STRING, 2)
    tokens += key("a") + key("b")
    pooling = key("llama.pooling_type") + struct.pack("<II", UINT32, 3)
    path.write_bytes(header(arch, tokens, pooling))
    assert pooling_type(path) == 3


INT32 = 5


def test_numeric_arrays_are_read_whole_and_others_skipped(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    heads = key("llama.attention.head_count_kv") + struct.pack("<IIQ", ARRAY, INT32, 4)
    heads += struct.pack("<4i", 8, 0, 0, 8)
    tokens = key("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARRAY, STRING, 2)
    tokens += key("a") + key("b")
    layers = key("llama.block_count") + struct.pack("<II", UINT32, 4)
    path.write_bytes(header(heads, tokens, layers))
    assert read_fields(path, lambda name: True) == {
        "llama.attention.head_count_kv": (8, 0, 0, 8),
        "llama.block_count": 4,
    }
    # read_values keeps to scalars and strings, as before.
    assert read_values(path, lambda name: True) == {"llama.block_count": 4}


@pytest.mark.parametrize("count", [2**60, 1000], ids=["huge-count", "past-the-end"])
def test_a_wanted_array_longer_than_the_file_fails_at_once(tmp_path: Path, count: int) -> None:
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(header(key("n") + struct.pack("<IIQ", ARRAY, INT32, count)))
    with pytest.raises(GGUFError, match="ends early"):
        read_fields(path, lambda name: True)
