"""LiteRT (ai-edge-litert) runs the same .tflite files as tf.lite.Interpreter with identical outputs, no warning."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None, reason="needs ai-edge-litert")]


def _convert(tmp: Path, int8: bool) -> Path:
    """Convert a small dense model (random weights, fixed seed) to .tflite, float or full-int8."""
    from tinymlops.tf import tf

    tf.random.set_seed(3)
    w1 = tf.constant(np.random.default_rng(3).normal(size=(12, 16)).astype(np.float32))
    w2 = tf.constant(np.random.default_rng(4).normal(size=(16, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 12], tf.float32)])
    def model(x: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(tf.matmul(tf.nn.relu(tf.matmul(x, w1)), w2))

    conv = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    if int8:
        rng = np.random.default_rng(5)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([rng.normal(size=(1, 12)).astype(np.float32)] for _ in range(50))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    path = tmp / ("int8.tflite" if int8 else "float.tflite")
    path.write_bytes(conv.convert())
    return path


@pytest.mark.parametrize("int8", [False, True])
def test_litert_outputs_equal_tf_lite(tmp_path: Path, int8: bool) -> None:
    from tinymlops.runtimes import open_runner
    from tinymlops.runtimes.tflite import TFLiteRunner

    path = _convert(tmp_path, int8)
    X = np.random.default_rng(7).normal(size=(40, 12)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lite = open_runner(path)
        y_lite = lite.predict(X)
    assert lite.backend == "litert"  # type: ignore[attr-defined]
    assert not [w for w in caught if "deprecat" in str(w.message).lower()], [str(w.message) for w in caught]
    y_tf = TFLiteRunner(path, backend="tf.lite").predict(X)
    assert y_lite.shape == (40, 4)
    np.testing.assert_array_equal(y_lite, y_tf)
    assert lite.input_dtype == ("int8" if int8 else "float32")


def test_litert_runner_needs_no_tensorflow(tmp_path: Path) -> None:
    """A device with LiteRT alone runs a model: opening and running it never imports TensorFlow."""
    path = _convert(tmp_path, int8=True)
    code = (f"import sys, numpy as np\nfrom tinymlops.runtimes import open_runner\n"
            f"r = open_runner({str(path)!r})\nprint(r.predict(np.zeros((2, 12), np.float32)).shape)\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n")
    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning:tinymlops", "-c", code],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(2, 4)"
