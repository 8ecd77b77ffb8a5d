"""Loading ``models.yaml`` and reporting every problem in it at once.

Unusable files (missing, unreadable, not YAML, schema errors) raise
:class:`ConfigError` carrying every problem found; everything else
(paths, ports, IDs, combinations) lands in :attr:`LoadedConfig.problems`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slm_server.config.paths import base_dir_for
from slm_server.config.problems import ConfigError, Problem
from slm_server.config.replicas import expand_replicas, replica_groups
from slm_server.config.report import check_config
from slm_server.config.schema import ConfigFile, ModelEntry
from slm_server.config.validation import validate_entries, validate_top_level

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "ConfigError",
    "LoadedConfig",
    "Problem",
    "load_config",
    "resolve_config_path",
]

CONFIG_ENV_VAR = "SLM_SERVER_CONFIG"
DEFAULT_CONFIG_PATH = Path("config/models.yaml")
EXAMPLE_HINT = "cp config/models.yaml.example config/models.yaml"


@dataclass(frozen=True)
class LoadedConfig:
    path: Path
    base_dir: Path  # relative model/template paths resolve against this (the repo root)
    file: ConfigFile
    problems: list[Problem] = field(default_factory=list)  # report of non-fatal findings

    @property
    def models(self) -> dict[str, ModelEntry]:
        """Role -> entry, one per server: a replicated entry's replicas each have a role
        of their own (see replicas.py)."""
        return self.file.models

    @functools.cached_property
    def replica_groups(self) -> dict[str, tuple[str, ...]]:
        """Role as written -> its replicas' roles, for entries with several upstreams."""
        return replica_groups(self.file.models)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def resolve_config_path(cli_value: str | None) -> Path:
    """--config PATH, else $SLM_SERVER_CONFIG, else config/models.yaml."""
    if cli_value:
        return Path(cli_value)
    env = os.environ.get(CONFIG_ENV_VAR)
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH


def load_config(path: Path) -> LoadedConfig:
    """Read, validate and check ``path``; raise :class:`ConfigError` if unusable."""
    data, duplicates = _read_yaml(path)
    config, problems = validate_top_level(data, path)
    problems[:0] = duplicates
    models = data.get("models", {})
    if not isinstance(models, Mapping):
        problems.append(
            Problem(
                "error",
                path,
                None,
                None,
                "models",
                f"must be a mapping of role name -> entry, got {type(models).__name__}",
            )
        )
        models = {}
    entries, entry_problems = validate_entries(models, path)
    problems.extend(entry_problems)
    if problems:
        raise ConfigError(problems)
    config = config.model_copy(update={"models": expand_replicas(entries)})
    base_dir = base_dir_for(path)
    return LoadedConfig(path, base_dir, config, check_config(config, path, base_dir))


def _read_yaml(path: Path) -> tuple[Mapping[Any, Any], list[Problem]]:
    """The file's top-level mapping, and a problem per duplicate key in it."""

    def fatal(message: str) -> ConfigError:
        return ConfigError([Problem("error", path, None, None, None, message)])

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fatal(f"config file not found; to start from the example: {EXAMPLE_HINT}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fatal(f"cannot read the config file: {exc}") from None

    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise fatal(f"not valid YAML: {_describe_yaml_error(exc)}") from None
    finally:
        loader.dispose()

    duplicates = [
        Problem(
            "error",
            path,
            None,
            None,
            None,
            f"line {line}: duplicate key {key!r}; only the last one would count",
        )
        for key, line in loader.duplicates
    ]
    if data is None:
        raise fatal("the file is empty; it needs a `models:` section")
    if not isinstance(data, Mapping):
        raise fatal(
            f"the top level must be a mapping with a `models:` key, got {type(data).__name__}"
        )
    return data, duplicates


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc)


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys instead of silently keeping the last.

    A repeated role name would otherwise drop a whole model entry unseen.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[object, int]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *anchor`; explicit keys may override it
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    self.duplicates.append((key, key_node.start_mark.line + 1))
                seen.add(key)
            except TypeError:  # unhashable keys are reported by the constructor itself
                pass
        return super().construct_mapping(node, deep=deep)
