"""Loading models.yaml: fatal problems, schema messages, path precedence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_server.config import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Problem,
    load_config,
    resolve_config_path,
)

REPO = Path(__file__).resolve().parents[1]


def entry(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "org/model",
        "backend": "mlx",
        "port": 8501,
        "model_path": "mlx-community/Some-Model-4bit",
        "default_timeout": 60,
        "quantization": "4bit",
    }
    return {**base, **overrides}


def write(tmp_path: Path, data: Any, name: str = "models.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def fatal(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return [str(p) for p in info.value.problems]


def test_problem_str_names_file_role_id_and_field() -> None:
    problem = Problem(
        "error",
        Path("config/models.yaml"),
        "standard",
        "qwen/qwen3-4b-2507",
        "contex_length",
        "unknown field; did you mean 'context_length'?",
    )
    assert str(problem) == (
        "error: config/models.yaml: models.standard (id qwen/qwen3-4b-2507): "
        "field 'contex_length': unknown field; did you mean 'context_length'?"
    )
    file_level = Problem("warning", Path("m.yaml"), None, None, None, "no model is enabled")
    assert str(file_level) == "warning: m.yaml: no model is enabled"


def test_valid_file_loads(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": {"standard": entry()}, "router": {"port": 9000}})
    loaded = load_config(path)
    assert loaded.path == path
    assert loaded.models["standard"].id == "org/model"
    assert loaded.file.router.port == 9000
    assert loaded.problems == []


def test_missing_file_suggests_copying_the_example(tmp_path: Path) -> None:
    [message] = fatal(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in message
    assert "cp config/models.yaml.example config/models.yaml" in message


def test_unreadable_file(tmp_path: Path) -> None:
    [message] = fatal(tmp_path)  # a directory cannot be read as a file
    assert "cannot read" in message


def test_not_yaml_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  a:\n    id: [unclosed\n  b: 1\n")
    [message] = fatal(path)
    assert message.startswith(f"error: {path}: not valid YAML: line ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "empty"), ("- a\n- b\n", "top level must be a mapping"), ("router: {}\n", "`models:`")],
)
def test_unusable_top_level(tmp_path: Path, text: str, expected: str) -> None:
    [message] = fatal(write(tmp_path, text))
    assert expected in message


def test_models_must_be_a_mapping(tmp_path: Path) -> None:
    [message] = fatal(write(tmp_path, {"models": ["a", "b"]}))
    assert "field 'models': must be a mapping" in message


def test_unknown_field_suggests_the_closest_name(tmp_path: Path) -> None:
    bad = entry(id="qwen/qwen3-4b-2507", contex_length=4096)
    path = write(tmp_path, {"models": {"standard": bad}})
    assert fatal(path) == [
        f"error: {path}: models.standard (id qwen/qwen3-4b-2507): field 'contex_length': "
        "unknown field; did you mean 'context_length'?"
    ]


def test_unknown_field_without_a_close_name(tmp_path: Path) -> None:
    [message] = fatal(write(tmp_path, {"models": {"a": entry(colour="blue")}}))
    assert message.endswith("field 'colour': unknown field")


def test_top_level_and_router_typos(tmp_path: Path) -> None:
    data = {"models": {"a": entry()}, "routr": {}, "router": {"prot": 1}}
    messages = fatal(write(tmp_path, data))
    assert any("field 'routr': unknown field; did you mean 'router'?" in m for m in messages)
    assert any("field 'router.prot': unknown field; did you mean 'port'?" in m for m in messages)


def test_misspelt_models_key_is_named(tmp_path: Path) -> None:
    messages = fatal(write(tmp_path, {"modles": {"a": entry()}}))
    assert any("no `models:` section" in m for m in messages)
    assert any("did you mean 'models'?" in m for m in messages)


def test_every_problem_of_every_entry_at_once(tmp_path: Path) -> None:
    data = {
        "models": {
            "one": entry(id="a/one", backend="mlxx", default_timeout=0),
            "two": {"id": "b/two", "backend": "llamacpp", "port": "eighty"},
            "three": "not a mapping",
        }
    }
    messages = fatal(write(tmp_path, data))
    joined = "\n".join(messages)
    assert "models.one (id a/one): field 'backend': 'mlxx' is not allowed; " in joined
    assert "allowed values: mlx, llamacpp" in joined
    assert (
        "models.one (id a/one): field 'default_timeout': must be greater than 0 (got 0)" in joined
    )
    assert "models.two (id b/two): field 'port': must be a valid integer" in joined
    for missing in ("model_path", "default_timeout", "quantization"):
        assert f"models.two (id b/two): field '{missing}': required field is missing" in joined
    assert "models.three: entry must be a mapping of fields, got 'not a mapping'" in joined
    assert len(messages) == 7


def test_bad_model_type_lists_allowed_values(tmp_path: Path) -> None:
    [message] = fatal(write(tmp_path, {"models": {"a": entry(model_type="chat")}}))
    assert "'chat' is not allowed; allowed values: lm, multimodal, image-generation" in message


@pytest.mark.parametrize("role", ["", "  ", 7, None])
def test_role_names_must_be_non_empty_strings(tmp_path: Path, role: object) -> None:
    path = write(tmp_path, {"models": {role: entry()}})
    [message] = fatal(path)
    assert message == f"error: {path}: models.{role!r}: role name must be a non-empty string"


def test_the_role_name_router_is_taken_by_the_routers_own_log(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": {"router": entry(), "chat": entry(id="b", port=8502)}})
    [message] = fatal(path)
    assert message.startswith(f"error: {path}: models.router: the role name 'router' is taken")
    assert "/admin/logs/router" in message


def test_duplicate_role_name_is_not_dropped_silently(tmp_path: Path) -> None:
    text = yaml.safe_dump({"models": {"a": entry()}}) + "  a:\n    id: other\n"
    messages = fatal(write(tmp_path, text))
    assert "line 9: duplicate key 'a'" in messages[0]


def test_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = """
models:
  a: &common
    id: a/one
    backend: mlx
    port: 8501
    model_path: org/a
    default_timeout: 30
    quantization: 4bit
  b:
    <<: *common
    id: b/two
    port: 8502
