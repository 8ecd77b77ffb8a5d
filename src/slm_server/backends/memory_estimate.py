"""The memory a backend will need, worked out before its first start from its files.

llama.cpp: the GGUF's size (its weights are mapped whole) plus the KV cache, from the
GGUF metadata (layers, KV heads per layer, head sizes), the context the server will
use and the cache types, plus a margin. MLX: the weight files' size plus a margin.

The margin covers what the files do not tell: compute buffers (sized for a batch of
512 tokens; with a large vocabulary the logits take the most), the server's own code and
runtime, and allocator slack: ``MARGIN_FRACTION`` of the files plus the KV cache, and
``MARGIN_FIXED_BYTES`` on top. Measured on llama-server with Gemma 3 270M (a 262k-token
vocabulary, the largest in common use, at 1024 tokens of context), all of that came to
86 MB over the GGUF and its KV cache: 100 MB is that, rounded up; the share grows with
the model (wider layers, larger buffers).

Sliding-window layers (Gemma 2/3, for instance) are counted as if they cached the
whole context: llama.cpp keeps only the window for them, so the estimate errs high,
never low, for those models.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from slm_server.backends.gguf_metadata import GGUFError, Value, read_fields
from slm_server.backends.llamacpp import cache_types
from slm_server.config import ModelEntry
from slm_server.config.paths import ModelPathError, resolve_mmproj, resolve_model_path

MARGIN_FRACTION = 0.10
MARGIN_FIXED_BYTES = 100 * 1024 * 1024

# Bytes per cached element for llama.cpp's cache types (ggml block size and bytes:
# q8_0 stores 32 values in 34 bytes, q4_0 in 18, ...).
CACHE_TYPE_BYTES: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}
_DEFAULT_CACHE_TYPE = "f16"  # llama.cpp's, when no --cache-type-k/-v is given

# Part 1 of a split model, e.g. model-00001-of-00003.gguf: the other parts load with it.
_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)


def estimate_bytes(entry: ModelEntry, base_dir: Path) -> int | None:
    """What ``entry``'s backend will need, in bytes; None when its weights are not on
    this machine (an MLX model given as a Hugging Face ID, a path that does not exist)."""
    try:
        resolved = resolve_model_path(entry, base_dir)
        if resolved.kind != "file":
            return None
        path = Path(resolved.value)
        if entry.backend == "llamacpp":
            projector = resolve_mmproj(entry, base_dir)
            extra = projector.stat().st_size if projector is not None else 0
            return llamacpp_bytes(path, entry.context_length, *_cache_types(entry)) + extra
        if entry.backend == "mlx":
            return mlx_bytes(path)
    except (ModelPathError, OSError):
        return None
    return None


def _cache_types(entry: ModelEntry) -> tuple[str, str]:
    chosen = dict(cache_types(entry))  # the types the launched server is given
    return chosen.get("k", _DEFAULT_CACHE_TYPE), chosen.get("v", _DEFAULT_CACHE_TYPE)


def llamacpp_bytes(
    model_file: Path, context_length: int | None, cache_type_k: str, cache_type_v: str
) -> int:
    """The GGUF (all its parts) plus its KV cache plus the margin. A header that cannot
    be read, or lacks the keys, leaves the KV cache out: the files and the margin remain."""
    files = sum(p.stat().st_size for p in split_parts(model_file))
    try:
        fields = read_fields(model_file, _wanted)
    except GGUFError:
        fields = {}
    kv = kv_cache_bytes(fields, context_length, cache_type_k, cache_type_v) or 0
    return with_margin(files + kv)


def mlx_bytes(model_dir: Path) -> int:
    """The weight files (``*.safetensors``, sharded or not) plus the margin."""
    return with_margin(sum(p.stat().st_size for p in model_dir.glob("*.safetensors")))


def with_margin(size: int) -> int:
    return int(size * (1 + MARGIN_FRACTION)) + MARGIN_FIXED_BYTES


def split_parts(model_file: Path) -> list[Path]:
    """The files of a model: all parts of a split GGUF, else the file itself."""
    match = _SPLIT.match(model_file.name)
    if match is None:
        return [model_file]
    stem, total = match["stem"], int(match["total"])
    parts = [
        model_file.with_name(f"{stem}-{n:05d}-of-{total:05d}.gguf") for n in range(1, total + 1)
    ]
    return [p for p in parts if p.is_file()]


def kv_cache_bytes(
    fields: Mapping[str, Value],
    context_length: int | None,
    cache_type_k: str = _DEFAULT_CACHE_TYPE,
    cache_type_v: str = _DEFAULT_CACHE_TYPE,
) -> int | None:
    """The KV cache for ``context_length`` tokens (the model's trained context when None,
    as llama-server does without ``-c``); None when the metadata lacks what it takes."""
    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        return None
    layers = _integer(fields.get(f"{arch}.block_count"))
    heads = fields.get(f"{arch}.attention.head_count")
    heads_kv = fields.get(f"{arch}.attention.head_count_kv", heads)
    tokens = context_length or _integer(fields.get(f"{arch}.context_length"))
    if layers is None or tokens is None:
        return None
    per_layer_kv = _per_layer(heads_kv, layers)
    if per_layer_kv is None:
        return None
    key_length = _head_size(fields, arch, "key_length")
    value_length = _head_size(fields, arch, "value_length")
    if key_length is None or value_length is None:
        return None
    k_bytes = CACHE_TYPE_BYTES.get(cache_type_k.lower(), CACHE_TYPE_BYTES[_DEFAULT_CACHE_TYPE])
    v_bytes = CACHE_TYPE_BYTES.get(cache_type_v.lower(), CACHE_TYPE_BYTES[_DEFAULT_CACHE_TYPE])
    per_token = sum(n * (key_length * k_bytes + value_length * v_bytes) for n in per_layer_kv)
    return int(per_token * tokens)


def _head_size(fields: Mapping[str, Value], arch: str, key: str) -> int | None:
    """``<arch>.attention.key_length`` (or value_length); else embedding size / heads."""
    size = _integer(fields.get(f"{arch}.attention.{key}"))
    if size is not None:
        return size
    embedding = _integer(fields.get(f"{arch}.embedding_length"))
    heads = _per_layer(fields.get(f"{arch}.attention.head_count"), 1)
    if embedding is None or heads is None or not heads[0]:
        return None
    return embedding // heads[0]


def _per_layer(value: Value | None, layers: int) -> list[int] | None:
    """A per-layer count: one value for every layer, or an array with one per layer
    (hybrid models give 0 KV heads to their recurrent layers)."""
    if isinstance(value, tuple):
        counts = [_integer(v) for v in value[:layers]]
        if len(counts) != layers or any(c is None for c in counts):
            return None
        return [c for c in counts if c is not None]
    count = _integer(value)
    return None if count is None else [count] * layers


def _integer(value: Value | None) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _wanted(key: str) -> bool:
    return key == "general.architecture" or key.endswith(
        (
            ".block_count",
            ".context_length",
            ".embedding_length",
            ".attention.head_count",
            ".attention.head_count_kv",
            ".attention.key_length",
            ".attention.value_length",
        )
    )
