"""onnxruntime adapter: results equal the model's maths, the session is set up for a device's small models, and a
file onnxruntime cannot load is one clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinymlops.errors import ModelFormatError
from tinymlops.runtimes import open_runner
from tinymlops.sim.demo_model import onnx_softmax_regression


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(12, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_softmax_regression(W, b))
    return path, W, b


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_outputs_match_the_models_maths_one_by_one_and_batched(model: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, W, b = model
    X = np.random.default_rng(1).normal(size=(64, 12)).astype(np.float32)
    expected = _softmax(X @ W + b)
    with open_runner(path) as r:
        assert r.runtime == "onnxruntime" and r.input_shape == (1, 12)
        np.testing.assert_allclose(r.predict(X), expected, rtol=1e-5, atol=1e-6)  # one call (dynamic batch)
        out, latency_ms = r.timed_predict(X[0])
        np.testing.assert_allclose(out, expected[0], rtol=1e-5, atol=1e-6)
        assert latency_ms > 0
        # repeated runs on one session (no arena, no memory patterns) give the same answers
        np.testing.assert_array_equal(np.stack([r.timed_predict(x)[0] for x in X[:8]]), r.predict(X[:8]))


def test_session_is_configured_for_small_models(model: tuple[Path, np.ndarray, np.ndarray]) -> None:
    with open_runner(model[0]) as r:
        opts = r._sess.get_session_options()  # type: ignore[attr-defined]
        assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
        assert not opts.enable_cpu_mem_arena and not opts.enable_mem_pattern
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_file_onnxruntime_cannot_load_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelFormatError, match=r"broken\.onnx: onnxruntime cannot load this model"):
        open_runner(bad)
