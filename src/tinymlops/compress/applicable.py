"""Which compression techniques apply to which parent model, and why a technique is skipped (pure, light).

A trained (or fine-tuned) Keras model is the parent of every technique. An imported file is compressed only as
far as its format allows: an ONNX float model gets ``onnx-int8``; a TFLite model is compiled already and is
profiled as is. The README's compression matrix states the same table.
"""

from __future__ import annotations

from typing import Literal

ParentKind = Literal["keras", "onnx", "tflite"]

#: techniques that start from the Keras model (TFLite converter, TFMOT)
KERAS_TECHNIQUES = ("ptq-int8", "ptq-dynamic", "fp16", "prune", "cluster", "qat-int8", "prune-cluster-qat")
ONNX_TECHNIQUES = ("onnx-int8", "onnx-fp32")


def parent_kind(variant: str, fmt: str) -> ParentKind:
    """Return what compression starts from: the Keras model of a trained version, or an imported file's format."""
    if variant == "imported":
        return "tflite" if fmt == "tflite" else "onnx"
    return "keras"


def skip_reason(technique: str, parent: ParentKind, quantized: bool = False) -> str | None:
    """Return why ``technique`` cannot run on this parent (one line), or None when it applies."""
    if parent == "keras":
        return None
    if parent == "tflite":
        return (f"{technique} skipped: the parent is an imported TFLite model, compiled already (no Keras graph or "
                "ONNX model to work from); it is profiled and rolled out as is")
    if technique in KERAS_TECHNIQUES:
        return (f"{technique} skipped: it needs the Keras model (TFLite converter, TFMOT) and the parent is an "
                "imported ONNX model; onnx-int8 is what applies to it")
    if quantized:
        return f"{technique} skipped: the imported ONNX model is quantised already"
    if technique == "onnx-fp32":
        return "onnx-fp32 skipped: it would copy the imported ONNX model, which is registered already"
    return None
