"""Read .tflite and .onnx files into one framework-neutral graph: tensors, ops, MACs, parameters, lifetimes.

The .tflite flatbuffer is parsed with the schema module tflite-micro ships (loaded from its file, so neither
TensorFlow nor the TFLM runtime is imported); .onnx files are read with the ``onnx`` protobuf and its shape
inference. Anything that is not a readable model raises :class:`ModelFormatError`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from tinymlops.errors import ModelFormatError

#: element size in bytes by dtype name (int4 packs two per byte)
DTYPE_BYTES: dict[str, float] = {
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8,
    "int16": 2, "uint16": 2, "int8": 1, "uint8": 1, "bool": 1, "int4": 0.5, "uint4": 0.5, "string": 1,
}

#: op categories the cost model distinguishes; MAC-carrying ones first
MAC_KINDS = ("conv", "dwconv", "pwconv", "fc")
OTHER_KINDS = ("pool", "eltwise", "softmax", "reshape", "other")


@dataclass
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    const: bool
    folded: bool = False  # computed from constants only (dequantised weights): no activation, no new parameters

    @property
    def elements(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return math.ceil(self.elements * DTYPE_BYTES.get(self.dtype, 4))


@dataclass
class OpInfo:
    index: int
    op_type: str          # runtime op name: CONV_2D, DEPTHWISE_CONV_2D, Conv, QLinearConv, ...
    kind: str             # one of MAC_KINDS + OTHER_KINDS
    inputs: list[int]
    outputs: list[int]
    macs: int = 0
    params: int = 0
    weight_bytes: dict[str, int] = field(default_factory=dict)
    elem_ops: int = 0     # element operations of non-MAC ops (pool window reads, adds, ...)
    out_channels: int = 0
    in_channels: int = 0
    compute_dtype: str = "float32"


@dataclass
class Graph:
    format: str           # "tflite" | "onnx"
    path: str
    model_bytes: int
    tensors: list[TensorInfo]
    ops: list[OpInfo]
    inputs: list[int]
    outputs: list[int]

    @property
    def macs(self) -> int:
        return sum(o.macs for o in self.ops)

    @property
    def params(self) -> int:
        return sum(o.params for o in self.ops)


# ---------------------------------------------------------------------------------------------------------------
# TFLite
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def _tflite_schema() -> ModuleType:
    """Load the flatbuffer schema module bundled with tflite-micro without importing its runtime."""
    spec = importlib.util.find_spec("tflite_micro")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFormatError("cannot read .tflite files: the tflite-micro package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "tensorflow/lite/micro/python/schema_py_generated.py"
    mspec = importlib.util.spec_from_file_location("tinymlops_tflite_schema", path)
    assert mspec is not None and mspec.loader is not None
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module


@functools.cache
def _enum_names(cls_name: str) -> dict[int, str]:
    cls = getattr(_tflite_schema(), cls_name)
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


_TFLITE_KIND = {
    "CONV_2D": "conv", "CONV_3D": "conv", "TRANSPOSE_CONV": "conv", "DEPTHWISE_CONV_2D": "dwconv",
    "FULLY_CONNECTED": "fc", "BATCH_MATMUL": "fc",
    "AVERAGE_POOL_2D": "pool", "MAX_POOL_2D": "pool", "L2_POOL_2D": "pool", "MEAN": "pool", "SUM": "pool",
    "ADD": "eltwise", "SUB": "eltwise", "MUL": "eltwise", "DIV": "eltwise", "RELU": "eltwise", "RELU6": "eltwise",
    "LOGISTIC": "eltwise", "TANH": "eltwise", "HARD_SWISH": "eltwise", "LEAKY_RELU": "eltwise",
    "QUANTIZE": "eltwise", "DEQUANTIZE": "eltwise", "MAXIMUM": "eltwise", "MINIMUM": "eltwise",
    "PRELU": "eltwise", "SQUARED_DIFFERENCE": "eltwise", "RSQRT": "eltwise", "ABS": "eltwise",
    "SOFTMAX": "softmax", "LOG_SOFTMAX": "softmax",
    "RESHAPE": "reshape", "SQUEEZE": "reshape", "EXPAND_DIMS": "reshape",
}
#: ops whose constant inputs are shapes/axes, not parameters
_SHAPE_ARG_OPS = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "PAD", "PADV2", "MEAN", "SUM", "STRIDED_SLICE",
                  "SLICE", "CONCATENATION", "GATHER", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SPLIT",
                  "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Pad", "Slice", "Gather", "Resize", "ReduceMean",
                  "Concat", "Split", "Expand", "Tile", "ConstantOfShape"}


def _parse_tflite(path: Path, buf: bytes) -> Graph:
    schema = _tflite_schema()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ModelFormatError(f"{path}: not a TFLite flatbuffer (missing 'TFL3' identifier)")
    try:
        model = schema.ModelT.InitFromPackedBuf(buf, 0)
    except Exception as exc:  # flatbuffers raises struct/index errors on truncated data
        raise ModelFormatError(f"{path}: truncated or corrupt .tflite file ({type(exc).__name__}: {exc})") from None
    if not model.subgraphs:
        raise ModelFormatError(f"{path}: .tflite file has no subgraph")
    ops_names = _enum_names("BuiltinOperator")
    dtypes = {k: v.lower() for k, v in _enum_names("TensorType").items()}
    sg = model.subgraphs[0]
    buffers = model.buffers or []

    def is_const(t: Any) -> bool:
        if t.buffer is None or t.buffer >= len(buffers) or t.buffer == 0:
            return False
        b = buffers[t.buffer]
        return (b.data is not None and len(b.data) > 0) or bool(getattr(b, "size", 0))

    tensors = []
    for i, t in enumerate(sg.tensors or []):
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
        name = t.name.decode(errors="replace") if isinstance(t.name, bytes) else str(t.name or "")
        tensors.append(TensorInfo(i, name, shape, dtypes.get(t.type, "float32"), is_const(t)))
    ops = []
    for i, op in enumerate(sg.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0))
        name = ops_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            cc = code.customCode
            name = "CUSTOM:" + (cc.decode() if isinstance(cc, bytes) else str(cc))
        ins = [int(x) for x in (op.inputs if op.inputs is not None else []) if x >= 0]
        outs = [int(x) for x in (op.outputs if op.outputs is not None else []) if x >= 0]
        info = OpInfo(i, name, _TFLITE_KIND.get(name, "other"), ins, outs)
        window = 1
        opts = op.builtinOptions
        if opts is not None and hasattr(opts, "filterWidth"):
            window = max(1, int(opts.filterWidth) * int(opts.filterHeight))
        _fill_tflite_op(info, tensors, window)
        ops.append(info)
    inputs = [int(x) for x in (sg.inputs if sg.inputs is not None else [])]
    outputs = [int(x) for x in (sg.outputs if sg.outputs is not None else [])]
    return Graph("tflite", str(path), len(buf), tensors, ops, inputs, outputs)


def _fill_tflite_op(op: OpInfo, tensors: list[TensorInfo], window: int) -> None:
    """Compute MACs, parameters, weight bytes and element ops of one TFLite op from its tensor shapes."""
    ins = [tensors[i] for i in op.inputs]
    out = tensors[op.outputs[0]] if op.outputs else None
    act_in = next((t for t in ins if not t.const), None)
    op.compute_dtype = act_in.dtype if act_in else (out.dtype if out else "float32")
    if op.op_type not in _SHAPE_ARG_OPS:
        for t in ins:
            if t.const:
                op.params += t.elements
                op.weight_bytes[t.dtype] = op.weight_bytes.get(t.dtype, 0) + t.nbytes
    if out is None:
        return
    w = ins[1] if len(ins) > 1 else None
    if op.op_type == "CONV_2D" and w is not None and len(w.shape) == 4:
        oc, kh, kw, ic = w.shape
        op.macs = out.elements * kh * kw * ic
        op.out_channels, op.in_channels = oc, ic
        if kh == 1 and kw == 1:
            op.kind = "pwconv"
    elif op.op_type == "DEPTHWISE_CONV_2D" and w is not None and len(w.shape) == 4:
        _, kh, kw, oc = w.shape
        op.macs = out.elements * kh * kw
        op.out_channels = oc
    elif op.op_type == "FULLY_CONNECTED" and w is not None and len(w.shape) == 2:
        op.macs = out.elements * w.shape[1]
        op.out_channels = w.shape[0]
    elif op.op_type == "TRANSPOSE_CONV" and len(ins) > 2:
        wt = ins[1]
        if len(wt.shape) == 4:
            oc, kh, kw, ic = wt.shape
            op.macs = ins[2].elements * kh * kw * oc if not ins[2].const else out.elements // oc * kh * kw * ic
            op.out_channels = oc
    elif op.op_type == "BATCH_MATMUL" and len(ins) > 1 and ins[0].shape:
        op.macs = out.elements * ins[0].shape[-1]
    elif op.kind == "pool":
        op.elem_ops = (out.elements * window) if window > 1 else (act_in.elements if act_in else out.elements)
    elif op.kind in ("eltwise", "softmax"):
        op.elem_ops = out.elements


# ---------------------------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------------------------

_ONNX_KIND = {
    "Conv": "conv", "ConvInteger": "conv", "QLinearConv": "conv", "ConvTranspose": "conv",
    "Gemm": "fc", "MatMul": "fc", "MatMulInteger": "fc", "QLinearMatMul": "fc",
    "AveragePool": "pool", "MaxPool": "pool", "GlobalAveragePool": "pool", "GlobalMaxPool": "pool",
    "QLinearAveragePool": "pool", "QLinearGlobalAveragePool": "pool", "ReduceMean": "pool",
    "Add": "eltwise", "Sub": "eltwise", "Mul": "eltwise", "Div": "eltwise", "Relu": "eltwise", "Clip": "eltwise",
    "Sigmoid": "eltwise", "Tanh": "eltwise", "LeakyRelu": "eltwise", "QLinearAdd": "eltwise",
    "QLinearMul": "eltwise", "QuantizeLinear": "eltwise", "DequantizeLinear": "eltwise", "BatchNormalization":
    "eltwise", "HardSwish": "eltwise", "Max": "eltwise", "Min": "eltwise",
    "Softmax": "softmax", "LogSoftmax": "softmax",
    "Reshape": "reshape", "Flatten": "reshape", "Squeeze": "reshape", "Unsqueeze": "reshape",
    "Identity": "reshape", "Transpose": "other",
}
#: inputs of these ops at these positions are quantisation scales / zero points, not parameters
_ONNX_QPARAM_INPUTS = {
    "QuantizeLinear": {1, 2}, "DequantizeLinear": {1, 2}, "QLinearConv": {1, 2, 4, 5, 6, 7},
    "QLinearMatMul": {1, 2, 4, 5, 6, 7}, "QLinearAdd": {1, 2, 4, 5, 6, 7}, "QLinearMul": {1, 2, 4, 5, 6, 7},
    "ConvInteger": {2, 3}, "MatMulInteger": {2, 3}, "QLinearAveragePool": {1, 2, 3, 4},
    "QLinearGlobalAveragePool": {1, 2, 3, 4}, "Clip": {1, 2},
}


def _parse_onnx(path: Path, buf: bytes) -> Graph:
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    try:
        model = onnx.load_model_from_string(buf)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelFormatError(f"{path}: truncated or corrupt .onnx file ({type(exc).__name__})") from None
    if not model.graph.node:
        raise ModelFormatError(f"{path}: .onnx file has no graph nodes")
    # shape inference is best effort; unknown shapes give zero MACs, not a crash
    with contextlib.suppress(Exception):
        model = shape_inference.infer_shapes(model)
    g = model.graph
    index: dict[str, int] = {}
    tensors: list[TensorInfo] = []

    def add(name: str, shape: tuple[int, ...], dtype: str, const: bool) -> int:
        if name in index:
            return index[name]
        index[name] = len(tensors)
        tensors.append(TensorInfo(len(tensors), name, shape, dtype, const))
        return index[name]

    def dtype_name(elem_type: int) -> str:
        try:
            return str(helper.tensor_dtype_to_np_dtype(elem_type))
        except Exception:  # bfloat16/float8 have no numpy dtype
            return "float32"

    for init in g.initializer:
        add(init.name, tuple(int(d) for d in init.dims), dtype_name(init.data_type), True)
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    arr = numpy_helper.to_array(a.t)
                    add(node.output[0], tuple(arr.shape), str(arr.dtype), True)
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        dims = tuple((d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1) for d in tt.shape.dim)
        add(vi.name, dims, dtype_name(tt.elem_type), False)
    ops: list[OpInfo] = []
    dequantized: dict[int, str] = {}  # DequantizeLinear output -> integer dtype it came from
    for node in g.node:
        if node.op_type == "Constant":
            continue
        ins = [add(n, (), "float32", False) for n in node.input if n]
        outs = [add(n, (), "float32", False) for n in node.output if n]
        info = OpInfo(len(ops), node.op_type, _ONNX_KIND.get(node.op_type, "other"), ins, outs)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        _fill_onnx_op(info, tensors, attrs, [n for n in node.input])
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            # QDQ graphs: runtimes fuse Q/DQ pairs into integer kernels, so these nodes cost nothing themselves
            info.kind, info.elem_ops = "reshape", 0
            if node.op_type == "DequantizeLinear" and ins and outs:
                dequantized[outs[0]] = tensors[ins[0]].dtype
                if tensors[ins[0]].const or tensors[ins[0]].folded:
                    tensors[outs[0]].const = tensors[outs[0]].folded = True
        if info.kind in MAC_KINDS:
            act = next((i for i in ins if not tensors[i].const), None)
            if act is not None and act in dequantized:
                info.compute_dtype = dequantized[act]
        ops.append(info)
    inits = {i.name for i in g.initializer}
    inputs = [index[i.name] for i in g.input if i.name not in inits]
    outputs = [index[o.name] for o in g.output]
    return Graph("onnx", str(path), len(buf), tensors, ops, inputs, outputs)


def _fill_onnx_op(op: OpInfo, tensors: list[TensorInfo], attrs: dict[str, Any], names: list[str]) -> None:
    """Compute MACs, parameters, weight bytes and element ops of one ONNX node."""
    ins = [tensors[i] for i in op.inputs]
    out = tensors[op.outputs[0]] if op.outputs else None
    qskip = _ONNX_QPARAM_INPUTS.get(op.op_type, set())
    act_in = next((t for t in ins if not t.const), None)
    op.compute_dtype = act_in.dtype if act_in else "float32"
    if op.op_type not in _SHAPE_ARG_OPS:
        positions = [p for p, n in enumerate(names) if n]
        for pos, t in zip(positions, ins, strict=False):
            if t.const and not t.folded and pos not in qskip and t.dtype not in ("int64",):
                op.params += t.elements
                op.weight_bytes[t.dtype] = op.weight_bytes.get(t.dtype, 0) + t.nbytes
    if out is None or not out.shape:
        return
    wpos = 3 if op.op_type in ("QLinearConv", "QLinearMatMul") else 1
    w = ins[wpos] if len(ins) > wpos else None
    if op.kind == "conv" and w is not None and len(w.shape) >= 3 and op.op_type != "ConvTranspose":
        group = int(attrs.get("group", 1))
        oc, icg = w.shape[0], w.shape[1]
        op.macs = out.elements * icg * math.prod(w.shape[2:])
        op.out_channels, op.in_channels = oc, icg
        if group > 1 and icg == 1:
            op.kind = "dwconv"
        elif math.prod(w.shape[2:]) == 1:
            op.kind = "pwconv"
    elif op.op_type == "ConvTranspose" and w is not None and len(w.shape) >= 3 and act_in is not None:
        op.macs = act_in.elements * w.shape[1] * math.prod(w.shape[2:])
        op.out_channels = w.shape[1]
    elif op.kind == "fc":
        a = ins[0] if ins else None
        if a is not None and a.shape:
            k = a.shape[-1] if not (op.op_type == "Gemm" and attrs.get("transA", 0)) else a.shape[0]
            op.macs = out.elements * k
            op.out_channels = out.shape[-1]
    elif op.kind == "pool":
        kshape = attrs.get("kernel_shape")
        window = math.prod(kshape) if kshape else 1
        op.elem_ops = out.elements * window if window > 1 else (act_in.elements if act_in else out.elements)
    elif op.kind in ("eltwise", "softmax"):
        op.elem_ops = out.elements


def load_graph(path: str | Path) -> Graph:
    """Parse a .tflite or .onnx file (by content, then extension) into a :class:`Graph`."""
    p = Path(path)
    if not p.is_file():
        raise ModelFormatError(f"{p}: model file not found")
    buf = p.read_bytes()
    if len(buf) < 16:
        raise ModelFormatError(f"{p}: file is too small ({len(buf)} bytes) to be a model")
    if buf[4:8] == b"TFL3" or p.suffix.lower() == ".tflite":
        return _parse_tflite(p, buf)
    if p.suffix.lower() == ".onnx":
        return _parse_onnx(p, buf)
    raise ModelFormatError(f"{p}: unknown model format {p.suffix!r}; expected a .tflite or .onnx file")
