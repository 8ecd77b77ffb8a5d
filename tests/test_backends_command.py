"""``backend: command``: its fields' validation and the launch spec built from an entry."""

from __future__ import annotations

import re
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from config_builder import load_errors, load_models
from slm_server.backends import installation_problems, launch_spec
from slm_server.backends.command import find_program
from slm_server.backends.spec import BackendUnsupported
from slm_server.config import ModelEntry
from slm_server.config.report import check_entry
from slm_server.config.validation import validate_entries


def command_entry(**fields: Any) -> dict[str, Any]:
    return {
        "id": "org/model",
        "backend": "command",
        "port": 8601,
        "host": "127.0.0.1",
        "default_timeout": 60,
        "command": [sys.executable, "-m", "http.server", "{port}", "--bind", "{host}"],
        **fields,
    }


def model(tmp_path: Path, **fields: Any) -> ModelEntry:
    return load_models(tmp_path, m=command_entry(**fields)).models["m"]


def test_a_command_needs_no_model_path_nor_quantization(tmp_path: Path) -> None:
    entry = model(tmp_path)
    assert entry.model_path is None and entry.quantization is None
    assert (entry.health_path, entry.stop_signal, entry.ready_timeout_s) == (
        "/health",
        "SIGTERM",
        None,
    )


def test_the_built_in_kinds_still_require_model_path_and_quantization(tmp_path: Path) -> None:
    bare = {"id": "x", "port": 8602, "default_timeout": 5}
    problems = load_errors(
        tmp_path, a={**bare, "backend": "llamacpp"}, b={**bare, "backend": "mlx"}
    )
    for role in ("a", "b"):
        for field in ("model_path", "quantization"):
            assert any(
                f"models.{role} (id x): field '{field}': required field is missing" in problem
                for problem in problems
            ), problems


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"command": None}, "field 'command': required field is missing"),
        ({"command": []}, "field 'command': List should have at least 1 item"),
        ({"command": ["vllm", "{prot}"]}, "unknown placeholder {prot} in '{prot}'"),
        ({"command": ["x", "{model_path}"]}, "{model_path} is used, but the entry sets no"),
        ({"command": ["x", "-c", "{context_length}"]}, "{context_length} is used, but the"),
        ({"stop_signal": "SIGSTOP"}, "field 'stop_signal': 'SIGSTOP' is not a signal that stops"),
        ({"health_path": "health"}, "field 'health_path': 'health' is not a URL path"),
        ({"ready_timeout_s": 0}, "field 'ready_timeout_s'"),
        ({"native_endpoints": ["/v1/embeddings"]}, "field 'native_endpoints.0'"),
    ],
)
def test_a_command_that_could_never_run_is_an_error_naming_its_field(
    tmp_path: Path, fields: dict[str, Any], says: str
) -> None:
    entry = {key: value for key, value in command_entry(**fields).items() if value is not None}
    problems = load_errors(tmp_path, m=entry)
    assert any(says in problem for problem in problems), problems


def test_a_stop_signal_is_kept_by_its_full_name(tmp_path: Path) -> None:
    assert model(tmp_path, stop_signal="int").stop_signal == "SIGINT"


def test_placeholders_are_filled_in_from_the_entry(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "w.bin").write_bytes(b"")
    argv = [sys.executable, "{model_path}", "--at={host}:{port}", "{id}", "{context_length}"]
    argv.append("{{}}")
    entry = model(tmp_path, command=argv, model_path="models/w.bin", context_length=4096)
    spec = launch_spec(entry, tmp_path)
    model_file = str(tmp_path / "models" / "w.bin")  # relative to the config's directory
    assert spec.argv == [
        sys.executable,
        model_file,
        "--at=127.0.0.1:8601",
        "org/model",
        "4096",
        "{}",
    ]


def test_a_hugging_face_id_is_passed_as_it_is(tmp_path: Path) -> None:
    entry = model(tmp_path, command=["python3", "{model_path}"], model_path="Qwen/Qwen3-0.6B")
    assert launch_spec(entry, tmp_path).argv[1:] == ["Qwen/Qwen3-0.6B"]


def test_a_model_path_that_is_not_there_fails_the_start_in_words(tmp_path: Path) -> None:
    entry = model(tmp_path, command=["python3", "{model_path}"], model_path="./nowhere.bin")
    with pytest.raises(ValueError, match=r"nowhere\.bin does not exist"):
        launch_spec(entry, tmp_path)


def test_the_spec_carries_env_health_path_stop_signal_and_timeout(tmp_path: Path) -> None:
    entry = model(
        tmp_path,
        env={"CUDA_VISIBLE_DEVICES": 0, "HF_HOME": "/data/hf"},
        health_path="/v1/models",
        stop_signal="SIGINT",
        ready_timeout_s=1800,
        extra_args=["--verbose"],
    )
    spec = launch_spec(entry, tmp_path)
    assert spec.env == {"CUDA_VISIBLE_DEVICES": "0", "HF_HOME": "/data/hf"}
    assert spec.health_path == "/v1/models"
    assert spec.stop_signal is signal.SIGINT
    assert spec.ready_timeout_s == 1800
    assert spec.argv[-1] == "--verbose"  # extra_args go last, as for every kind


