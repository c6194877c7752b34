"""A small real model for the fleet when no pipeline has run yet: softmax regression on vibration features.

Fits spectral pre-processing and a multinomial logistic regression (scikit-learn) on the seeded vibration
stream, writes it as an ONNX graph (MatMul, Add, Softmax via ``onnx.helper``; no TensorFlow), and registers it in
MLflow with the standard package manifest (pre-processing, input/output spec, reference profile, metrics) — the
same contract the compression stage fulfils. Used by ``tinymlops fleet simulate --bootstrap-model``, the fleet
tests and the fleet benchmark.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops import preprocessing
from tinymlops.config import PreprocessingSection
from tinymlops.data import vibration
from tinymlops.data.config import VibrationParams
from tinymlops.monitor.reference import compute_reference

EXPERIMENT = "fleet-demo"


def draw(p: VibrationParams, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` consecutive (window, label) pairs of a sensor stream."""
    it = vibration.stream(p, seed)
    pairs = [next(it) for _ in range(n)]
    return np.stack([w for w, _ in pairs]), np.asarray([lbl for _, lbl in pairs], dtype=np.int64)


def onnx_softmax_regression(W: np.ndarray, b: np.ndarray, pad_bytes: int = 0) -> bytes:
    """Return an ONNX model computing softmax(x @ W + b) with a dynamic batch dimension.

    ``pad_bytes`` adds an unused initializer of that size (tests use it to make downloads take time).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_in, n_out = W.shape
    inits = [numpy_helper.from_array(W.astype(np.float32), "W"), numpy_helper.from_array(b.astype(np.float32), "b")]
    if pad_bytes:
        inits.append(numpy_helper.from_array(np.zeros(pad_bytes // 4, np.float32), "pad"))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logits0"]),
         helper.make_node("Add", ["logits0", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "softmax_regression",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_out])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tinymlops")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tflite_softmax_regression(W: np.ndarray, b: np.ndarray) -> bytes:
    """Return a float32 TFLite flatbuffer computing softmax(x @ W + b) for one sample (TFLM needs static shapes)."""
    from tinymlops.settings import prepare_environment

    prepare_environment()
    from tinymlops.tf import tf

    Wt, bt = tf.constant(W.astype(np.float32)), tf.constant(b.astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, W.shape[0]], tf.float32, name="features")])
    def model(x: Any) -> Any:
        return tf.nn.softmax(tf.matmul(x, Wt) + bt)

    # from_concrete_functions: from_keras_model is broken on TF 2.21 (see DESIGN.md)
    return tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model).convert()


def build_demo_package(dst: Path, seed: int = 0, n_train: int = 600, bins: int = 10,
                       params: VibrationParams | None = None, pad_bytes: int = 0,
                       model_name: str = "fleet-demo", fmt: str = "onnx") -> dict[str, Any]:
    """Train the demo model and write a registry package dir (model file + manifest.json); return the manifest."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    p = params or VibrationParams()
    X, y = draw(p, seed, n_train)
    spec = preprocessing.fit(PreprocessingSection(features="spectral", bands=8), X, p.sample_rate_hz)
    F = preprocessing.transform(spec, X)
    clf = LogisticRegression(max_iter=1000).fit(F, y)
    n_classes = len(vibration.CLASSES)
    # a stream may miss a rare class; expand to all classes so outputs always have C columns
    W = np.zeros((F.shape[1], n_classes))
    b = np.full(n_classes, -30.0)
    for j, c in enumerate(clf.classes_):
        W[:, c], b[c] = clf.coef_[j], clf.intercept_[j]
    Xh, yh = draw(p, seed + 10_000, 300)
    Fh = preprocessing.transform(spec, Xh)
    pred = (Fh @ W + b).argmax(axis=1)
    metrics = {"accuracy": float(accuracy_score(yh, pred)),
               "macro_f1": float(f1_score(yh, pred, average="macro", labels=list(range(n_classes))))}
    logits = F @ W + b
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    held_logits = Fh @ W + b  # the held-out draw calibrates confidence for label-free estimates (CBPE)
    held = np.exp(held_logits - held_logits.max(axis=1, keepdims=True))
    ref = compute_reference(F, probs, spec.feature_names, list(vibration.CLASSES), bins=bins, metrics=metrics,
                            calibration=(held / held.sum(axis=1, keepdims=True), yh), prior_labels=y)
    blob = onnx_softmax_regression(W, b, pad_bytes) if fmt == "onnx" else tflite_softmax_regression(W, b)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / f"model.{fmt}").write_bytes(blob)
    manifest = {
        "schema": "tinymlops.package/1", "model_name": model_name, "variant": f"{fmt}-fp32", "format": fmt,
        "file": f"model.{fmt}", "sha256": hashlib.sha256(blob).hexdigest(), "size_bytes": len(blob),
        "class_names": list(vibration.CLASSES), "preprocessing": spec.model_dump(),
        "input": {"shape": [1, F.shape[1]], "dtype": "float32"},
        "output": {"shape": [1, n_classes], "dtype": "float32"},
        "reference": ref.model_dump(), "metrics": metrics,
    }
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def register_demo_model(model_name: str = "fleet-demo", seed: int = 0, pad_bytes: int = 0, fmt: str = "onnx") -> str:
    """Train, package (``fmt``: onnx or tflite) and register the demo model in MLflow; return the new version."""
    from tinymlops import registry

    with tempfile.TemporaryDirectory(prefix="tinymlops-demo-") as tmp:
        pkg = Path(tmp) / "package"
        manifest = build_demo_package(pkg, seed=seed, pad_bytes=pad_bytes, model_name=model_name, fmt=fmt)
        with registry.run(EXPERIMENT, f"{model_name}-{fmt}-seed{seed}", tags={"stage": "fleet-demo"}) as r:
            registry.log_metrics(r.run_id, manifest["metrics"])
            registry.log_artifact(r.run_id, pkg, registry.PACKAGE_DIR)
            digest = hashlib.sha256(f"vibration-stream-seed{seed}".encode()).hexdigest()[:16]
            return registry.register_version(
                model_name, r.run_id,
                tags={"variant": f"{fmt}-fp32", "format": fmt, "task": "vibration", "train_run_id": r.run_id,
                      "dataset_digest": digest},
                description="Softmax regression on spectral vibration features (fleet demo model).")