"""
    loaded = load_config(write(tmp_path, text))
    assert loaded.models["b"].id == "b/two"
    assert loaded.models["b"].model_path == "org/a"


def test_base_dir_is_repo_root_for_a_config_directory(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    nested = write(tmp_path / "config", {"models": {"a": entry()}})
    assert load_config(nested).base_dir == tmp_path.resolve()
    (tmp_path / "elsewhere").mkdir()
    other = write(tmp_path / "elsewhere", {"models": {"a": entry()}})
    assert load_config(other).base_dir == (tmp_path / "elsewhere").resolve()


def test_example_config_has_no_schema_errors() -> None:
    loaded = load_config(REPO / "config" / "models.yaml.example")
    assert set(loaded.models) == {"standard", "embed", "rerank", "coder", "vision"}
    assert {p.field for p in loaded.problems} <= {"model_path", "chat_template_file"}
    assert all(p.severity == "warning" for p in loaded.problems if p.role in ("coder", "vision"))


def test_example_config_documents_every_field() -> None:
    from slm_server.config import ApiKey, ModelEntry, RouterSettings

    text = (REPO / "config" / "models.yaml.example").read_text(encoding="utf-8")
    for name in [*ModelEntry.model_fields, *RouterSettings.model_fields, *ApiKey.model_fields]:
        assert name in text, name


def test_a_misspelt_api_key_field_gets_a_suggestion(tmp_path: Path) -> None:
    keys = [{"name": "alice", "key_evn": "SLM_KEY_ALICE"}]
    problems = fatal(write(tmp_path, {"models": {"a": entry()}, "router": {"api_keys": keys}}))
    assert any(
        "field 'router.api_keys.0.key_evn': unknown field; did you mean 'key_env'?" in problem
        for problem in problems
    ), problems


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ({"key": 1234567890123456}, "router.api_keys.0.key': must be a valid string"),
        ({"key": ["sk", 1234567890123456]}, "router.api_keys.0.key': must be a valid string"),
        ({"key": " 1234567890123456"}, "starts or ends with whitespace"),
        ({"key_env": "sk-1234567890123456"}, "must be the name of an environment variable"),
        ({"key_sha256": "1234567890123456"}, "must be 64 hex digits"),
    ],
)
def test_what_is_written_for_an_api_key_is_never_quoted_back(
    tmp_path: Path, key: dict[str, Any], says: str
) -> None:
    keys = [{"name": "alice", **key}]
    problems = fatal(write(tmp_path, {"models": {"a": entry()}, "router": {"api_keys": keys}}))
    assert any(says in problem for problem in problems), problems
    assert not any("1234567890123456" in problem for problem in problems), problems


@pytest.mark.parametrize("grace", [-1, "soon", float("inf")])
def test_shutdown_grace_must_be_a_number_of_seconds(grace: object) -> None:
    from slm_server.config import RouterSettings

    assert RouterSettings().shutdown_grace_s == 10
    assert RouterSettings(shutdown_grace_s=0).shutdown_grace_s == 0
    with pytest.raises(ValueError, match="shutdown_grace_s"):
        RouterSettings.model_validate({"shutdown_grace_s": grace})


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    assert resolve_config_path(None) == DEFAULT_CONFIG_PATH == Path("config/models.yaml")
    monkeypatch.setenv(CONFIG_ENV_VAR, "/etc/from-env.yaml")
    assert resolve_config_path(None) == Path("/etc/from-env.yaml")
    assert resolve_config_path("cli.yaml") == Path("cli.yaml")
    monkeypatch.setenv(CONFIG_ENV_VAR, "")
    assert resolve_config_path(None) == DEFAULT_CONFIG_PATH


def test_role_name_yaml_reads_as_boolean_gets_a_hint(tmp_path: Path) -> None:
    text = yaml.safe_dump({"models": {"x": entry()}}).replace("x:", "off:")
    [message] = fatal(write(tmp_path, text))
    assert "quote it" in message


_ROUTER_FLOATS = (
    "max_body_mb",
    "health_timeout",
    "shutdown_grace_s",
    "body_timeout_s",
    "max_inflight_body_mb",
    "response_store_mb",
    "response_store_ttl_s",
)


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_router_numbers_must_be_finite(tmp_path: Path, value: str) -> None:
    # Infinity once crashed the router at start (OverflowError counting MiB in bytes)
    # although the configuration had been accepted.
    settings = "\n".join(f"  {name}: {value}" for name in _ROUTER_FLOATS)
    text = f"models:\n  a: {yaml.safe_dump(entry(), default_flow_style=True)}router:\n{settings}\n"
    messages = fatal(write(tmp_path, text))
    for name in _ROUTER_FLOATS:
        assert any(f"field 'router.{name}'" in m and m.startswith("error") for m in messages), name


def test_the_response_store_holds_at_least_a_kilobyte(tmp_path: Path) -> None:
    from slm_server.router.app import RouterApp

    data = {"models": {"a": entry()}, "router": {"response_store_mb": 1e-7}}
    [message] = fatal(write(tmp_path, data))
    assert "field 'router.response_store_mb'" in message
    # The smallest accepted sizes start a router.
    smallest = {"response_store_mb": 1 / 1024, "max_body_mb": 1e-7, "max_inflight_body_mb": 1e-7}
    loaded = load_config(write(tmp_path, {"models": {"a": entry()}, "router": smallest}))
    RouterApp(loaded)


def test_pinned_with_an_idle_ttl_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": {"chat": entry(pinned=True, idle_ttl_s=60)}})
    assert fatal(path) == [
        f"error: {path}: models.chat (id org/model): pinned and idle_ttl_s contradict each "
        "other: a pinned entry is never stopped; drop one of them"
    ]


@pytest.mark.parametrize(
    ("budget", "loaded"), [("auto", "auto"), ("12", 12.0), ("0.5", 0.5), ("null", None)]
)
def test_memory_budget_is_gigabytes_or_auto(tmp_path: Path, budget: str, loaded: object) -> None:
    models = yaml.safe_dump({"models": {"chat": entry(on_demand=True, memory_gb=2)}})
    path = write(tmp_path, f"{models}router:\n  memory_budget_gb: {budget}\n")
    assert load_config(path).file.router.memory_budget_gb == loaded


@pytest.mark.parametrize("budget", ["0", "-3", ".inf", ".nan", "lots", "true"])
def test_a_bad_memory_budget_says_what_is_allowed(tmp_path: Path, budget: str) -> None:
    models = yaml.safe_dump({"models": {"chat": entry()}})
    path = write(tmp_path, f"{models}router:\n  memory_budget_gb: {budget}\n")
    [problem] = fatal(path)
    assert "field 'router.memory_budget_gb': must be a number of GB greater than 0, or auto" in (
        problem
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("idle_ttl_s", 0), ("memory_gb", -1), ("on_demand", "maybe"), ("pinned", "sometimes")],
)
def test_lifecycle_fields_reject_bad_values(tmp_path: Path, field: str, value: object) -> None:
    path = write(tmp_path, {"models": {"chat": entry(**{field: value})}})
    [problem] = fatal(path)
    assert f"field '{field}'" in problem


def test_max_loaded_models_is_at_least_one(tmp_path: Path) -> None:
    models = yaml.safe_dump({"models": {"chat": entry()}})
    path = write(tmp_path, f"{models}router:\n  max_loaded_models: 0\n")
    [problem] = fatal(path)
    assert "field 'router.max_loaded_models': must be greater than or equal to 1" in problem
