"""Where a config's relative paths point, and what a ``model_path`` names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from slm_server.config.schema import ModelEntry

# org/name with Hugging Face's allowed characters; anything else (./x, /x,
# a/b/c, ~/x) can only be meant as a local path.
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class ModelPathError(ValueError):
    """``model_path`` names nothing the entry's backend can load."""


@dataclass(frozen=True)
class ResolvedModelPath:
    """What a backend is given for ``model_path``.

    ``kind == "file"``: ``value`` is an absolute local path (llamacpp: a .gguf
    file; mlx: a model directory). ``kind == "hf_id"``: ``value`` is a Hugging
    Face model ID the MLX server downloads on first use.
    """

    kind: Literal["file", "hf_id"]
    value: str


def base_dir_for(config_path: Path) -> Path:
    """The directory relative model and template paths resolve against.

    That is the repository root: the parent of the config file's directory
    when that directory is named ``config`` (the layout ``config/models.yaml``),
    else the config file's own directory. The result is absolute.
    """
    directory = config_path.resolve().parent
    return directory.parent if directory.name == "config" else directory


def resolve_local(value: str, base_dir: Path) -> Path:
    """``value`` as an absolute path: ``~`` expanded, relative to ``base_dir``."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def looks_like_hf_id(value: str) -> bool:
    return _HF_ID.match(value) is not None


def resolve_model_path(entry: ModelEntry, base_dir: Path) -> ResolvedModelPath:
    """Resolve ``entry.model_path`` for its backend, or raise :class:`ModelPathError`.

    A local path wins over a Hugging Face ID when both readings are possible.
    llamacpp takes a ``.gguf`` file or a directory (its first ``.gguf`` by
    name, so part 1 of a split model; ``mmproj*`` projector files are skipped
    because they are never the model itself). mlx takes a model directory or
    an HF ID.
    """
    raw = entry.model_path
    path = resolve_local(raw, base_dir)
    if entry.backend == "llamacpp":
        return _resolve_llamacpp(raw, path)
    return _resolve_mlx(raw, path)


def _resolve_llamacpp(raw: str, path: Path) -> ResolvedModelPath:
    if path.is_dir():
        ggufs = sorted(
            p.name
            for p in path.iterdir()
            if _is_gguf(p) and p.is_file() and not p.name.lower().startswith("mmproj")
        )
        if not ggufs:
            raise ModelPathError(f"directory {path} contains no .gguf file")
        return ResolvedModelPath("file", str(path / ggufs[0]))
    if path.is_file():
        if not _is_gguf(path):
            raise ModelPathError(f"{path} is not a .gguf file; llamacpp loads GGUF models only")
        return ResolvedModelPath("file", str(path))
    if looks_like_hf_id(raw) and not _is_gguf(Path(raw)):
        raise ModelPathError(
            f"{raw!r} does not exist locally ({path}) and looks like a Hugging Face ID; "
            "HF IDs are not supported for llamacpp: download the .gguf and give its path"
        )
    raise ModelPathError(f"{path} does not exist")


def _resolve_mlx(raw: str, path: Path) -> ResolvedModelPath:
    if path.is_dir():
        return ResolvedModelPath("file", str(path))
    if path.exists():
        raise ModelPathError(f"{path} is a file; mlx needs a model directory or a Hugging Face ID")
    if looks_like_hf_id(raw):
        return ResolvedModelPath("hf_id", raw)
    raise ModelPathError(f"{path} does not exist and is not a Hugging Face ID (org/name)")


def _is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"
