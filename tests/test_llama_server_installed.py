"""The llama-server that ``scripts/sync`` built: it passes its check and runs on any x86-64-v3 CPU.

A binary built on one machine must run on the next one, whatever its CPU (an AMD EPYC, an
Intel Xeon with AVX-512 and AMX): so it may use no instruction above x86-64-v3. That is
checked here on the binary itself, by its disassembly.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slm_server.backends.llamacpp import find_llama_server
from slm_server.llama_server.cache import Layout
from slm_server.llama_server.check import check_model, run_check

ON_X86_64 = platform.machine().lower() in ("x86_64", "amd64")

# What only AVX-512 and AMX code contains: their registers (zmm, opmasks k1-k7, AMX tiles),
# embedded broadcasts, and instructions with no AVX2 form.
ABOVE_V3 = re.compile(
    r"%zmm|%k[1-7]\b|%tmm|\{1to\d+\}|\b(?:vpternlog[dq]|vpermt2\w+|vpermi2\w+|vpcompress\w+"
    r"|vpexpand\w+|vpconflict\w+|vplzcnt\w+|vrndscale\w+|vscalef\w+|vgetexp\w+|vgetmant\w+"
    r"|vfixupimm\w+|vfpclass\w+|vpmovm2\w+|vpmov\w2m|vpdpbusds?|vpdpwssds?|vdpbf16ps"
    r"|vcvtne2ps2bf16|tileloadd\w*|tilestored|tilezero|tdpb\w+|ldtilecfg|sttilecfg)\b"
)


def instructions_above_v3(binary: Path) -> list[str]:
    """Disassembled lines of ``binary`` that an x86-64-v3 CPU cannot run (the first few)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.fail("objdump (binutils) is needed to read the binary's instructions")
    found: list[str] = []
    with subprocess.Popen(
        [objdump, "-d", "--no-show-raw-insn", str(binary)], stdout=subprocess.PIPE, text=True
    ) as dump:
        assert dump.stdout is not None
        for line in dump.stdout:
            if ABOVE_V3.search(line):
                found.append(line.strip())
                if len(found) >= 5:
                    dump.kill()
                    break
    return found


def built_here() -> Path:
    """The build of ``build-llama-server``; skipped where a llama-server on PATH is used."""
    binary = Layout.here().current_binary()
    if binary is None:
        if shutil.which("llama-server"):
            pytest.skip("the llama-server on PATH is used, so none was built here")
        pytest.fail("no llama-server built: run scripts/sync")
    return binary


def test_the_llama_server_in_use_loads_a_model_and_generates_here() -> None:
    binary = find_llama_server()
    model = check_model()
    assert binary is not None and model is not None, "run scripts/sync"
    verdict = run_check(binary, model)
    assert verdict.ok, verdict.detail
    assert "generated a token" in verdict.detail


@pytest.mark.skipif(not ON_X86_64, reason="the x86-64-v3 baseline is for x86-64 builds")
def test_the_built_llama_server_uses_no_instruction_above_x86_64_v3() -> None:
    assert instructions_above_v3(built_here()) == []


@pytest.mark.skipif(not ON_X86_64, reason="AVX-512 is x86-64")
def test_the_instruction_scan_finds_avx512_code(tmp_path: Path) -> None:
    source = tmp_path / "wide.c"
    source.write_text(
        "void add(float *restrict a, const float *restrict b, int n) {\n"
        "    for (int i = 0; i < n; i++) a[i] += b[i];\n}\n"
        "int main(void) { return 0; }\n"
    )
    binary = tmp_path / "wide"
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None
    compile_ = [compiler, "-O3", "-mavx512f", "-mprefer-vector-width=512"]
    subprocess.run([*compile_, str(source), "-o", str(binary)], check=True, timeout=60)
    assert instructions_above_v3(binary)  # what a native build on an AVX-512 machine makes


QEMU = shutil.which("qemu-x86_64")  # .ci/run installs it (Debian's qemu-user)


def on_emulated_cpu(binary: Path, cpu: str, directory: Path) -> Path:
    """A stand-in that runs ``binary`` on an emulated ``cpu`` (QEMU's user mode)."""
    wrapper = directory / f"llama-server-on-{cpu}"
    wrapper.write_text(f'#!/bin/sh\nexec {QEMU} -cpu {cpu} {binary} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.skipif(not ON_X86_64 or QEMU is None, reason="needs qemu-x86_64 (qemu-user)")
def test_the_built_llama_server_runs_on_an_x86_64_v3_cpu_and_not_below(tmp_path: Path) -> None:
    """Haswell has AVX2 and FMA but no AVX-512 or AMX; Nehalem lacks AVX."""
    binary, model = built_here(), check_model()
    assert model is not None
    haswell = run_check(on_emulated_cpu(binary, "Haswell", tmp_path), model, timeout_s=600)
    assert haswell.ok, haswell.detail
    nehalem = run_check(on_emulated_cpu(binary, "Nehalem", tmp_path), model, timeout_s=600)
    assert not nehalem.ok and nehalem.keep
    assert nehalem.detail.startswith("killed by SIGILL (illegal instruction: llama-server")


def test_a_second_build_reuses_the_kept_one_and_its_check() -> None:
    binary = built_here()
    if shutil.which("llama-server"):
        pytest.skip("the llama-server on PATH is used")
    result = subprocess.run(
        [sys.executable, "-m", "slm_server", "build-llama-server"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"llama-server for x86-64-v3 is already built: {binary}" in result.stderr or (
        not ON_X86_64 and "is already built" in result.stderr
    )
    assert f"{binary}: passed its check (loaded a model and generated a token" in result.stderr
