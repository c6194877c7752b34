"""Export a Keras model to the portable formats and write model packages (TensorFlow boundary).

A package directory holds one model file and ``manifest.json``: everything a device needs to run it —
pre-processing, input/output spec, class names and the reference profile for private telemetry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_SCHEMA = "tinymlops.package/1"


def concrete_function(model: Any, batch: int | None = 1) -> Any:
    """Return a concrete function of the model with a fixed batch size (TFLM needs static shapes)."""
    from tinymlops.tf import tf

    spec = tf.TensorSpec([batch, *model.input_shape[1:]], tf.float32, name="features")
    return tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)


def tflite_converter(model: Any) -> Any:
    """Return a TFLiteConverter for the model (from a concrete function: from_keras_model is broken on TF 2.21)."""
    from tinymlops.tf import tf

    return tf.lite.TFLiteConverter.from_concrete_functions([concrete_function(model)], model)


def to_tflite_float(model: Any) -> bytes:
    """Convert to a float32 TFLite flatbuffer."""
    return tflite_converter(model).convert()


def to_onnx(model: Any, path: Path, opset: int = 17) -> Path:
    """Convert to a float32 ONNX model with a dynamic batch dimension."""
    import tf2onnx

    from tinymlops.tf import tf

    spec = (tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="features"),)
    fn = tf.function(lambda x: model(x, training=False))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset, output_path=str(path))
    return path


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_package(dst: Path, model_file: Path, manifest: dict[str, Any]) -> Path:
    """Copy a model file into a package directory and write its manifest (file, sha256, size filled in).

    A pre-processing naming a block this tinymlops does not have is refused here (UsageError naming it).
    """
    if "preprocessing" in manifest:
        from tinymlops.preprocessing import validated

        validated(manifest["preprocessing"], f"package of {model_file.name}")
    dst.mkdir(parents=True, exist_ok=True)
    name = "model" + model_file.suffix
    target = dst / name
    if model_file.resolve() != target.resolve():
        target.write_bytes(model_file.read_bytes())
    full = {"schema": MANIFEST_SCHEMA, **manifest, "file": name, "sha256": sha256_file(target),
            "size_bytes": target.stat().st_size}
    (dst / "manifest.json").write_text(json.dumps(full, indent=2))
    return dst
