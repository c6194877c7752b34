"""One adapter per runtime, one interface: evaluation, profiling and the edge agent share this code.

``open_runner(path, runtime)`` returns a :class:`Runner` whose ``predict`` takes float32 features (N, F) and
returns float32 outputs (N, C): quantisation of inputs and de-quantisation of outputs happen inside, with the
tensor's own scale and zero point. Heavy runtimes are imported only when a runner is opened.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from tinymlops.errors import ModelFormatError, UsageError

RUNTIMES = ("tflite", "tflm", "onnxruntime")


class Runner(ABC):
    """A loaded model in one runtime."""

    runtime: str = ""
    input_dtype: str = "float32"

    @abstractmethod
    def _run_one(self, x: np.ndarray) -> np.ndarray:
        """Run one sample (float32 features, shape (F,) or input shape) and return float32 outputs."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Run a batch one sample at a time (as a device would) and return float32 outputs (N, C)."""
        X = np.asarray(X, dtype=np.float32)
        return np.stack([self._run_one(x) for x in X]) if len(X) else np.zeros((0, 0), np.float32)

    def timed_predict(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Run one sample and return (outputs, latency in milliseconds)."""
        t0 = time.perf_counter()
        out = self._run_one(np.asarray(x, dtype=np.float32))
        return out, (time.perf_counter() - t0) * 1000.0

    def close(self) -> None:  # noqa: B027  (optional hook: in-process runtimes hold nothing to release)
        """Release resources (subprocesses, sessions)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: type) -> np.ndarray:
    """Quantise float values with a tensor's affine parameters, saturating to the dtype's range."""
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Turn quantised values back into float32."""
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


def runtime_for(path: Path) -> str:
    """Return the default runtime for a model file by its extension."""
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return "tflite"
    if suffix == ".onnx":
        return "onnxruntime"
    raise ModelFormatError(f"{path}: unknown model format {suffix!r}; expected .tflite or .onnx")


def open_runner(path: str | Path, runtime: str | None = None, **kwargs: object) -> Runner:
    """Open a model file in a runtime (default by extension; 'tflm' runs TFLite Micro in a subprocess)."""
    p = Path(path)
    if not p.is_file():
        raise ModelFormatError(f"{p}: model file not found")
    runtime = runtime or runtime_for(p)
    if runtime == "tflite":
        from tinymlops.runtimes.tflite import TFLiteRunner

        return TFLiteRunner(p)
    if runtime == "tflm":
        from tinymlops.runtimes.tflm import TFLMRunner

        return TFLMRunner(p, **kwargs)  # type: ignore[arg-type]
    if runtime == "onnxruntime":
        from tinymlops.runtimes.onnx import OnnxRunner

        return OnnxRunner(p)
    raise UsageError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")


def runtime_family(target_runtime: str) -> str:
    """Map a target's runtime name (tflm-reference, x-cube-ai, tflite, ...) to the adapter that runs it here."""
    if target_runtime.startswith("tflm") or target_runtime in ("x-cube-ai", "vendor-optimized"):
        return "tflm"
    if target_runtime == "onnxruntime":
        return "onnxruntime"
    return "tflite"
