"""Cortex-M toolchain, TFLM tree and QEMU: find them, build the TFLM library once per (core, kernels) and cache it.

The library is built with TFLM's own Makefile (``cortex_m_generic``) into a cache directory outside the TFLM tree
(``BASE_GENDIR``), keyed by the tree's path, the compiler version, the architecture, the kernels and the
requantisation rounding, so a user's read-only tree works and a second firmware for the same core links in seconds.

Rounding: TFLM and CMSIS-NN requantise int8 accumulators by default in two roundings (gemmlowp's
``SaturatingRoundingDoublingHighMul`` then ``RoundingDivideByPOT``); the TFLite interpreter the pipeline evaluates
variants with (the LiteRT wheel) rounds once (``TFLITE_SINGLE_ROUNDING``). The two differ by 1 LSB on some
intermediate activations, and a final SOFTMAX whose input scale is coarse amplifies that to several LSB of the
output (10 LSB measured on the demo MLP). Both libraries have a compile-time switch for TFLite's arithmetic
(``TFLITE_SINGLE_ROUNDING=1``, ``CMSIS_NN_USE_SINGLE_ROUNDING``): firmware is built with it by default, so the
device computes what the evaluated variant computed (docs/mcu.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tinymlops.errors import ConfigError, TinyMLOpsError

TFLM_DIR_ENV = "TINYMLOPS_TFLM_DIR"
CACHE_ENV = "TINYMLOPS_CACHE_DIR"
MAKEFILE = "tensorflow/lite/micro/tools/make/Makefile"
INSTALL_HINT = ("install the Arm toolchain and QEMU: apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi "
                "qemu-system-arm")
TFLM_HINT = (f"set {TFLM_DIR_ENV} or pass --tflm-dir: a tflite-micro checkout whose third-party downloads are in "
             "place (run `make -f tensorflow/lite/micro/tools/make/Makefile third_party_downloads` once online)")


@dataclass(frozen=True)
class Emulated:
    """How a core is built and emulated: TFLM's TARGET_ARCH, the QEMU machine, its memory map and SysTick clock."""

    core: str
    target_arch: str
    mcpu: str
    fpu: str
    machine: str
    flash_origin: int
    flash_bytes: int
    ram_origin: int
    ram_bytes: int
    systick_hz: int


#: QEMU's mps2 boards by core (memory maps from QEMU's hw/arm/mps2.c / mps2-tz.c; an505 runs secure code)
EMULATED: dict[str, Emulated] = {
    "cortex-m4": Emulated("cortex-m4", "cortex-m4+fp", "cortex-m4", "fpv4-sp-d16", "mps2-an386",
                          0x00000000, 4 << 20, 0x20000000, 4 << 20, 25_000_000),
    "cortex-m7": Emulated("cortex-m7", "cortex-m7+fp", "cortex-m7", "fpv5-d16", "mps2-an500",
                          0x00000000, 4 << 20, 0x20000000, 4 << 20, 25_000_000),
    "cortex-m33": Emulated("cortex-m33", "cortex-m33", "cortex-m33", "fpv5-sp-d16", "mps2-an505",
                           0x10000000, 4 << 20, 0x38000000, 2 << 20, 20_000_000),
}


def emulated(core: str) -> Emulated:
    """Return the QEMU board for a core (UsageError naming the core and the emulated ones otherwise)."""
    if core not in EMULATED:
        from tinymlops.errors import UsageError
        raise UsageError(f"no emulator for core {core}: firmware runs under QEMU only for "
                         f"{', '.join(EMULATED)} (mps2-an386/an500/an505); export without --build/--run")
    return EMULATED[core]


def kernels_for(runtime: str) -> str:
    """Return TFLM's OPTIMIZED_KERNEL_DIR for a target runtime ('' = reference kernels)."""
    return "cmsis_nn" if runtime in ("tflm-cmsis-nn", "x-cube-ai", "vendor-optimized") else ""


#: requantisation rounding of the library: "single" = the TFLite interpreter's (default), "double" = stock TFLM
ROUNDINGS = ("single", "double")
_SINGLE_ROUNDING_DEFINES = "-DTFLITE_SINGLE_ROUNDING=1 -DCMSIS_NN_USE_SINGLE_ROUNDING"


