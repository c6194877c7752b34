"""Per-device fingerprints on an int8 TFLite flatbuffer: same size, keyed +-1 LSB pattern, traced among 100."""

from __future__ import annotations

import hashlib
import os

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from tinymlops.errors import ModelFormatError
from tinymlops.ip import fingerprint as fp


def _tflite(weights: dict[str, np.ndarray]) -> bytes:
    """Build a TFLite flatbuffer holding constant int8 tensors (plus an int32 bias that must stay untouched)."""
    model = schema.ModelT()
    model.version = 3
    model.buffers = [schema.BufferT()]
    sg = schema.SubGraphT()
    sg.tensors = []
    for name, w in [*weights.items(), ("bias", np.arange(100, dtype=np.int32))]:
        b = schema.BufferT()
        b.data = np.frombuffer(w.tobytes(), np.uint8).copy()
        model.buffers.append(b)
        t = schema.TensorT()
        t.name, t.shape, t.buffer = name.encode(), list(w.shape), len(model.buffers) - 1
        t.type = schema.TensorType.INT8 if w.dtype == np.int8 else schema.TensorType.INT32
        sg.tensors.append(t)
    sg.inputs, sg.outputs, sg.operators = [], [], []
    model.subgraphs = [sg]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.fixture(scope="module")
def base() -> bytes:
    rng = np.random.default_rng(0)
    return _tflite({"conv": rng.integers(-127, 128, (16, 3, 3, 8)).astype(np.int8),
                    "dense": np.concatenate([np.full(50, 127), rng.integers(-127, 128, 2000)]).astype(np.int8),
                    "tiny": np.ones(10, np.int8)})


def test_int8_tensors_found_by_name_and_shape(base: bytes) -> None:
    ts = fp.int8_tensors(base)
    assert sorted((t.name, t.shape, t.size) for t in ts) == [("conv", (16, 3, 3, 8), 1152), ("dense", (2050,), 2050)]


def test_fingerprint_changes_only_keyed_int8_weights_by_one_lsb(base: bytes) -> None:
    key = os.urandom(32)
    marked = fp.apply(base, key, "dev-1", 48)
    assert len(marked) == len(base) and marked != base
    diff = np.frombuffer(marked, np.uint8).astype(int) - np.frombuffer(base, np.uint8).astype(int)
    changed = np.flatnonzero(diff)
    assert len(changed) == 48
    ts = fp.int8_tensors(base)
    inside = [any(t.offset <= i < t.offset + t.size for t in ts) for i in changed]
    assert all(inside)  # headers, the int32 bias and the tiny tensor are untouched
    d8 = np.frombuffer(marked, np.int8).astype(int)[changed] - np.frombuffer(base, np.int8).astype(int)[changed]
    assert set(np.abs(d8)) == {1}
    assert fp._pool(marked, ts).min() >= -127  # the 127s at the top of 'dense' were nudged down, never past
    assert fp.apply(base, key, "dev-1", 48) == marked  # deterministic per key and device
    assert fp.apply(base, key, "dev-2", 48) != marked
    assert fp.apply(base, os.urandom(32), "dev-1", 48) != marked


def test_leak_is_traced_to_the_right_device_among_100(base: bytes) -> None:
    key = os.urandom(32)
    devices = [f"dev-{i:03d}" for i in range(100)]
    ts = fp.int8_tensors(base)
    pool = fp._pool(base, ts)
    sha = hashlib.sha256(base).hexdigest()
    for d in devices:
        leak = fp._aligned_pool(fp.apply(base, key, d, 48), ts, "leak")
        assert leak is not None
        scores = fp.score_devices(leak, pool, key, sha, dict.fromkeys(devices, 0), 48)
        ranked = sorted(scores, key=scores.__getitem__, reverse=True)
        assert ranked[0] == d and scores[d] == 1.0 and scores[ranked[1]] < 0.3
    untouched = fp.score_devices(pool, pool, key, sha, dict.fromkeys(devices, 0), 48)
    assert max(untouched.values()) == 0.0


