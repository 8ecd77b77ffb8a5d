"""How a process's end is put into words: by the signal's name and what it usually means."""

from __future__ import annotations

import signal

import pytest

from slm_server.exits import describe_exit, exit_signal


def test_a_plain_exit_keeps_its_code() -> None:
    assert describe_exit(3, "llama-server") == "exited with code 3"
    assert describe_exit(0, "llama-server") == "exited with code 0"


def test_sigill_names_the_cpu_mismatch_and_where_the_fix_is() -> None:
    text = describe_exit(-signal.SIGILL, "llama-server")
    assert text == (
        "killed by SIGILL (illegal instruction: llama-server was built for CPU features "
        'this machine cannot run; see README "Building llama-server")'
    )


def test_sigill_of_another_program_names_it_without_the_llama_hint() -> None:
    text = describe_exit(-signal.SIGILL, "mlx_lm.server")
    assert "mlx_lm.server was built for CPU features" in text
    assert "README" not in text


@pytest.mark.parametrize(
    ("sig", "words"),
    [
        (signal.SIGKILL, "out-of-memory killer"),
        (signal.SIGSEGV, "segmentation fault"),
        (signal.SIGBUS, "bus error"),
        (signal.SIGABRT, "aborted"),
    ],
)
def test_common_signals_say_what_they_usually_mean(sig: signal.Signals, words: str) -> None:
    text = describe_exit(-sig, "llama-server")
    assert text.startswith(f"killed by {sig.name} (")
    assert words in text


def test_a_signal_without_a_known_meaning_is_still_named() -> None:
    assert describe_exit(-signal.SIGUSR1, "x") == "killed by SIGUSR1"


def test_shell_convention_reads_128_plus_n_as_signal_n() -> None:
    assert exit_signal(128 + signal.SIGILL, shell_convention=True) is signal.SIGILL
    assert describe_exit(137, "x", shell_convention=True).startswith("killed by SIGKILL")
    # Without it, 137 is only a number a program chose to exit with.
    assert exit_signal(137) is None
    assert describe_exit(137, "x") == "exited with code 137"


def test_numbers_that_are_no_signal_stay_codes() -> None:
    assert exit_signal(128, shell_convention=True) is None
    assert exit_signal(128 + 200, shell_convention=True) is None
    assert exit_signal(-200) is None
    assert describe_exit(-200, "x") == "exited with code -200"
