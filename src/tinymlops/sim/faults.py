"""Fault injection and emulated target timing for simulated devices, as wrappers around the agent's runtime.

The production agent opens each installed package through a runner factory; the simulator hands it
:class:`DeviceRuntime`, which opens the real runtime and wraps it:

* :class:`EmulatedTarget` — simulated devices run on this host, whose timing is not the target's: report the
  target's profiled latency and memory (the manifest's ``expected``) with measurement jitter;
* :class:`FaultyRunner` — slower inference (awaited, so other simulated devices keep running), corrupted outputs,
  and a crash (:class:`InjectedCrash`) once the device has been up ``crash_after_s``.

Faults are either the device's own (a cohort's :class:`FaultSpec`) or bound to a package (:class:`PackageFault`:
only while a device of that target runs that model version, exactly like a bad model would misbehave).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from tinymlops.config_base import Strict
from tinymlops.fleet.install import Installed


class InjectedCrash(BaseException):  # noqa: N818 - a crash, not an error the agent could handle
    """An injected crash: a BaseException so the agent's error handling cannot absorb it (like a dying process)."""


class FaultSpec(Strict):
    crash_after_s: float | None = Field(None, gt=0, description="agent crashes this long after (re)start")
    slow_inference_ms: float = Field(0.0, ge=0, description="added to every inference")
    corrupt_output_rate: float = Field(0.0, ge=0, le=1, description="share of inferences with corrupted outputs")

    @property
    def in_runtime(self) -> bool:
        """Return whether the fault needs the runtime wrapper (slow or corrupt; a crash can be a process kill)."""
        return bool(self.slow_inference_ms or self.corrupt_output_rate)


#: faults the demo and tests can bind to a candidate package
FAULTS: dict[str, FaultSpec] = {
    "latency": FaultSpec(slow_inference_ms=120.0),
    "crash": FaultSpec(crash_after_s=0.8),
    "corrupt": FaultSpec(corrupt_output_rate=0.5),
}


@dataclass(frozen=True)
class PackageFault:
    """A fault carried by one model version on one target."""

    target: str
    version: str
    fault: FaultSpec

    def matches(self, installed: Installed) -> bool:
        m = installed.manifest
        return str(m.get("target")) == self.target and str(m.get("model_version")) == self.version


class _Wrapper:
    """Delegate everything the agent may use (predict, arena_bytes, close) to the wrapped runner."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict(self, x: np.ndarray) -> Any:
        return self.inner.predict(x)


class EmulatedTarget(_Wrapper):
    """Report the target's profiled latency (lognormal 5 % jitter) and peak RAM instead of this host's."""

    def __init__(self, inner: Any, manifest: dict[str, Any], rng: random.Random) -> None:
        super().__init__(inner)
        self.expected = manifest.get("expected", {})
        self.rng = rng

    @property
    def arena_bytes(self) -> int:
        if "peak_ram_bytes" in self.expected:
            return int(self.expected["peak_ram_bytes"])
        return int(getattr(self.inner, "arena_bytes", 0) or 0)

    def timed_predict(self, x: np.ndarray) -> tuple[Any, float]:
        out, latency_ms = self.inner.timed_predict(x)
        if "latency_ms" in self.expected:
            latency_ms = float(self.expected["latency_ms"]) * self.rng.lognormvariate(0.0, 0.05)
        return out, latency_ms


class FaultyRunner(_Wrapper):
    """Inject a fault into every inference (the smoke test at install time is left alone, like before)."""

    def __init__(self, inner: Any, fault: FaultSpec, rng: random.Random, started: float) -> None:
        super().__init__(inner)
        self.fault, self.rng, self.started = fault, rng, started

    async def timed_predict(self, x: np.ndarray) -> tuple[Any, float]:
        f = self.fault
        if f.crash_after_s is not None and time.monotonic() - self.started >= f.crash_after_s:
            raise InjectedCrash("injected crash")
        result = self.inner.timed_predict(x)
        out, latency_ms = await result if asyncio.iscoroutine(result) else result
        if f.slow_inference_ms:
            await asyncio.sleep(f.slow_inference_ms / 1000.0)
            latency_ms += f.slow_inference_ms
        out = np.asarray(out, dtype=np.float64).reshape(-1)
        if f.corrupt_output_rate and self.rng.random() < f.corrupt_output_rate:
            out = np.full_like(out, np.nan) if self.rng.random() < 0.5 else out * 1e6
        return out, latency_ms


class DeviceRuntime:
    """The runner factory of one simulated device (one agent start): real runtime + emulation + faults.

    Args:
        open_runner: opens the real runtime (:func:`tinymlops.fleet.install.open_model` or a shared cache).
        emulate_timing: report the target's profiled timing (see :class:`EmulatedTarget`).
        fault: the device's own fault (every package).
        package_faults: faults bound to (target, version); consulted each time a package is opened.
        started: when the agent (re)started: crash faults count from here.
    """

    def __init__(self, open_runner: Callable[[Installed, str], Any], emulate_timing: bool = True,
                 fault: FaultSpec | None = None, package_faults: list[PackageFault] | None = None,
                 started: float | None = None, seed: str = "") -> None:
        self.open_runner, self.emulate_timing = open_runner, emulate_timing
        self.fault = fault if fault is not None and fault != FaultSpec() else None
        self.package_faults = package_faults if package_faults is not None else []
        self.started = time.monotonic() if started is None else started
        self.rng = random.Random(f"sim-runtime-{seed}")
        #: the agent closes runners only when they are its own (not from a cache shared by many devices)
        self.shared = bool(getattr(open_runner, "shared", False))

    def __call__(self, installed: Installed, runtime: str) -> Any:
        runner = self.open_runner(installed, runtime)
        if self.emulate_timing:
            runner = EmulatedTarget(runner, installed.manifest, self.rng)
        faults = [self.fault] if self.fault is not None else []
        faults += [pf.fault for pf in self.package_faults if pf.matches(installed)]
        for f in faults:
            runner = FaultyRunner(runner, f, self.rng, self.started)
        return runner