def test_trace_survives_reserialisation_but_not_another_graph(base: bytes) -> None:
    key = os.urandom(32)
    marked = fp.apply(base, key, "dev-7", 48)
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAs(marked, 0))
    m.description = b"re-packed by someone else"
    m.buffers = [m.buffers[0], *reversed(m.buffers[1:])]  # another buffer layout, same tensors
    n = len(m.buffers)
    for t in m.subgraphs[0].tensors:
        t.buffer = n - t.buffer
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    repacked = bytes(b.Output())
    assert repacked != marked
    ts = fp.int8_tensors(base)
    leak = fp._aligned_pool(repacked, ts, "leak")
    assert leak is not None
    scores = fp.score_devices(leak, fp._pool(base, ts), key, hashlib.sha256(base).hexdigest(),
                              {"dev-6": 0, "dev-7": 0}, 48)
    assert scores == {"dev-6": pytest.approx(scores["dev-6"]), "dev-7": 1.0} and scores["dev-6"] < 0.3
    other = _tflite({"conv": np.zeros((16, 3, 3, 4), np.int8), "dense": np.zeros(2050, np.int8)})
    assert fp._aligned_pool(other, ts, "leak") is None


def test_not_a_fingerprintable_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelFormatError, match="not a TFLite flatbuffer"):
        fp.int8_tensors(b"\x08\x00\x00\x00ONNXjunk", "x.onnx")
    with pytest.raises(ModelFormatError, match="no int8 weight tensors"):
        fp.int8_tensors(_tflite({"w": np.zeros(200, np.float32).view(np.int32)}), "float.tflite")
    with pytest.raises(ModelFormatError, match="leaked model file not found"):
        fp.trace(tmp_path / "nope.tflite", "m")


def test_redraws_are_distinct_and_the_check_picks_the_first_clean_one(base: bytes) -> None:
    key = os.urandom(32)
    copies = [fp.apply(base, key, "dev-1", 48, a) for a in range(4)]
    assert len(set(copies)) == 4
    base_out = np.array([[0.9, 0.1], [0.2, 0.8]])
    answers = {copies[0]: base_out[::-1],  # flips both answers
               copies[1]: np.array([[0.6, 0.4], [0.2, 0.8]]),  # margin 0.2 <= 2 x its change 0.3: near a flip
               copies[2]: np.array([[0.88, 0.12], [0.22, 0.78]])}  # change 0.02, margins >= 0.56: clean
    calls: list[int] = []

    def predict(model: bytes) -> np.ndarray:
        calls.append(1)
        return answers.get(model, base_out[::-1])

    assert fp.choose_attempt(base, key, "dev-1", 48, predict, base_out) == 2 and len(calls) == 3
    assert fp.choose_attempt(base, key, "dev-1", 48, None, None) == 0
    ts = fp.int8_tensors(base)
    leak = fp._aligned_pool(copies[2], ts, "leak")
    assert leak is not None
    scores = fp.score_devices(leak, fp._pool(base, ts), key, hashlib.sha256(base).hexdigest(),
                              {"dev-1": 2, "dev-2": 0}, 48)
    assert scores["dev-1"] == 1.0 and scores["dev-2"] < 0.3


def test_change_counts_flips_near_flips_and_the_bound() -> None:
    base_out = np.array([[0.70, 0.30], [0.55, 0.45], [0.1, 0.9]])
    assert fp.change(base_out, base_out) == (0, 0, 0.0)  # an unchanged copy: not near, even with a 0.1 margin
    flips, near, bound = fp.change(base_out, np.array([[0.72, 0.28], [0.53, 0.47], [0.1, 0.9]]))
    assert (flips, near) == (0, 0) and bound == pytest.approx(0.02)  # smallest margin 0.06 > 2 x 0.02
    flips, near, bound = fp.change(base_out, np.array([[0.73, 0.27], [0.52, 0.48], [0.1, 0.9]]))
    assert (flips, near) == (0, 1) and bound == pytest.approx(0.03)  # margin 0.04 <= 2 x 0.03: near a flip
    flips, near, _ = fp.change(base_out, np.array([[0.70, 0.30], [0.45, 0.55], [0.1, 0.9]]))
    assert flips == 1 and near >= 1


