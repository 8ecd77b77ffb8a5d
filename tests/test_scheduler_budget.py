"""The memory budget and each entry's need, as the scheduler counts them."""

from __future__ import annotations

from pathlib import Path

from config_builder import entry
from slm_server.config import ModelEntry
from slm_server.scheduler.budget import GB, auto_budget_bytes, budget_bytes, need_bytes


def test_auto_leaves_a_tenth_of_memory_and_at_least_two_gigabytes() -> None:
    assert auto_budget_bytes(64 * GB) == int(64 * GB * 0.9)
    assert auto_budget_bytes(16 * GB) == 14 * GB  # a tenth would be 1.6 GB: 2 GB is kept
    assert auto_budget_bytes(GB) == 0


def test_budget_in_bytes() -> None:
    assert budget_bytes(None) is None
    assert budget_bytes(12.5) == 12_500_000_000
    assert budget_bytes("auto", physical_bytes=32 * GB) == int(32 * GB * 0.9)


def test_memory_gb_replaces_the_estimate(tmp_path: Path) -> None:
    missing = ModelEntry.model_validate(entry("m", 9000, model_path=str(tmp_path / "absent.gguf")))
    assert need_bytes(missing, tmp_path) is None  # nothing to estimate from
    assert need_bytes(missing.model_copy(update={"memory_gb": 1.5}), tmp_path) == 1_500_000_000
