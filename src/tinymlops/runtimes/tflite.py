"""TFLite flatbuffer adapter: LiteRT (``ai-edge-litert``) when installed, else TensorFlow's deprecated interpreter.

LiteRT is the maintained successor of ``tf.lite.Interpreter`` (which warns on every use and is scheduled for
deletion) and is what a small device installs: a few MB, no TensorFlow. Both load the same flatbuffer with the same
kernels, so outputs are identical (tests/integration/test_litert.py).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.errors import ModelFormatError
from tinymlops.runtimes import Runner, dequantize, quantize


def litert_available() -> bool:
    """Return True when the LiteRT interpreter (package ``ai-edge-litert``) is installed."""
    return importlib.util.find_spec("ai_edge_litert") is not None


def load_interpreter(path: Path, num_threads: int = 1, backend: str | None = None) -> tuple[Any, str]:
    """Open a .tflite file and return (interpreter, backend name: 'litert' or 'tf.lite').

    Args:
        backend: force 'litert' or 'tf.lite'; default LiteRT when installed.
    """
    backend = backend or ("litert" if litert_available() else "tf.lite")
    if backend == "litert":
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_path=str(path), num_threads=num_threads), backend
    from tinymlops.tf import tf

    with warnings.catch_warnings():  # the deprecation notice: install ai-edge-litert to leave this path
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(model_path=str(path), num_threads=num_threads), backend


class TFLiteRunner(Runner):
    runtime = "tflite"

    def __init__(self, path: Path, num_threads: int = 1, backend: str | None = None) -> None:
        try:
            self._it, self.backend = load_interpreter(path, num_threads, backend)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelFormatError(f"{path}: TFLite cannot load this model: {exc}") from None
        self._in = self._it.get_input_details()[0]
        self._out = self._it.get_output_details()[0]
        self.input_dtype = np.dtype(self._in["dtype"]).name
        self.input_shape = tuple(int(d) for d in self._in["shape"])

    def _run_one(self, x: np.ndarray) -> np.ndarray:
        x = x.reshape(self.input_shape)
        dtype = self._in["dtype"]
        if dtype != np.float32:
            scale, zp = self._in["quantization"]
            x = quantize(x, scale, zp, dtype)
        self._it.set_tensor(self._in["index"], x)
        self._it.invoke()
        y = self._it.get_tensor(self._out["index"])[0]
        if self._out["dtype"] != np.float32:
            scale, zp = self._out["quantization"]
            y = dequantize(y, scale, zp)
        return y.astype(np.float32).reshape(-1)
