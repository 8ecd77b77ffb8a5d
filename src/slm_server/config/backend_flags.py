"""Which backend command-line flags the schema's fields set, in every spelling.

``extra_args`` is for flags no field names. A flag that a field sets would
reach the backend twice (which one wins depends on the server's parser) or
fight the router's own choice (the port it proxies to, the id it routes by),
so such a flag is an error that names the field to use instead.

Each table covers both servers a backend kind may run: llamacpp is the native
``llama-server`` (short and long forms, from its ``--help``) or
``python -m llama_cpp.server``; mlx is ``mlx-openai-server launch`` or
``python -m mlx_lm.server``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_LLAMACPP: dict[str, str | None] = {
    **dict.fromkeys(
        ("-m", "--model", "-mu", "--model-url", "-hf", "-hfr", "--hf-repo", "-hff", "--hf-file"),
        "model_path",
    ),
    **dict.fromkeys(("-a", "--alias", "--model_alias"), "id"),
    "--host": "host",
    "--port": "port",
    **dict.fromkeys(("-np", "--parallel"), "max_concurrency"),
    **dict.fromkeys(("-c", "--ctx-size", "--n_ctx"), "context_length"),
    **dict.fromkeys(("--embedding", "--embeddings", "--rerank", "--reranking"), "model_type"),
    "--pooling": "pooling",
    "--chat-template-kwargs": "chat_template_kwargs",
    "--chat-template-file": "chat_template_file",
    **dict.fromkeys(("--temp", "--temperature"), "temp"),
    "--top-p": "top_p",
    "--top-k": "top_k",
    "--min-p": "min_p",
    **dict.fromkeys(("-ctk", "--cache-type-k", "--type_k"), "cache_type_k"),
    **dict.fromkeys(("-ctv", "--cache-type-v", "--type_v"), "cache_type_v"),
    **dict.fromkeys(("-fa", "--flash-attn", "--flash_attn"), "flash_attn"),
    **dict.fromkeys(("-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified"), "kv_unified"),
    **dict.fromkeys(("-fit", "--fit"), "fit"),
    **dict.fromkeys(
        (
            "-mm",
            "--mmproj",
            "-mmu",
            "--mmproj-url",
            "--mmproj-auto",
            "--no-mmproj",
            "--no-mmproj-auto",
            "--clip_model_path",
        ),
        "mmproj",
    ),
    # No field (None): llama_cpp.server would abort a running request for a new one, and
    # the router relies on it queueing instead.
    "--interrupt_requests": None,
}

_MLX: dict[str, str | None] = {
    **dict.fromkeys(("--model-path", "--model"), "model_path"),
    "--model-type": "model_type",
    "--host": "host",
    "--port": "port",
    "--served-model-name": "id",
    "--context-length": "context_length",
    **dict.fromkeys(
        ("--max-concurrency", "--decode-concurrency", "--prompt-concurrency"), "max_concurrency"
    ),
    "--enable-auto-tool-choice": "enable_auto_tool_choice",
    "--tool-call-parser": "tool_call_parser",
    "--reasoning-parser": "reasoning_parser",
    "--config-name": "config_name",
}

FIELD_FLAGS: Mapping[str, Mapping[str, str | None]] = {"llamacpp": _LLAMACPP, "mlx": _MLX}


def flag_clashes(backend: str, extra_args: Iterable[str]) -> list[str]:
    """One message per flag in ``extra_args`` that the schema or the router already sets.

    ``--flag=value`` counts as ``--flag``; values (words not starting with ``-``) are skipped.
    """
    # A command's flags mean what its program says; none are the router's to check.
    table = FIELD_FLAGS.get(backend, {})
    messages: list[str] = []
    for arg in extra_args:
        flag = arg.split("=", 1)[0]
        if not flag.startswith("-") or flag not in table:
            continue
        field = table[flag]
        if field is None:
            messages.append(f"{flag} is set by slm-server itself; remove it from extra_args")
        else:
            messages.append(f"{flag} is set from `{field}`; use that field instead of extra_args")
    return messages
