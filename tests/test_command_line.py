"""A command entry's command line: placeholders and stop signals, as plain calls."""

from __future__ import annotations

import signal

import pytest

from slm_server.config.command_line import (
    CommandLineError,
    fill_in,
    placeholders,
    stop_signal,
    stop_signal_name,
    used_placeholders,
)


def test_placeholders_are_found_in_order_wherever_they_stand() -> None:
    assert placeholders("--port={port}") == ["port"]
    assert placeholders("{host}:{port}") == ["host", "port"]
    assert placeholders("plain") == []
    assert used_placeholders(["x", "{id}", "--ctx", "{context_length}"]) == {
        "id",
        "context_length",
    }


def test_doubled_braces_are_text_not_placeholders() -> None:
    assert placeholders('{{"enable_thinking": false}}') == []
    assert fill_in(['{{"a": {port}}}'], {"port": "9"}) == ['{"a": 9}']


@pytest.mark.parametrize(
    ("arg", "says"),
    [
        ("{prot}", "unknown placeholder {prot}"),
        ('{"a": 1}', 'unknown placeholder {"a"}'),
        ("{port", "unmatched brace"),
        ("port}", "unmatched brace"),
        ("{port:05}", "without a format or conversion"),
        ("{port!r}", "without a format or conversion"),
        ("{id.upper}", "unknown placeholder {id.upper}"),
    ],
)
def test_what_could_never_be_filled_in_is_an_error_naming_it(arg: str, says: str) -> None:
    with pytest.raises(CommandLineError) as caught:
        placeholders(arg)
    assert says in str(caught.value)


def test_filling_in_replaces_every_placeholder_and_nothing_else() -> None:
    values = {"port": "81", "host": "127.0.0.1", "id": "m", "model_path": "/m"}
    argv = ["serve", "{model_path}", "--bind={host}:{port}", "--name", "{id}", "-x"]
    assert fill_in(argv, values) == ["serve", "/m", "--bind=127.0.0.1:81", "--name", "m", "-x"]


@pytest.mark.parametrize(
    ("written", "name"),
    [("SIGTERM", "SIGTERM"), ("int", "SIGINT"), ("SigQuit", "SIGQUIT"), (" kill ", "SIGKILL")],
)
def test_stop_signals_are_taken_by_name_in_any_case(written: str, name: str) -> None:
    assert stop_signal_name(written) == name
    assert stop_signal(written) is signal.Signals[name]


@pytest.mark.parametrize("written", ["SIGSTOP", "SIGCHLD", "9", "TERMINATE", ""])
def test_a_signal_that_does_not_stop_a_server_is_refused(written: str) -> None:
    with pytest.raises(ValueError, match="not a signal that stops a server"):
        stop_signal_name(written)
