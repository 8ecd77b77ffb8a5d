"""What llama-server is built with, and the key a build is kept by: pure functions."""

from __future__ import annotations

from slm_server.llama_server.cpu import parse_cpuinfo
from slm_server.llama_server.recipe import (
    LLAMA_CPP,
    X86_64_V3,
    Source,
    cache_key,
    missing_cpu_flags,
    recipe_for,
)

AMD = "AMD EPYC [1a2b3c]"
INTEL = "Intel Xeon Platinum [4d5e6f]"


def test_x86_64_builds_for_the_x86_64_v3_baseline_and_nothing_above_it() -> None:
    recipe = recipe_for("Linux", "x86_64", AMD)
    args = set(recipe.cmake_args)
    assert recipe.baseline == X86_64_V3 and recipe.portable
    assert "-DGGML_NATIVE=OFF" in args  # not the building CPU's own features (AMX, AVX-512)
    for feature in ("AVX", "AVX2", "FMA", "F16C", "BMI2"):
        assert f"-DGGML_{feature}=ON" in args
    assert not any("AVX512" in arg or "AMX" in arg for arg in args)
    assert "-DBUILD_SHARED_LIBS=OFF" in args  # one self-contained binary


def test_machines_with_different_cpus_share_the_portable_build() -> None:
    amd, intel = recipe_for("Linux", "x86_64", AMD), recipe_for("Linux", "x86_64", INTEL)
    assert cache_key(amd) == cache_key(intel)


def test_extra_flags_key_the_build_by_the_cpu_that_made_it() -> None:
    native = ["-DGGML_NATIVE=ON"]
    on_amd = recipe_for("Linux", "x86_64", AMD, native)
    on_intel = recipe_for("Linux", "x86_64", INTEL, native)
    assert on_amd.cmake_args[-1] == "-DGGML_NATIVE=ON"  # last, so it wins over the default
    assert not on_amd.portable
    assert cache_key(on_amd) != cache_key(on_intel)
    assert cache_key(on_amd) != cache_key(recipe_for("Linux", "x86_64", AMD))


def test_compiler_settings_from_the_environment_key_the_build_by_cpu() -> None:
    portable = recipe_for("Linux", "x86_64", AMD, compiler_env={"CFLAGS": ""})
    assert portable.baseline == X86_64_V3  # set but empty: nothing changes
    native = recipe_for("Linux", "x86_64", AMD, compiler_env={"CFLAGS": "-march=native"})
    other_cpu = recipe_for("Linux", "x86_64", INTEL, compiler_env={"CFLAGS": "-march=native"})
    assert native.compiler_env == ("CFLAGS=-march=native",)
    assert not native.portable
    assert len({cache_key(portable), cache_key(native), cache_key(other_cpu)}) == 3


def test_other_architectures_build_natively_keyed_by_cpu() -> None:
    m1 = recipe_for("Darwin", "arm64", "Apple M1 Pro")
    m3 = recipe_for("Darwin", "arm64", "Apple M3 Max")
    assert not any("GGML_NATIVE" in arg or "GGML_METAL" in arg for arg in m1.cmake_args)
    assert m1.baseline == "native:Apple M1 Pro"
    assert cache_key(m1) != cache_key(m3)
    assert cache_key(m1).startswith("darwin-arm64-")


def test_key_changes_with_the_sources_and_the_platform() -> None:
    recipe = recipe_for("Linux", "x86_64", AMD)
    other = Source(LLAMA_CPP.name, LLAMA_CPP.url, "0" * 64, LLAMA_CPP.size_bytes, LLAMA_CPP.tree)
    assert cache_key(recipe, other) != cache_key(recipe)
    assert cache_key(recipe_for("Darwin", "x86_64", AMD)) != cache_key(recipe)
    assert cache_key(recipe) == cache_key(recipe_for("Linux", "x86_64", AMD))


def test_a_cpu_below_the_baseline_is_told_before_building() -> None:
    recipe = recipe_for("Linux", "x86_64", AMD)
    sandy_bridge = frozenset({"sse4_2", "avx", "popcnt"})
    assert missing_cpu_flags(recipe, sandy_bridge) == {"avx2", "fma", "f16c", "bmi2"}
    assert missing_cpu_flags(recipe, sandy_bridge | {"avx2", "fma", "f16c", "bmi2"}) == set()
    assert missing_cpu_flags(recipe, frozenset()) == set()  # flags unknown: the check tells
    native = recipe_for("Linux", "x86_64", AMD, ["-DGGML_NATIVE=ON"])
    assert missing_cpu_flags(native, sandy_bridge) == set()


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx512f amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx512f amx_tile amx_int8
"""


def test_cpuinfo_gives_the_model_and_flags_of_the_first_processor() -> None:
    cpu = parse_cpuinfo(CPUINFO)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"avx2", "amx_tile"} <= cpu.flags
    # The same model with other features (a VM that hides AMX) is another identity.
    hidden = parse_cpuinfo(CPUINFO.replace(" amx_tile amx_int8", ""))
    assert hidden.identity != cpu.identity
    assert cpu.identity.startswith("Intel(R) Xeon(R) Platinum 8480+ [")