def test_patterns_drawn_from_candidates_stay_there_and_trace(base: bytes) -> None:
    key = os.urandom(32)
    ts = fp.int8_tensors(base)
    pool, sha = fp._pool(base, ts), hashlib.sha256(base).hexdigest()
    quiet = np.arange(1200, 3202, 2)  # every other weight of 'dense'
    assert np.array_equal(fp._unpack(fp._pack(quiet, len(pool)), len(pool)), quiet)
    assert fp._unpack(None, len(pool)) is None
    devices = {f"dev-{i}": 0 for i in range(20)}
    for d in devices:
        pos, _ = fp.device_pattern(key, sha, d, pool, 48, 0, quiet)
        assert len(pos) == 48 and np.isin(pos, quiet).all()
        leak = fp._aligned_pool(fp.apply(base, key, d, 48, 0, quiet), ts, "leak")
        assert leak is not None
        scores = fp.score_devices(leak, pool, key, sha, devices, 48, quiet)
        ranked = sorted(scores, key=scores.__getitem__, reverse=True)
        assert ranked[0] == d and scores[d] == 1.0 and scores[ranked[1]] < 0.3
        assert fp.score_devices(leak, pool, key, sha, {d: 0}, 48)[d] < 0.3  # the ledger's candidates are needed


def _dense_model(w: np.ndarray) -> bytes:
    """A real int8 FULLY_CONNECTED model (input (1, in) -> output (1, out)) the TFLite interpreter runs."""
    m = schema.ModelT()
    m.version = 3
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.FULLY_CONNECTED
    m.operatorCodes = [code]

    def buf(data: bytes | None) -> int:
        b = schema.BufferT()
        if data is not None:
            b.data = np.frombuffer(data, np.uint8).copy()
        m.buffers.append(b)
        return len(m.buffers) - 1

    def tensor(name: str, shape: list[int], ttype: int, scale: float, zp: int, data: bytes | None = None) -> int:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), shape, ttype, buf(data)
        q = schema.QuantizationParametersT()
        q.scale, q.zeroPoint = [scale], [zp]
        t.quantization = q
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    m.buffers = [schema.BufferT()]
    sg = schema.SubGraphT()
    sg.tensors = []
    out_n, in_n = w.shape
    x = tensor("x", [1, in_n], schema.TensorType.INT8, 0.05, 0)
    wt = tensor("w", [out_n, in_n], schema.TensorType.INT8, 0.01, 0, w.astype(np.int8).tobytes())
    b = tensor("b", [out_n], schema.TensorType.INT32, 0.0005, 0, np.zeros(out_n, np.int32).tobytes())
    y = tensor("y", [1, out_n], schema.TensorType.INT8, 0.05, 0)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [x, wt, b], [y]
    op.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = schema.FullyConnectedOptionsT()
    sg.operators, sg.inputs, sg.outputs = [op], [x], [y]
    m.subgraphs = [sg]
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_quiet_weights_are_those_whose_inputs_are_silent_and_moving_them_changes_nothing() -> None:
    from tinymlops.runtimes import open_runner

    rng = np.random.default_rng(0)
    model = _dense_model(rng.integers(-100, 100, (16, 32)))
    inputs = rng.uniform(0.5, 3.0, (200, 32)).astype(np.float32)
    inputs[:, :12] = 0.0  # the first 12 input features are silent on this data
    inputs[:, 12:20] *= 0.1  # and the next 8 are weak
    ts = fp.int8_tensors(model)
    activity = fp.weight_activity(model, inputs, ts)
    assert activity is not None and activity.shape == (16 * 32,)
    grid = activity.reshape(16, 32)
    assert np.all(grid[:, :12] == 0) and np.all(grid[:, 12:20] < grid[:, 20:].min())
    quiet = fp.quiet_candidates(model, inputs, 1)
    assert quiet is not None and len(quiet) == 512 // 4  # the quietest quarter (at least 64 per pattern weight)
    assert np.all(quiet % 32 < 12) and len(set(quiet // 32)) == 16  # on silent inputs, spread over every output
    marked = fp.apply(model, os.urandom(32), "dev-1", 48, 0, np.flatnonzero(grid.reshape(-1) == 0))
    assert marked != model
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        outs = []
        for i, blob in enumerate((model, marked)):
            (Path(tmp) / f"{i}.tflite").write_bytes(blob)
            with open_runner(Path(tmp) / f"{i}.tflite") as r:
                outs.append(r.predict(inputs))
    assert np.array_equal(outs[0], outs[1])  # weights on silent inputs: bit-identical answers
    assert fp.change(outs[0], outs[1]) == (0, 0, 0.0)
