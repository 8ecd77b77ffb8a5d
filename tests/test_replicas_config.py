"""Entries with several upstreams as the config gives them: one role per server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from config_builder import entry, load_errors, load_models, make_config
from slm_server.admin.reload_plan import plan_reload
from slm_server.backends.openai import setup_problems
from slm_server.config import load_config
from slm_server.config.report import check_config
from slm_server.supervisor.logs import log_file_name


def remote(**fields: Any) -> dict[str, Any]:
    urls = ["http://gpu-1:8000/v1", "http://gpu-2:8000"]
    return {"id": "big", "backend": "openai", "base_urls": urls, "default_timeout": 60, **fields}


def problems_of(tmp_path: Path, **entries: dict[str, Any]) -> dict[tuple[str | None, str], str]:
    config = load_models(tmp_path, **entries)
    return {(p.role, f"{p.severity} {p.field}"): p.message for p in config.problems}


def test_replicas_become_one_role_each_on_consecutive_ports(tmp_path: Path) -> None:
    config = load_models(tmp_path, gemma=entry("gemma", 8101, replicas=3), solo=entry("s", 8200))
    assert list(config.models) == ["gemma@0", "gemma@1", "gemma@2", "solo"]
    assert [e.port for e in config.models.values()] == [8101, 8102, 8103, 8200]
    replicas = [config.models[f"gemma@{i}"] for i in range(3)]
    assert [(e.id, e.replica_group, e.replica) for e in replicas] == [
        ("gemma", "gemma", 0),
        ("gemma", "gemma", 1),
        ("gemma", "gemma", 2),
    ]
    assert (config.models["solo"].replica_group, config.models["solo"].replica) == (None, None)
    assert config.replica_groups == {"gemma": ("gemma@0", "gemma@1", "gemma@2")}
    # Each replica writes a log of its own; an entry with one server keeps its file name.
    names = [log_file_name(e) for e in config.models.values()]
    assert names == ["gemma@0.log", "gemma@1.log", "gemma@2.log", "s.log"]


def test_base_urls_become_one_role_per_server(tmp_path: Path) -> None:
    config = load_models(tmp_path, big=remote())
    assert {role: e.base_url for role, e in config.models.items()} == {
        "big@0": "http://gpu-1:8000/v1",
        "big@1": "http://gpu-2:8000",
    }
    assert config.replica_groups == {"big": ("big@0", "big@1")}
    # One URL in the list is one server, as base_url is: no group of one.
    single = load_models(tmp_path, one=remote(base_urls=["http://gpu-1:8000/v1"]))
    assert list(single.models) == ["one"] and single.replica_groups == {}
    assert single.models["one"].base_url == "http://gpu-1:8000/v1"


def test_the_entries_of_a_group_are_checked_once_as_written(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        gemma=entry("gemma", 8101, replicas=2, model_path="/no/such.gguf"),
        big=remote(api_key_env="UNSET_FOR_THIS_TEST"),
    )
    # Under the role the user wrote, once; and no "same id" warning between replicas.
    assert list(found) == [("gemma", "error model_path")]
    config = load_models(tmp_path, big=remote(api_key_env="UNSET_FOR_THIS_TEST"))
    assert [(p.role, p.field) for p in setup_problems(config, {})] == [("big", "api_key_env")]


def test_a_port_taken_by_a_replica_is_an_error_naming_the_replica(tmp_path: Path) -> None:
    found = problems_of(tmp_path, gemma=entry("gemma", 8101, replicas=3), other=entry("o", 8103))
    assert found[("other", "error port")].startswith(
        "port 8103 is also used by models.gemma@2 (replica 2 of gemma)"
    )


@pytest.mark.parametrize(
    ("entries", "said"),
    [
        (
            {"r": remote(base_url="http://gpu-3:8000/v1")},
            "give base_url (one server) or base_urls (several), not both",
        ),
        ({"r": remote(replicas=2)}, "list each one in base_urls"),
        (
            {"r": remote(base_urls=["http://gpu-1:8000/v1", "http://gpu-1:8000"])},
            "item 1 is the same server as item 0",
        ),
        ({"r": remote(base_urls=["http://gpu-1:8000/v1", "ftp://x"])}, "item 1: "),
        ({"r": remote(base_urls=[])}, "base_urls"),
        ({"r@1": entry("x", 8101)}, "'@' in a role name is kept for replicas"),
        ({"g": entry("g", 65535, replicas=2)}, "would need ports past 65535"),
        ({"g": entry("g", 8101, replicas=65)}, "replicas"),
        ({"g": entry("g", 8101, fallbacks=["a", "a"])}, "a listed more than once"),
        ({"g": entry("g", 8101, retries=-1)}, "retries"),
        ({"g": entry("g", 8101, balance="fastest")}, "least_busy"),
    ],
)
def test_what_cannot_be_a_group_is_refused(
    tmp_path: Path, entries: dict[str, dict[str, Any]], said: str
) -> None:
    errors = load_errors(tmp_path, **entries)
    assert any(said in error for error in errors), errors


def test_fallbacks_must_name_another_enabled_model_of_the_same_type(tmp_path: Path) -> None:
    config = load_models(
        tmp_path,
        chat=entry("chat", 8101, fallbacks=["chat", "nope", "embed", "spare", "off"]),
        embed=entry("embed", 8102, model_type="embeddings"),
        spare=entry("spare", 8103),
        off=entry("off", 8104, enabled=False),
    )
    fallbacks = [(p.role, p.severity, p.message) for p in config.problems if p.field == "fallbacks"]
    assert fallbacks == [
        ("chat", "error", "chat is this entry's own model; a fallback is another one"),
        ("chat", "error", "no enabled model has the id nope; enabled: chat, embed, spare"),
        (
            "chat",
            "error",
            "embed has model_type embeddings and this entry lm: it cannot answer the same requests",
        ),
        ("chat", "error", "no enabled model has the id off; enabled: chat, embed, spare"),
    ]


def test_balancing_fields_on_an_entry_with_one_server_are_warned(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        solo=entry("s", 8101, balance="round_robin", cooldown_s=5, retries=2),
        pair=entry("p", 8102, replicas=2, balance="round_robin", cooldown_s=5),
    )
    warned = {key for key in found if key[1].startswith("warning")}
    assert warned == {("solo", "warning balance"), ("solo", "warning cooldown_s")}
    assert "this one has one, so it is ignored" in found[("solo", "warning balance")]


def test_a_reload_that_adds_a_replica_adds_one_role_and_keeps_the_others() -> None:
    two = make_config({"g": entry("g", 8101, replicas=2)}).file
    three = make_config({"g": entry("g", 8101, replicas=3)}).file
    assert plan_reload(two, three).roles == {
        "g@0": "unchanged",
        "g@1": "unchanged",
        "g@2": "added",
    }
    # A field of the entry changes every replica alike.
    slower = make_config({"g": entry("g", 8101, replicas=2, default_timeout=9)}).file
    assert plan_reload(two, slower).roles == {"g@0": "updated", "g@1": "updated"}


def test_check_config_counts_the_entries_as_written(tmp_path: Path, capsys: Any) -> None:
    from slm_server.cli import main

    path = tmp_path / "models.yaml"
    load_models(tmp_path, g=entry("g", 8101, replicas=3, model_path=str(path)))
    main(["check-config", "--config", str(path)])
    assert "1 model(s), 1 enabled" in capsys.readouterr().out


def test_the_expansion_of_a_file_built_in_memory_matches_a_loaded_one(tmp_path: Path) -> None:
    written = {"g": entry("g", 8101, replicas=2)}
    loaded = load_models(tmp_path, **written)
    built = make_config(written)
    assert loaded.models == built.models
    assert check_config(built.file, built.path, Path(".")) is not None


def test_each_replica_needs_its_memory_under_the_budget(tmp_path: Path) -> None:
    from slm_server.scheduler.fit_rules import memory_problems

    command = ["sh", "-c", "exit 0", "{port}"]
    twin = {**entry("twin", 8301, replicas=3, memory_gb=1), "backend": "command"}
    twin.update(command=command, model_path=None, quantization=None)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"twin": twin}, "router": {"memory_budget_gb": 2.5}}))
    [problem] = memory_problems(load_config(path))
    assert "the 3 entries started at launch (twin@0, twin@1, twin@2) need 3.0 GB" in str(problem)