def cache_root() -> Path:
    """Return the cache for built libraries: ``$TINYMLOPS_CACHE_DIR``, else ``~/.cache/tinymlops``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tinymlops")


def find_tflm(explicit: str | Path | None = None) -> Path:
    """Return the TFLM tree (``--tflm-dir``, else ``$TINYMLOPS_TFLM_DIR``); ConfigError saying what to set."""
    raw = str(explicit) if explicit else os.environ.get(TFLM_DIR_ENV, "")
    if not raw:
        raise ConfigError(f"no TFLM source tree: {TFLM_HINT}")
    d = Path(raw).expanduser().resolve()
    if not (d / MAKEFILE).is_file():
        raise ConfigError(f"{d}: not a tflite-micro tree ({MAKEFILE} missing); {TFLM_HINT}")
    if not (d / "tensorflow/lite/micro/tools/make/downloads/flatbuffers").is_dir():
        raise ConfigError(f"{d}: third-party downloads missing; {TFLM_HINT}")
    return d


def require_tools(run: bool) -> None:
    """Raise ConfigError naming the packages to install when the cross compiler (or QEMU for ``run``) is missing."""
    missing = [t for t in ("arm-none-eabi-gcc", "arm-none-eabi-g++", "arm-none-eabi-size")
               if shutil.which(t) is None]
    if run and shutil.which("qemu-system-arm") is None:
        missing.append("qemu-system-arm")
    if missing:
        raise ConfigError(f"{', '.join(missing)} not found on PATH; {INSTALL_HINT}")


def _compiler_version() -> str:
    out = subprocess.run(["arm-none-eabi-gcc", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


@dataclass(frozen=True)
class TflmLibrary:
    """A built TFLM static library and the flags firmware sources must be compiled with."""

    tflm_dir: Path
    lib_path: Path
    cxxflags: list[str]
    cflags: list[str]
    includes: list[str]
    build_seconds: float
    cached: bool
    rounding: str = "single"


def _make_cmd(tflm: Path, emu: Emulated, kernels: str, gendir: Path, rounding: str) -> list[str]:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding {rounding!r}: expected one of {ROUNDINGS}")
    cmd = ["make", "-f", MAKEFILE]
    if rounding == "single":  # read after TFLM's Makefile: its recipes expand CXXFLAGS/CCFLAGS when they run
        mk = gendir.parent / "single_rounding.mk"
        mk.write_text(f"CXXFLAGS += {_SINGLE_ROUNDING_DEFINES}\nCCFLAGS += {_SINGLE_ROUNDING_DEFINES}\n")
        cmd += ["-f", str(mk)]
    cmd += ["TARGET=cortex_m_generic", f"TARGET_ARCH={emu.target_arch}", "TOOLCHAIN=gcc",
           "TARGET_TOOLCHAIN_ROOT=" + str(Path(shutil.which("arm-none-eabi-gcc") or "/usr/bin/x").parent) + "/",
           "BUILD_TYPE=release_with_logs", f"BASE_GENDIR={gendir}"]
    if kernels:
        cmd.append(f"OPTIMIZED_KERNEL_DIR={kernels}")
    return cmd


def _make_env() -> dict[str, str]:
    # TFLM's Makefile runs Python generators while parsing: they need numpy and Pillow, i.e. this interpreter
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def library_dir(tflm: Path, emu: Emulated, kernels: str, rounding: str = "single") -> Path:
    """Return the cache directory of the library for (tree, compiler, core, kernels, rounding)."""
    key = hashlib.sha256(f"{tflm}\n{_compiler_version()}".encode()).hexdigest()[:10]
    suffix = "" if rounding == "double" else f"_{rounding}-rounding"   # "double": stock TFLM, the original name
    return cache_root() / "tflm-lib" / f"{emu.target_arch}_{kernels or 'reference'}{suffix}_{key}"


def build_flags(tflm: Path, emu: Emulated, kernels: str, rounding: str = "single") -> dict[str, str]:
    """Ask TFLM's Makefile (parsing only, seconds) for CXXFLAGS, CCFLAGS, INCLUDES and the library path (LIB).

    Raises:
        TinyMLOpsError: the Makefile refused the configuration (e.g. an unsupported TARGET_ARCH), with its message.
    """
    gendir = library_dir(tflm, emu, kernels, rounding) / "gen"
    gendir.parent.mkdir(parents=True, exist_ok=True)
    base = _make_cmd(tflm, emu, kernels, gendir, rounding)
    flags_mk = gendir.parent / "print_flags.mk"
    flags_mk.write_text("print_build_flags:\n\t@echo \"CXXFLAGS=$(CXXFLAGS)\"\n\t@echo \"CCFLAGS=$(CCFLAGS)\"\n"
                        "\t@echo \"INCLUDES=$(INCLUDES)\"\n\t@echo \"LIB=$(MICROLITE_LIB_PATH)\"\n")
    n_mk = 2 * base.count("-f") + 1      # "make" and every "-f FILE"
    out = subprocess.run([*base[:n_mk], "-f", str(flags_mk), *base[n_mk:], "print_build_flags"], cwd=tflm,
                         capture_output=True, text=True, env=_make_env(), check=False)
    vals = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line and line.split("=")[0]
                in ("CXXFLAGS", "CCFLAGS", "INCLUDES", "LIB"))
    if out.returncode != 0 or "LIB" not in vals:
        raise TinyMLOpsError(f"TFLM Makefile in {tflm} failed: {(out.stderr or out.stdout).strip()[-400:]}")
    return vals


def build_library(tflm: Path, emu: Emulated, kernels: str, jobs: int = 2,
                  log: Callable[[str], None] | None = None, rounding: str = "single") -> TflmLibrary:
    """Build (or reuse) TFLM's ``libtensorflow-microlite.a`` for a core and kernels; return it with its flags.

    ``rounding`` "single" (default) builds TFLite's requantisation arithmetic, "double" stock TFLM's (see above).

    Raises:
        TinyMLOpsError: the TFLM build failed (the last lines of its output are in the message).
    """
    gendir = library_dir(tflm, emu, kernels, rounding) / "gen"
    stamp, flags_file = gendir.parent / "built.ok", gendir.parent / "flags.json"
    t0 = time.monotonic()
    # a built library keeps the flags TFLM's Makefile gave it: asking the Makefile again takes seconds
    vals = json.loads(flags_file.read_text()) if stamp.is_file() and flags_file.is_file() else \
        build_flags(tflm, emu, kernels, rounding)
    lib = Path(vals["LIB"])
    lib = lib if lib.is_absolute() else tflm / lib
    cached = stamp.is_file() and lib.is_file()
    if not cached:
        base = _make_cmd(tflm, emu, kernels, gendir, rounding)
        if log:
            log(f"building the TFLM library for {emu.target_arch} ({kernels or 'reference'} kernels, {rounding} "
                "rounding) once: "
                f"~5 min at -j{jobs}; cached in {gendir.parent}")
        res = subprocess.run([*base, f"-j{jobs}", "microlite"], cwd=tflm, capture_output=True, text=True,
                             env=_make_env(), check=False)
        if res.returncode != 0 or not lib.is_file():
            raise TinyMLOpsError(f"TFLM library build failed in {tflm}: {(res.stderr or res.stdout).strip()[-600:]}")
        stamp.write_text(_compiler_version() + "\n")
    if not flags_file.is_file():   # written whole (another export may be reading it)
        tmp = flags_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(vals))
        tmp.replace(flags_file)
    includes = [f if not f.startswith("-I") or f[2:].startswith("/") else "-I" + str(tflm / f[2:])
                for f in vals["INCLUDES"].split()]
    return TflmLibrary(tflm, lib, _split_flags(vals["CXXFLAGS"]), _split_flags(vals["CCFLAGS"]), includes,
                       time.monotonic() - t0, cached, rounding)


def _split_flags(flags: str) -> list[str]:
    # -MD writes .d files beside our objects; warnings flags of TFLM are not ours to inherit
    return [f for f in flags.split() if f != "-MD" and not f.startswith("-W")]
