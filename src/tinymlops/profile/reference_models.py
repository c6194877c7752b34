"""The MLPerf Tiny reference models as int8 .tflite files (random weights, random representative data).

Used by the profile benchmark and tests: graph, op mix and sizes match the reference submissions, which is all
that profiling depends on. Imports TensorFlow inside the functions only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: name -> (builder, input shape, classes); the four MLPerf Tiny v1.x benchmarks.
REFERENCE_MODELS: dict[str, tuple[str, tuple[int, ...], int]] = {
    "kws": ("ds_cnn", (49, 10, 1), 12),
    "vww": ("mobilenet_v1", (96, 96, 3), 2),
    "ic": ("resnet8", (32, 32, 3), 10),
    "ad": ("fc_autoencoder", (640,), 0),
}


def build_reference(name: str, seed: int = 0, random_bias: bool = True):  # noqa: ANN201  (a tf_keras.Model)
    """Build one reference model in Keras with seeded random weights (and random biases, as trained models have)."""
    from tinymlops.models import build
    from tinymlops.tf import tf

    tf.keras.utils.set_random_seed(seed)
    arch, shape, classes = REFERENCE_MODELS[name]
    model = build(arch, shape, classes)
    rng = np.random.default_rng(seed)
    for layer in model.layers if random_bias else []:
        # trained models have non-zero biases; zero biases would let the converter drop them from the graph
        bias = getattr(layer, "bias", None)
        if bias is not None:
            bias.assign(rng.normal(0.0, 0.05, bias.shape).astype(np.float32))
    return model


def to_tflite_int8(model, representative_samples: int = 8, seed: int = 0) -> bytes:  # noqa: ANN001
    """Convert a Keras model to a full-integer int8 .tflite (int8 input and output), as MLPerf Tiny deploys."""
    from tinymlops.tf import tf

    shape = (1, *model.input_shape[1:])
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32))
    rng = np.random.default_rng(seed)

    def representative():
        for _ in range(representative_samples):
            yield [rng.standard_normal(shape).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def export_reference_models(out_dir: str | Path, names: list[str] | None = None, seed: int = 0) -> dict[str, Path]:
    """Write ``<name>.tflite`` (int8) for the named reference models (default: all four); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names or list(REFERENCE_MODELS):
        path = out / f"{name}.tflite"
        if not path.exists():
            path.write_bytes(to_tflite_int8(build_reference(name, seed), seed=seed))
        paths[name] = path
    return paths
