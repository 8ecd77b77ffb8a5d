"""The built wheel in a clean virtual environment: what a plain ``pip install`` gives a user.

Nothing of the project's dev dependencies is there, so a runtime import of one (httpx, say)
breaks ``start`` here and nowhere else. The backend is the real llama-server with the
packaged model, found where ``scripts/sync`` built it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from net import free_port
from slm_server.admin.page import PAGE_PATHS
from slm_server.backends.llamacpp import find_llama_server
from slm_server.llama_server.check import check_model

REPO = Path(__file__).resolve().parent.parent
UV = str(REPO / "scripts" / "uv")


@pytest.fixture(scope="module")
def clean_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` directory of a new venv with only the wheel and its dependencies."""
    where = tmp_path_factory.mktemp("wheel")
    run([UV, "build", "--wheel", "--out-dir", str(where / "dist"), str(REPO)])
    wheels = list((where / "dist").glob("slm_server-*.whl"))
    assert len(wheels) == 1, wheels
    run([UV, "venv", "--quiet", "--python", "3.11", str(where / "venv")])
    python = where / "venv" / "bin" / "python"
    run([UV, "pip", "install", "--quiet", "--python", str(python), str(wheels[0])])
    return where / "venv" / "bin"


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def config_dir(tmp_path: Path, clean_install: Path) -> Iterator[Path]:
    model = check_model()
    assert model is not None and find_llama_server() is not None, "run scripts/sync"
    chat = {
        "id": "gemma-chat",
        "backend": "llamacpp",
        "port": free_port(),
        "host": "127.0.0.1",
        "model_path": str(model),
        "default_timeout": 60,
        "quantization": "Q4_K_M",
        "context_length": 512,
    }
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": {"chat": chat}}))
    yield tmp_path
    slm = str(clean_install / "slm-server")
    subprocess.run([slm, "stop", "--config", "models.yaml"], cwd=tmp_path, timeout=60)


def test_the_installed_commands_check_start_and_stop(clean_install: Path, config_dir: Path) -> None:
    slm = str(clean_install / "slm-server")
    checked = run([slm, "check-config", "--config", "models.yaml"], cwd=config_dir)
    assert "1 model(s), 1 enabled; 0 error(s)" in checked.stdout
    port = str(free_port())
    started = run(
        [slm, "start", "--config", "models.yaml", "--host", "127.0.0.1", "--port", port],
        cwd=config_dir,
    )
    assert "chat (gemma-chat): ready" in started.stdout
    assert "1 of 1 model(s) ready" in started.stdout
    # The dashboard's files are package data: the wheel must carry them.
    for path in sorted(PAGE_PATHS):
        served = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
        assert served.status_code == 200, (path, served.text)
    stopped = run([slm, "stop", "--config", "models.yaml"], cwd=config_dir)
    assert "stopped" in stopped.stdout
