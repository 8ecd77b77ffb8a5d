"""Configuration: schema, loading, model-path resolution and validation."""

from slm_server.config.loader import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    ConfigError,
    LoadedConfig,
    Problem,
    load_config,
    resolve_config_path,
)
from slm_server.config.paths import (
    ModelPathError,
    ResolvedModelPath,
    base_dir_for,
    resolve_model_path,
)
from slm_server.config.router_settings import ApiKey, RouterSettings
from slm_server.config.schema import ConfigFile, ModelEntry

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "ApiKey",
    "ConfigError",
    "ConfigFile",
    "LoadedConfig",
    "ModelEntry",
    "ModelPathError",
    "Problem",
    "ResolvedModelPath",
    "RouterSettings",
    "base_dir_for",
    "load_config",
    "resolve_config_path",
    "resolve_model_path",
]
