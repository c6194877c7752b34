"""Evaluate an exported artifact in the runtime that will run it, and measure what it stores.

Accuracy always comes from the artifact (TFLite interpreter, TFLite Micro in a subprocess, onnxruntime), never
from the Keras model it was built from. Weight statistics (sparsity, unique values) are read from the file itself.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.metrics import agreement, classification_metrics
from tinymlops.runtimes import open_runner


def gzip_bytes(path: Path) -> int:
    """Return the size of the file after gzip at the highest level (what a compressed OTA transfer costs)."""
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def _tflite_weights(path: Path) -> list[tuple[str, np.ndarray, int]]:
    """Return (name, stored values, quantised axis or -1) for every constant tensor with >= 2 dims."""
    from tensorflow.lite.python import schema_py_generated as schema

    buf = path.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    dtypes = {schema.TensorType.INT8: np.int8, schema.TensorType.FLOAT32: np.float32,
              schema.TensorType.FLOAT16: np.float16, schema.TensorType.UINT8: np.uint8}
    out = []
    for sg in model.subgraphs:
        for t in sg.tensors:
            shape = [int(d) for d in (t.shape if t.shape is not None else [])]
            data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            if len(shape) < 2 or data is None or len(data) == 0 or t.type not in dtypes:
                continue
            values = np.frombuffer(bytes(np.asarray(data, dtype=np.uint8)), dtype=dtypes[t.type]).reshape(shape)
            q = t.quantization
            axis = int(q.quantizedDimension) if q is not None and q.scale is not None and len(q.scale) > 1 else -1
            name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            out.append((name, values, axis))
    return out


def _onnx_weights(path: Path) -> list[tuple[str, np.ndarray, int]]:
    """Return (name, stored values, quantised axis or -1) for every initializer with >= 2 dims."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    axes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            scale = next((i for i in model.graph.initializer if i.name == node.input[1]), None)
            per_channel = scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1
            axes[node.input[0]] = int(axis) if per_channel else -1
    out = []
    for init in model.graph.initializer:
        if len(init.dims) >= 2:
            out.append((init.name, numpy_helper.to_array(init), axes.get(init.name, -1)))
    return out


def weight_stats(path: Path) -> dict[str, Any]:
    """Return sparsity (fraction of stored weights that are exactly zero) and unique values per weight tensor.

    ``unique_values`` counts distinct stored values per tensor; for per-channel quantised tensors it is the
    largest count within one channel (each channel has its own scale, so clustering shows up per channel).
    """
    weights = _tflite_weights(path) if path.suffix == ".tflite" else _onnx_weights(path)
    total = sum(int(w.size) for _, w, _ in weights)
    zeros = sum(int((w == 0).sum()) for _, w, _ in weights)
    unique: dict[str, int] = {}
    for name, w, axis in weights:
        if axis >= 0:
            moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
            unique[name] = max(len(np.unique(row)) for row in moved)
        else:
            unique[name] = len(np.unique(w))
    return {"sparsity": zeros / total if total else 0.0, "weight_count": total, "unique_values": unique}


def evaluate_artifact(path: Path, x_test: np.ndarray, y_test: np.ndarray, n_classes: int,
                      float_pred: np.ndarray, mcu_int8: bool = False) -> dict[str, Any]:
    """Run the artifact on the test split in its runtime (and in TFLite Micro for int8 MCU models).

    Returns figures: accuracy, macro_f1, agreement_with_float, size_bytes, gzip_bytes, sparsity, weight_count,
    unique_values (per tensor), and for MCU artifacts tflm_accuracy, tflm_tflite_agreement, tflm_arena_bytes.
    Raises the runtime's error (ModelFormatError, RuntimeCrash) when the artifact cannot run.
    """
    with open_runner(path) as runner:
        out = runner.predict(x_test)
    m = classification_metrics(y_test, out, n_classes)
    figures: dict[str, Any] = {
        "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "agreement_with_float": agreement(out, float_pred),
        "size_bytes": path.stat().st_size, "gzip_bytes": gzip_bytes(path), "runtime": runner.runtime,
    }
    if mcu_int8:
        with open_runner(path, "tflm") as tflm:
            out_mcu = tflm.predict(x_test)
            figures["tflm_arena_bytes"] = getattr(tflm, "arena_bytes", 0)
        figures["tflm_accuracy"] = classification_metrics(y_test, out_mcu, n_classes)["accuracy"]
        figures["tflm_tflite_agreement"] = agreement(out_mcu, out)
    figures.update(weight_stats(path))
    return figures


def predict_train(path: Path, x: np.ndarray) -> np.ndarray:
    """Return the artifact's outputs on (training) rows, for the variant's own reference profile."""
    with open_runner(path) as runner:
        return runner.predict(x)