def test_the_bridged_endpoints_are_converted_unless_listed(tmp_path: Path) -> None:
    plain = launch_spec(model(tmp_path), tmp_path).native_endpoints
    assert "/v1/chat/completions" in plain
    assert not {"/v1/responses", "/v1/messages", "/v1/messages/count_tokens"} & plain
    listed = model(tmp_path, native_endpoints=["/v1/responses"])
    assert "/v1/responses" in launch_spec(listed, tmp_path).native_endpoints


def test_a_program_not_found_fails_the_start_by_name(tmp_path: Path) -> None:
    entry = model(tmp_path, command=["vllm-not-installed-here", "serve"])
    with pytest.raises(BackendUnsupported, match=r"^command not found: vllm-not-installed-here$"):
        launch_spec(entry, tmp_path)


def test_a_program_path_resolves_against_the_config_directory(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "server"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    assert find_program("./bin/server", tmp_path) is None  # not executable yet
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    assert find_program("./bin/server", tmp_path) == str(script)
    entry = model(tmp_path, command=["./bin/server", "{port}"])
    assert launch_spec(entry, tmp_path).argv == [str(script), "8601"]


def test_check_config_warns_of_a_program_not_on_path(tmp_path: Path) -> None:
    config = load_models(
        tmp_path,
        gone=command_entry(command=["vllm-not-installed-here", "serve"]),
        off=command_entry(command=["also-not-here"], port=8603, enabled=False),
        here=command_entry(port=8604),
    )
    [problem] = installation_problems(config)
    assert problem.severity == "warning"  # it may be installed before the server starts
    assert str(problem).endswith(
        "models.gone (id org/model): field 'command': command not found on PATH: "
        "vllm-not-installed-here; starting this model will fail"
    )


def test_fields_of_other_kinds_are_warned_about_both_ways(tmp_path: Path) -> None:
    config = load_models(
        tmp_path,
        cmd=command_entry(temp=0.7, tool_call_parser="qwen3"),
        llama={
            "id": "l",
            "backend": "llamacpp",
            "port": 8605,
            "model_path": "/x.gguf",
            "quantization": "Q4_K_M",
            "default_timeout": 5,
            "stop_signal": "SIGINT",
        },
    )
    said = {
        (p.field, p.message)
        for role in ("cmd", "llama")
        for p in check_entry(role, config.models[role], config.path, tmp_path)
        if p.severity == "warning"
    }
    assert ("temp", "applies to llamacpp only; ignored for command") in said
    assert ("tool_call_parser", "applies to mlx only; ignored for command") in said
    assert ("stop_signal", "applies to command only; ignored for llamacpp") in said


def test_check_config_checks_a_command_model_path_only_when_given(tmp_path: Path) -> None:
    config = load_models(
        tmp_path,
        none=command_entry(),
        missing=command_entry(port=8606, model_path="./gone.bin"),
    )
    fields = {
        role: [p.field for p in check_entry(role, entry, config.path, tmp_path)]
        for role, entry in config.models.items()
    }
    assert fields == {"none": [], "missing": ["model_path"]}


def test_any_model_type_may_be_served_by_a_command(tmp_path: Path) -> None:
    config = load_models(tmp_path, w=command_entry(model_type="whisper"))
    assert check_entry("w", config.models["w"], config.path, tmp_path) == []


def test_the_readme_s_command_examples_are_valid_entries() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Any engine: backend: command")[1].split("\n### ")[0]
    examples: dict[str, Any] = {}
    for block in re.findall(r"```yaml\n(.*?)```", section, re.DOTALL):
        examples.update(yaml.safe_load(block))
    entries, problems = validate_entries(examples, Path("README.md"))
    assert problems == []
    assert {entry.backend for entry in entries.values()} == {"command"}
    assert len(entries) == 3  # vLLM, SGLang, whisper.cpp


def test_a_path_in_env_is_where_the_program_is_looked_up(tmp_path: Path) -> None:
    bin_dir = tmp_path / "engine-bin"
    bin_dir.mkdir()
    program = bin_dir / "my-engine"
    program.write_text("#!/bin/sh\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    fields = {"command": ["my-engine", "{port}"], "env": {"PATH": str(bin_dir)}}
    config = load_models(tmp_path, m=command_entry(**fields))
    assert launch_spec(config.models["m"], tmp_path).argv == [str(program), "8601"]
    assert installation_problems(config) == []


@pytest.mark.parametrize("name", ["", "A=B"])
def test_an_env_name_no_process_could_have_is_an_error(tmp_path: Path, name: str) -> None:
    problems = load_errors(tmp_path, m=command_entry(env={name: "1"}))
    assert any("cannot be the name of an environment variable" in p for p in problems), problems
