"""What an exported bundle needs to know about a .tflite model: ops, input/output shapes, dtypes, quantisation.

Read from the flatbuffer with the schema module tflite-micro ships (no TensorFlow import).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tinymlops.errors import ModelFormatError


@dataclass(frozen=True)
class TensorSpec:
    """An input or output tensor: shape, dtype and affine quantisation (scale 0 = not quantised)."""

    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape) if self.shape else 1


@dataclass(frozen=True)
class ModelInfo:
    """The parts of a .tflite model that generated code depends on."""

    ops: tuple[str, ...]          # distinct builtin op names in first-use order
    input: TensorSpec
    output: TensorSpec
    model_bytes: int


#: ops whose resolver method is not the CamelCase of the op name
_SPECIAL_METHODS = {"BATCH_MATMUL": "AddBatchMatMul", "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM"}


def resolver_method(op: str) -> str:
    """Return MicroMutableOpResolver's method for a builtin op (``DEPTHWISE_CONV_2D`` -> ``AddDepthwiseConv2D``)."""
    if op in _SPECIAL_METHODS:
        return _SPECIAL_METHODS[op]
    return "Add" + "".join(part.capitalize() if not part[0].isdigit() else part.upper() for part in op.split("_"))


def read_model_info(path: str | Path) -> ModelInfo:
    """Parse a .tflite file's ops and its single input/output tensor (ModelFormatError otherwise)."""
    from tinymlops.profile.graph import _enum_names, _tflite_schema, load_graph

    p = Path(path)
    graph = load_graph(p)
    if graph.format != "tflite":
        raise ModelFormatError(f"{p}: microcontroller export needs a .tflite model, not .{graph.format}")
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ModelFormatError(f"{p}: export supports one input and one output tensor "
                               f"(model has {len(graph.inputs)} and {len(graph.outputs)})")
    model = _tflite_schema().ModelT.InitFromPackedBuf(p.read_bytes(), 0)
    sg = model.subgraphs[0]
    dtypes = {k: v.lower() for k, v in _enum_names("TensorType").items()}

    def spec(index: int) -> TensorSpec:
        t = sg.tensors[index]
        q = t.quantization
        scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
        zp = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
        return TensorSpec(tuple(int(d) for d in t.shape), dtypes.get(t.type, "float32"), scale, zp)

    ops = tuple(dict.fromkeys(o.op_type for o in graph.ops))
    return ModelInfo(ops, spec(graph.inputs[0]), spec(graph.outputs[0]), graph.model_bytes)
