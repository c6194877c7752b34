"""Target boards: the ``kind: target`` config model and the one target catalogue.

A target names a board's core, clock, memories, runtime and power; the profiler turns those into feasibility and
per-target latency/energy estimates; the fleet builds packages for it. The catalogue is a directory of YAML files
found on one search path (:func:`targets_dir`); eleven boards ship inside the package (``profile/boards/``). Users
add boards by writing one YAML file with the same schema (pass its path, or put it in their own catalogue).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tinymlops.config_base import Strict, load_kind
from tinymlops.errors import ConfigError

Core = Literal["cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55", "xtensa-lx7", "cortex-a53",
               "cortex-a72", "x86-64"]
Runtime = Literal["tflm-reference", "tflm-cmsis-nn", "x-cube-ai", "vendor-optimized", "tflite", "onnxruntime"]
Dtype = Literal["int8", "uint8", "int16", "float16", "float32"]

MCU_CORES = {"cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55", "xtensa-lx7"}
APP_RUNTIMES = {"tflite", "onnxruntime"}

#: code size of the runtime linked into the firmware (bytes) when the target does not say: TFLM with the ops of a
#: typical CNN ~60-100 KB (tflite-micro "memory_footprint" docs, Arduino builds), CMSIS-NN kernels add ~20 KB,
#: X-CUBE-AI's network runtime library ~30 KB (UM2526), shared libraries for Linux runtimes.
DEFAULT_RUNTIME_FLASH_BYTES: dict[str, int] = {
    "tflm-reference": 90_000, "tflm-cmsis-nn": 110_000, "x-cube-ai": 40_000, "vendor-optimized": 40_000,
    "tflite": 4_500_000, "onnxruntime": 18_000_000,
}
#: RAM the runtime needs besides the tensor arena (stack, interpreter objects; process RSS on Linux)
DEFAULT_RUNTIME_RAM_BYTES: dict[str, int] = {
    "tflm-reference": 6_144, "tflm-cmsis-nn": 6_144, "x-cube-ai": 4_096, "vendor-optimized": 4_096,
    "tflite": 12_000_000, "onnxruntime": 30_000_000,
}
DEFAULT_DTYPES: dict[str, list[str]] = {
    "tflm-reference": ["int8", "int16", "float32"], "tflm-cmsis-nn": ["int8", "int16", "float32"],
    "x-cube-ai": ["int8", "float32"], "vendor-optimized": ["int8"],
    "tflite": ["int8", "uint8", "int16", "float16", "float32"],
    "onnxruntime": ["int8", "uint8", "int16", "float16", "float32"],
}


class CommandRunner(Strict):
    """A command that measures a model on the real device and prints one JSON object (see profile.device)."""

    kind: Literal["command"]
    command: str = Field(description="shell-free command template; {model} is replaced by the model path, "
                                     "{target} by the target name")
    timeout_s: float = Field(300.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_model(self) -> CommandRunner:
        if "{model}" not in self.command:
            raise ValueError("command must contain the {model} placeholder")
        return self


class TargetConfig(Strict):
    """One board: core, clock, memories, runtime, power, and optional latency SLO and device runner."""

    kind: Literal["target"] = "target"
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="identifier used in metrics and aliases")
    description: str = ""
    core: Core
    clock_mhz: float = Field(gt=0, le=10_000)
    sram_bytes: int = Field(gt=0, description="RAM available to the application (bytes)")
    flash_bytes: int = Field(gt=0, description="storage for code and model (bytes)")
    runtime: Runtime
    active_power_mw: float = Field(gt=0, description="power while running inference (mW)")
    idle_power_mw: float | None = Field(None, ge=0)
    latency_slo_ms: float | None = Field(None, gt=0)
    runtime_ram_bytes: int | None = Field(None, ge=0, description="RAM used besides the arena; default by runtime")
    runtime_flash_bytes: int | None = Field(None, ge=0, description="runtime code size; default by runtime")
    dtypes: list[Dtype] | None = Field(None, description="tensor dtypes the runtime runs; default by runtime")
    host: bool = Field(False, description="this machine: measure with onnxruntime/TFLite here")
    runner: CommandRunner | None = None
    emulator: Literal["qemu"] | None = Field(None, description="profile from firmware run under this emulator "
                                             "(tinymlops.export.emulated; Cortex-M4/M7/M33, TFLM runtimes)")

    @model_validator(mode="after")
    def _runtime_fits_core(self) -> TargetConfig:
        if self.core in MCU_CORES and self.runtime in APP_RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r} needs an application processor, not {self.core}")
        if self.core not in MCU_CORES and self.runtime not in APP_RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r} is a microcontroller runtime; {self.core} runs "
                             "tflite or onnxruntime")
        return self

    @property
    def ram_overhead_bytes(self) -> int:
        return self.runtime_ram_bytes if self.runtime_ram_bytes is not None else DEFAULT_RUNTIME_RAM_BYTES[
            self.runtime]

    @property
    def flash_overhead_bytes(self) -> int:
        return self.runtime_flash_bytes if self.runtime_flash_bytes is not None else DEFAULT_RUNTIME_FLASH_BYTES[
            self.runtime]

    @property
    def supported_dtypes(self) -> list[str]:
        return list(self.dtypes) if self.dtypes is not None else DEFAULT_DTYPES[self.runtime]


#: environment variable naming a catalogue directory (beats the project's; an explicit argument beats it)
TARGETS_DIR_ENV = "TINYMLOPS_TARGETS_DIR"
#: the project's own catalogue, relative to the working directory (the only place this path is written in code)
PROJECT_TARGETS_DIR = Path("configs/targets")
#: the catalogue shipped inside the package: board names work from any directory
SHIPPED_TARGETS_DIR = Path(__file__).resolve().with_name("boards")


def targets_dir(explicit: str | Path | None = None) -> Path:
    """Return the catalogue directory: ``explicit``, else ``$TINYMLOPS_TARGETS_DIR``, else the project's
    ``configs/targets`` if the working directory has one, else the catalogue shipped with tinymlops.

    Raises:
        ConfigError: an explicit or environment directory that does not exist (named, with where it came from).
    """
    if explicit is not None and str(explicit) != "":
        d = Path(explicit)
        if not d.is_dir():
            raise ConfigError(f"{d}: targets directory not found")
        return d
    env = os.environ.get(TARGETS_DIR_ENV)
    if env:
        if not Path(env).is_dir():
            raise ConfigError(f"{TARGETS_DIR_ENV}={env}: targets directory not found")
        return Path(env)
    return PROJECT_TARGETS_DIR if PROJECT_TARGETS_DIR.is_dir() else SHIPPED_TARGETS_DIR


def load_target(path: str | Path) -> TargetConfig:
    """Load one target YAML file (ConfigError naming file and key on any problem)."""
    return load_kind(path, "target", TargetConfig)


def catalogue(directory: str | Path | None = None) -> dict[str, TargetConfig]:
    """Load every ``*.yaml`` target of the catalogue (see :func:`targets_dir`), keyed by target name (sorted)."""
    d = targets_dir(directory)
    out: dict[str, TargetConfig] = {}
    for p in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
        t = load_target(p)
        if t.name in out:
            raise ConfigError(f"{p}: target name {t.name!r} is already used by another file in {d}")
        out[t.name] = t
    return dict(sorted(out.items()))


def get_target(name: str, directory: str | Path | None = None) -> TargetConfig:
    """Return a catalogue target by name (ConfigError naming the catalogue and its boards if unknown)."""
    cat = catalogue(directory)
    if name not in cat:
        raise ConfigError(f"unknown target {name!r}; catalogue {targets_dir(directory)} has: "
                          f"{', '.join(cat) or '(none)'} (or pass a target YAML path)")
    return cat[name]


def resolve_target(name_or_path: str | Path, directory: str | Path | None = None) -> TargetConfig:
    """Return a target by catalogue name, or load it from a YAML path (boards outside the catalogue)."""
    p = Path(name_or_path)
    if p.suffix.lower() in (".yaml", ".yml") or p.is_file():
        return load_target(p)
    return get_target(str(name_or_path), directory)


def resolve_targets(targets: list[str] | str, directory: str | Path | None = None) -> list[TargetConfig]:
    """Return targets from 'all' (the whole catalogue) or a list of names/paths."""
    if targets == "all" or targets == ["all"]:
        return list(catalogue(directory).values())
    if isinstance(targets, str):
        targets = [targets]
    return [resolve_target(t, directory) for t in targets]
