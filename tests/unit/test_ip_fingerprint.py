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
    copies = [fp.apply(base, key, "dev-1", 48, a) for a in range(3)]
    assert len(set(copies)) == 3
    labels = np.array([0, 1])
    calls: list[int] = []

    def predict(model: bytes) -> np.ndarray:  # a copy "flips a label" unless it is the third redraw
        calls.append(1)
        return labels if model == copies[2] else labels[::-1]

    assert fp.choose_attempt(base, key, "dev-1", 48, predict, labels) == 2 and len(calls) == 3
    assert fp.choose_attempt(base, key, "dev-1", 48, None, None) == 0
    ts = fp.int8_tensors(base)
    leak = fp._aligned_pool(copies[2], ts, "leak")
    assert leak is not None
    scores = fp.score_devices(leak, fp._pool(base, ts), key, hashlib.sha256(base).hexdigest(),
                              {"dev-1": 2, "dev-2": 0}, 48)
    assert scores["dev-1"] == 1.0 and scores["dev-2"] < 0.3
