"""TensorFlow Lite Micro adapter: the real microcontroller interpreter, isolated in a worker subprocess.

tflite-micro's Python interpreter has been seen to abort the whole process (SIGABRT) on valid models, so the
model runs in ``python -m tinymlops.runtimes._tflm_worker``; a crash becomes :class:`RuntimeCrash` naming the
model, and the caller's process lives on. The worker also reports the real arena size that TFLM's recording
allocator measured.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from tinymlops.errors import ModelFormatError, RuntimeCrash
from tinymlops.runtimes import Runner
from tinymlops.runtimes._tflm_worker import recv_array, send_array

DEFAULT_ARENA_BYTES = 8 * 1024 * 1024


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class TFLMRunner(Runner):
    runtime = "tflm"

    def __init__(self, path: Path, arena_size: int = DEFAULT_ARENA_BYTES, timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tinymlops.runtimes._tflm_worker", str(self.path), str(arena_size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise self._crash("while loading")
        header = json.loads(line)
        if not header["ok"]:
            self.close()
            raise ModelFormatError(f"{self.path}: TFLite Micro cannot run this model: {header['error']}")
        self.arena_bytes: int = header["arena_bytes"]
        self.allocations: str = header["allocations"]
        self.input_dtype = header["input_dtype"]
        self.last_latency_ms: list[float] = []

    def _crash(self, when: str) -> RuntimeCrash:
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        err = self._proc.stderr.read().decode(errors="replace")[-800:] if self._proc.stderr else ""
        return RuntimeCrash(f"{self.path}: TFLite Micro {_describe_exit(self._proc.returncode)} {when}"
                            + (f": {err.strip()}" if err.strip() else " (no message)"))

    def _run_one(self, x: np.ndarray) -> np.ndarray:
        return self.predict(x[None])[0]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Send the batch to the worker; it runs each sample on the microcontroller interpreter."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            send_array(self._proc.stdin, X)
            self._proc.stdin.flush()
            out = recv_array(self._proc.stdout)
            lat = recv_array(self._proc.stdout)
        except (BrokenPipeError, ValueError, EOFError, OSError):
            raise self._crash("while running inference") from None
        self.last_latency_ms = lat.tolist()
        return out

    def timed_predict(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        out = self.predict(np.asarray(x, np.float32)[None])
        return out[0], self.last_latency_ms[0]

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                if self._proc.stdin:
                    self._proc.stdin.close()
                self._proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, OSError):
                self._proc.kill()
                self._proc.wait()
        for f in (self._proc.stdout, self._proc.stderr):
            if f:
                f.close()


def measure_arena(path: str | Path, arena_size: int = DEFAULT_ARENA_BYTES) -> int:
    """Return the arena bytes TFLM's recording allocator measured for a model (runs in a subprocess)."""
    runner = TFLMRunner(Path(path), arena_size=arena_size)
    try:
        return runner.arena_bytes
    finally:
        runner.close()

