"""What a config reload does to each role and to the router's settings: a pure comparison."""

from __future__ import annotations

from typing import Any

import pytest

from config_builder import entry, make_config
from slm_server.admin.reload_plan import held_by_stopping, plan_reload
from slm_server.config import ConfigFile


def config(models: dict[str, dict[str, Any]], **router: Any) -> ConfigFile:
    return make_config(models, **router).file


A = entry("m-a", 9001)
B = entry("m-b", 9002)
C = entry("m-c", 9003)


def test_an_identical_file_changes_nothing() -> None:
    plan = plan_reload(config({"a": A, "b": B}), config({"a": A, "b": B}))
    assert plan.roles == {"a": "unchanged", "b": "unchanged"}
    assert plan.router_changed == () and plan.restart_needed == ()


def test_roles_gone_from_the_file_are_removed_and_new_ones_added() -> None:
    plan = plan_reload(config({"a": A, "b": B}), config({"a": A, "c": C}))
    assert plan.roles == {"a": "unchanged", "c": "added", "b": "removed"}
    assert plan.as_answer()["roles"] == {"a": "unchanged", "c": "added", "b": "removed"}


def test_disabling_removes_a_role_and_enabling_adds_it() -> None:
    off = {**B, "enabled": False}
    assert plan_reload(config({"b": B}), config({"b": off})).roles == {"b": "removed"}
    assert plan_reload(config({"b": off}), config({"b": B})).roles == {"b": "added"}
    # Disabled before and after: nothing runs either way, whatever else changed.
    other = {**off, "port": 9999}
    assert plan_reload(config({"b": off}), config({"b": other})).roles == {"b": "unchanged"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", 9100),
        ("model_path", "/models/other.gguf"),
        ("max_concurrency", 4),  # llama-server's --parallel
        ("id", "m-renamed"),  # its --alias
        ("context_length", 4096),
        ("extra_args", ["--threads", "2"]),
        ("chat_template_kwargs", {"enable_thinking": False}),
        ("host", "127.0.0.2"),
    ],
)
def test_a_field_the_backend_is_started_with_replaces_it(field: str, value: Any) -> None:
    plan = plan_reload(config({"a": A}), config({"a": {**A, field: value}}))
    assert plan.roles == {"a": "replaced"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("default_timeout", 60),
        ("idle_ttl_s", 300),
        ("pinned", True),
        ("on_demand", True),
        ("memory_gb", 2),
        ("supports_function_calling", True),
    ],
)
def test_a_field_only_the_router_reads_updates_it_in_place(field: str, value: Any) -> None:
    plan = plan_reload(config({"a": A}), config({"a": {**A, field: value}}))
    assert plan.roles == {"a": "updated"}


def test_router_only_fields_with_a_process_field_replace() -> None:
    changed = {**A, "default_timeout": 60, "port": 9100}
    assert plan_reload(config({"a": A}), config({"a": changed})).roles == {"a": "replaced"}


def test_router_settings_apply_at_once_but_the_listening_address_needs_a_restart() -> None:
    old = config({"a": A})
    new = config({"a": A}, max_queue=3, memory_budget_gb=8, port=9000, host="127.0.0.1")
    plan = plan_reload(old, new)
    assert plan.router_changed == ("max_queue", "memory_budget_gb")
    assert plan.restart_needed == ("host", "port")
    assert plan.as_answer()["router"] == {
        "changed": ["max_queue", "memory_budget_gb"],
        "restart_needed": ["host", "port"],
    }


def test_new_api_keys_are_a_live_change() -> None:
    keys = [{"name": "ops", "key_sha256": "a" * 64, "admin": True}]
    plan = plan_reload(config({"a": A}), config({"a": A}, api_keys=keys))
    assert plan.router_changed == ("api_keys",)


def held(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> dict[str, Any]:
    before, after = config(old), config(new)
    return held_by_stopping(before.models, after.models, plan_reload(before, after).roles)


def test_a_new_backend_waits_for_the_stopping_one_that_holds_its_port_or_log_file() -> None:
    # A role renamed, its port kept: the new one starts once the old one has stopped.
    assert held({"a": A, "b": B}, {"a": A, "c": {**C, "port": B["port"]}}) == {"c": ("b",)}
    # Two models that swap ports: each waits for the other too.
    swapped = {"a": {**A, "port": B["port"]}, "b": {**B, "port": A["port"]}}
    assert held({"a": A, "b": B}, swapped) == {"a": ("b",), "b": ("a",)}
    # The same id, under another role: one log file.
    assert held({"b": B}, {"c": {**B, "port": 9100}}) == {"c": ("b",)}
    # Nothing shared, or shared with a model that keeps running: no wait.
    assert held({"a": A, "b": B}, {"a": A, "c": C}) == {}
    assert held({"a": A}, {"a": {**A, "port": 9100}}) == {}
