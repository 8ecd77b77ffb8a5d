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
    name, so part 1 of a split model; projector files, named ``*mmproj*``, are
    skipped because they are never the model itself). mlx takes a model
    directory or an HF ID. A command takes whatever exists, or an HF ID (vLLM and
    SGLang download those); what it is is its program's business.
    """
    raw = entry.model_path
    if raw is None:
        raise ModelPathError("no model_path is set")
    path = resolve_local(raw, base_dir)
    if entry.backend == "llamacpp":
        return _resolve_llamacpp(raw, path)
    if entry.backend == "command":
        return _resolve_any(raw, path)
    return _resolve_mlx(raw, path)


def resolve_mmproj(entry: ModelEntry, base_dir: Path) -> Path | None:
    """The projector file a llamacpp multimodal entry passes as ``--mmproj``, if any.

    ``mmproj`` when set (a file, or a directory's first projector), resolved like
    ``model_path``; else the first projector in ``model_path`` when that is a
    directory. None for other entries and when there is none. A named ``mmproj``
    that is missing raises :class:`ModelPathError`.
    """
    if entry.backend != "llamacpp" or entry.model_type != "multimodal":
        return None
    if entry.mmproj is None:
        if entry.model_path is None:  # never for llamacpp: the schema requires it
            return None
        directory = resolve_local(entry.model_path, base_dir)
        return _first_projector(directory) if directory.is_dir() else None
    path = resolve_local(entry.mmproj, base_dir)
    if path.is_dir():
        found = _first_projector(path)
        if found is None:
            raise ModelPathError(f"directory {path} contains no projector (*mmproj*.gguf)")
        return found
    if path.is_file():
        if not _is_gguf(path):
            raise ModelPathError(f"{path} is not a .gguf file; llama-server's --mmproj takes GGUF")
        return path
    raise ModelPathError(f"{path} does not exist")


def _first_projector(directory: Path) -> Path | None:
    projectors = sorted(p.name for p in _ggufs(directory) if _is_projector(p))
    return directory / projectors[0] if projectors else None


def _resolve_llamacpp(raw: str, path: Path) -> ResolvedModelPath:
    if path.is_dir():
        ggufs = sorted(p.name for p in _ggufs(path) if not _is_projector(p))
        if not ggufs:
            raise ModelPathError(
                f"directory {path} contains no .gguf model file (projector files, "
                "*mmproj*.gguf, are not models)"
            )
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


def _resolve_any(raw: str, path: Path) -> ResolvedModelPath:
    if path.exists():
        return ResolvedModelPath("file", str(path))
    if looks_like_hf_id(raw):
        return ResolvedModelPath("hf_id", raw)
    raise ModelPathError(f"{path} does not exist and is not a Hugging Face ID (org/name)")


def _is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"


def _ggufs(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if _is_gguf(p) and p.is_file()]


def _is_projector(path: Path) -> bool:
    # Projectors are published as mmproj-<model>-f16.gguf, mmproj-F16.gguf, and in
    # older repos <model>-mmproj-q4.gguf: the word is the mark, wherever it stands.
    return "mmproj" in path.name.lower()
