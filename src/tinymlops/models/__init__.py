"""Keras (tf_keras) model builders, looked up by name without importing TensorFlow.

Each builder is ``build(input_shape, n_classes, **params) -> tf_keras.Model`` (uncompiled).
"""

from __future__ import annotations

import importlib
from typing import Any

#: name -> "module:function"; the module is imported (with TensorFlow) only when a model is built.
BUILDERS: dict[str, str] = {
    "mlp": "tinymlops.models.demo:mlp",
    "cnn2d": "tinymlops.models.demo:cnn2d",
    "ds_cnn": "tinymlops.models.mlperf_tiny:ds_cnn",
    "mobilenet_v1": "tinymlops.models.mlperf_tiny:mobilenet_v1",
    "resnet8": "tinymlops.models.mlperf_tiny:resnet8",
    "fc_autoencoder": "tinymlops.models.mlperf_tiny:fc_autoencoder",
}


def build(arch: str, input_shape: tuple[int, ...], n_classes: int, **params: Any) -> Any:
    """Build the named architecture (imports TensorFlow)."""
    from tinymlops.tf import keras  # noqa: F401  (sets the legacy-Keras environment first)

    module, fn = BUILDERS[arch].split(":")
    return getattr(importlib.import_module(module), fn)(input_shape, n_classes, **params)
