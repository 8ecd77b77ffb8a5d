"""``scripts/uv`` on a machine with no uv, where python3 is the system's (PEP 668)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")


def externally_managed() -> bool:
    if not SYSTEM_PYTHON.is_file():
        return False
    stdlib = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").is_file()


@pytest.mark.skipif(not externally_managed(), reason="needs a system python3 that refuses pip")
def test_uv_is_installed_into_a_venv_of_its_own(tmp_path: Path) -> None:
    # Only the system's programs: no uv, and python3 is /usr/bin/python3.
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    refused = subprocess.run(
        ["python3", "-m", "pip", "install", "--dry-run", "uv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "externally-managed" in refused.stderr
    for _ in range(2):  # installed once, then reused
        result = subprocess.run(
            [str(REPO / "scripts" / "uv"), "--version"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("uv ")
    assert (tmp_path / ".cache" / "slm_server" / "uv-venv" / "bin" / "uv").is_file()
