"""TFLM library builds: TFLite's single-rounding requantisation by default, stock TFLM's on request, cached apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinymlops.export import toolchain


@pytest.fixture(autouse=True)
def _no_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(toolchain, "_compiler_version", lambda: "arm-none-eabi-gcc 12.2.1")
    monkeypatch.setenv(toolchain.CACHE_ENV, str(tmp_path / "cache"))


def test_single_rounding_adds_both_defines_after_tflms_makefile(tmp_path: Path) -> None:
    emu = toolchain.EMULATED["cortex-m4"]
    gendir = toolchain.library_dir(tmp_path, emu, "cmsis_nn") / "gen"
    gendir.parent.mkdir(parents=True)
    cmd = toolchain._make_cmd(tmp_path, emu, "cmsis_nn", gendir, "single")
    # TFLM's Makefile first, our include file after it: its `+=` lands on CXXFLAGS/CCFLAGS the recipes expand
    assert cmd[:3] == ["make", "-f", toolchain.MAKEFILE] and cmd[3] == "-f"
    mk = Path(cmd[4]).read_text()
    for var in ("CXXFLAGS", "CCFLAGS"):
        assert f"{var} += -DTFLITE_SINGLE_ROUNDING=1 -DCMSIS_NN_USE_SINGLE_ROUNDING" in mk
    assert "OPTIMIZED_KERNEL_DIR=cmsis_nn" in cmd


def test_double_rounding_is_stock_tflm_in_its_own_cache_directory(tmp_path: Path) -> None:
    emu = toolchain.EMULATED["cortex-m7"]
    single = toolchain.library_dir(tmp_path, emu, "")
    double = toolchain.library_dir(tmp_path, emu, "", "double")
    assert single != double and "single-rounding" in single.name and "rounding" not in double.name
    cmd = toolchain._make_cmd(tmp_path, emu, "", double / "gen", "double")
    assert cmd.count("-f") == 1 and not any("OPTIMIZED_KERNEL_DIR" in c for c in cmd)


def test_unknown_rounding_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rounding 'half'"):
        toolchain._make_cmd(tmp_path, toolchain.EMULATED["cortex-m4"], "", tmp_path / "gen", "half")


def test_a_built_library_reuses_its_flags_without_asking_the_makefile(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    emu = toolchain.EMULATED["cortex-m4"]
    lib_dir = toolchain.library_dir(tmp_path, emu, "cmsis_nn")
    lib = lib_dir / "gen" / "lib" / "libtensorflow-microlite.a"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"!<arch>\n")
    vals = {"CXXFLAGS": "-DX=1 -MD -Wall -O2", "CCFLAGS": "-DX=1", "INCLUDES": "-Itensorflow -I/abs", "LIB": str(lib)}
    asked: list[int] = []

    def makefile(*_: object, **__: object) -> dict[str, str]:
        asked.append(1)
        return vals

    monkeypatch.setattr(toolchain, "build_flags", makefile)
    (lib_dir / "built.ok").write_text("arm-none-eabi-gcc 12.2.1\n")
    first = toolchain.build_library(tmp_path, emu, "cmsis_nn")     # built before flags were kept: asks once
    again = toolchain.build_library(tmp_path, emu, "cmsis_nn")
    assert asked == [1] and first.cached and again.cached and (lib_dir / "flags.json").is_file()
    assert again.cxxflags == ["-DX=1", "-O2"] and again.includes == [f"-I{tmp_path / 'tensorflow'}", "-I/abs"]
    (lib_dir / "built.ok").unlink()   # not built (or a failed build): the flags file is not trusted
    monkeypatch.setattr(toolchain.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("make")))
    with pytest.raises(RuntimeError, match="make"):
        toolchain.build_library(tmp_path, emu, "cmsis_nn")
    assert asked == [1, 1]
