"""Peak activation memory from tensor lifetimes, planned greedily the way TFLite Micro plans its arena.

``plan_arena`` mirrors TFLM's ``GreedyMemoryPlanner``: every non-constant tensor lives from the op that writes it
(graph inputs: op 0) to the last op that reads it (graph outputs: the last op); buffers are placed largest first at
the lowest 16-byte-aligned offset that does not overlap a buffer alive at the same time. ``tflm_arena_bytes`` adds
TFLM's persistent ("tail") allocations, counted from what ``RecordingMicroAllocator`` reports for each part
(``micro_allocator.cc``, ``kernels/*_common.cc``): one ``TfLiteEvalTensor`` per tensor, one ``NodeAndRegistration``
per op, ``TfLiteTensor`` + quantisation structs for graph inputs/outputs, and each kernel's op data (including the
per-channel output multiplier and shift arrays of conv, depthwise and fully-connected kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

from tinymlops.profile.graph import Graph

ALIGN_BYTES = 16  # MicroArenaBufferAlignment()

# sizes of TFLM structs on a 32-bit MCU, as recorded by RecordingMicroAllocator (bytes)
EVAL_TENSOR_BYTES = 24          # TfLiteEvalTensor
NODE_AND_REGISTRATION_BYTES = 64
PERSISTENT_TENSOR_BYTES = 64    # TfLiteTensor, for graph inputs and outputs only
QUANT_DATA_BYTES = 32           # TfLiteAffineQuantization + zero-point/scale arrays of one quantised io tensor
OP_DATA_BYTES = {"conv": 80, "dwconv": 80, "pwconv": 80, "fc": 72, "eltwise": 60, "pool": 32, "softmax": 80}
PER_CHANNEL_BYTES = 8           # int32 output multiplier + int32 shift per output channel
# interpreter bookkeeping not itemised by the recorder (subgraph allocations, scratch handles, quantisation
# arrays of quantised graph inputs/outputs): fitted on what TFLM leaves unitemised for the MLPerf Tiny models
# (KWS 820 B, IC 844 B, AD 808 B, VWW 1,004 B, all int8 io) and the float sine example (584 B)
TAIL_FIXED_BYTES = 560
TAIL_PER_OP_BYTES = 8
QUANT_IO_EXTRA_BYTES = 90


def _align(n: int) -> int:
    return (n + ALIGN_BYTES - 1) // ALIGN_BYTES * ALIGN_BYTES


@dataclass
class ArenaPlan:
    peak_bytes: int                      # activation ("head") arena of the greedy plan
    offsets: dict[int, int]              # tensor index -> offset
    lifetimes: dict[int, tuple[int, int]]
    peak_op: int                         # an op at which the planned peak is reached


def lifetimes(graph: Graph) -> dict[int, tuple[int, int]]:
    """Return first-written and last-read op index of every non-constant tensor used by the graph."""
    n_ops = len(graph.ops)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for t in graph.inputs:
        first[t] = 0
    for op in graph.ops:
        for t in op.outputs:
            first.setdefault(t, op.index)
            last[t] = max(last.get(t, op.index), op.index)
        for t in op.inputs:
            if graph.tensors[t].const:
                continue
            first.setdefault(t, op.index)
            last[t] = max(last.get(t, op.index), op.index)
    for t in graph.outputs:
        last[t] = max(n_ops - 1, 0)
        first.setdefault(t, 0)
    return {t: (first[t], last.get(t, first[t])) for t in first if not graph.tensors[t].const}


def plan_arena(graph: Graph, extra_buffers: list[tuple[int, int, int]] | None = None) -> ArenaPlan:
    """Plan the activation arena greedily; ``extra_buffers`` are (bytes, first_op, last_op) scratch buffers."""
    life = lifetimes(graph)
    buffers = [(_align(graph.tensors[t].nbytes), f, last_op, t) for t, (f, last_op) in sorted(life.items())
               if graph.tensors[t].nbytes > 0]
    buffers += [(_align(b), f, last_op, -1 - i) for i, (b, f, last_op) in enumerate(extra_buffers or [])]
    # largest first; TFLM fills its sort array from the tail (last tensor first) and its bubble sort is stable,
    # so equal sizes are placed in descending tensor index, scratch buffers (added after tensors) first
    order = sorted(range(len(buffers)), key=lambda i: (-buffers[i][0], -i))
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    offsets: dict[int, int] = {}
    for i in order:
        size, f, last_op, key = buffers[i]
        overlapping = sorted((o, s) for o, s, pf, pl in placed if not (pl < f or pf > last_op))
        candidate = 0
        for o, s in overlapping:
            if candidate + size <= o:
                break
            candidate = max(candidate, o + s)
        placed.append((candidate, size, f, last_op))
        offsets[key] = candidate
    peak = max((o + s for o, s, _, _ in placed), default=0)
    peak_op = 0
    best = -1
    for op in range(max(len(graph.ops), 1)):
        live = sum(s for _, s, f, last_op in placed if f <= op <= last_op)
        if live > best:
            best, peak_op = live, op
    return ArenaPlan(peak, offsets, life, peak_op)


def tflm_persistent_bytes(graph: Graph) -> int:
    """Estimate TFLM's persistent ("tail") arena allocations for a graph."""
    total = EVAL_TENSOR_BYTES * len(graph.tensors) + NODE_AND_REGISTRATION_BYTES * len(graph.ops)
    io = set(graph.inputs) | set(graph.outputs)
    total += PERSISTENT_TENSOR_BYTES * len(io)
    quant_io = sum(1 for t in io if graph.tensors[t].dtype in ("int8", "uint8", "int16"))
    total += (QUANT_DATA_BYTES + QUANT_IO_EXTRA_BYTES) * quant_io
    for op in graph.ops:
        total += OP_DATA_BYTES.get(op.kind, 16 if op.kind != "reshape" else 0)
        if op.kind in ("conv", "dwconv", "pwconv", "fc") and op.compute_dtype in ("int8", "int16"):
            total += PER_CHANNEL_BYTES * op.out_channels
    return total + TAIL_FIXED_BYTES + TAIL_PER_OP_BYTES * len(graph.ops)


def cmsis_nn_scratch(graph: Graph) -> list[tuple[int, int, int]]:
    """Return the scratch buffers CMSIS-NN kernels request (im2col/int16 copies), as (bytes, op, op)."""
    out = []
    for op in graph.ops:
        if op.kind not in ("conv", "dwconv") or op.compute_dtype != "int8" or len(op.inputs) < 2:
            continue
        w = graph.tensors[op.inputs[1]]
        if len(w.shape) != 4:
            continue
        # arm_convolve_s8_get_buffer_size: 2 * ch_in * kh * kw * sizeof(int16); depthwise 3x3 opt: ch * kh * kw * 2
        kh, kw = w.shape[1], w.shape[2]
        ch = w.shape[3]
        out.append((2 * ch * kh * kw * 2 if op.kind == "conv" else ch * kh * kw * 2, op.index, op.index))
    return out


def tflm_arena_bytes(graph: Graph, runtime: str = "tflm-reference") -> int:
    """Estimate the whole TFLM arena (head + tail) for a runtime flavour (CMSIS-NN adds scratch buffers)."""
    extra = cmsis_nn_scratch(graph) if runtime == "tflm-cmsis-nn" else None
    return plan_arena(graph, extra).peak_bytes + tflm_persistent_bytes(graph)
