"""The built-in config used when the user has written none."""

from __future__ import annotations

from pathlib import Path

from slm_server.config.default import DEFAULT_BACKEND_PORT, DEFAULT_MODEL_ID, default_config
from slm_server.config.report import check_config


def test_default_is_a_valid_config_for_the_packaged_model(tmp_path: Path) -> None:
    loaded = default_config(tmp_path)
    assert loaded is not None, "the default-model extra is not installed"
    [model] = loaded.models.values()
    assert (model.id, model.backend, model.port) == (DEFAULT_MODEL_ID, "llamacpp", 8501)
    assert model.port == DEFAULT_BACKEND_PORT and model.host == "127.0.0.1"
    assert model.model_path is not None and model.model_path.endswith(".gguf")
    assert Path(model.model_path).is_file()
    assert check_config(loaded.file, loaded.path, loaded.base_dir) == []
    assert loaded.base_dir == tmp_path  # its logs go where it was started
