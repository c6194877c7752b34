"""TFLite interpreter adapter (TensorFlow's built-in interpreter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinymlops.errors import ModelFormatError
from tinymlops.runtimes import Runner, dequantize, quantize


class TFLiteRunner(Runner):
    runtime = "tflite"

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        from tinymlops.tf import tf

        try:
            self._it = tf.lite.Interpreter(model_path=str(path), num_threads=num_threads)
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
