"""The four MLPerf Tiny reference architectures (mlcommons/tiny ``benchmark/training``), rebuilt in tf_keras.

Layer structure, parameter and MAC counts follow the reference submissions; profiling depends on the graph, not on
trained weights, so random weights plus int8 post-training quantisation reproduce the deployed op mix and sizes.
"""

from __future__ import annotations

from typing import Any

from tinymlops.tf import keras

L = keras.layers


def _as_image(inputs: Any, input_shape: tuple[int, ...], default: tuple[int, int, int]) -> Any:
    """Reshape a flat feature vector to the architecture's image shape when sizes allow."""
    if len(input_shape) == 3:
        return inputs
    size = 1
    for d in input_shape:
        size *= int(d)
    h, w, c = default
    if size != h * w * c:
        raise ValueError(f"expected an input of shape {default} (or {h * w * c} flat features), got {input_shape}")
    return L.Reshape(default)(inputs)


def _bn_relu(x: Any) -> Any:
    return L.ReLU()(L.BatchNormalization()(x))


def ds_cnn(input_shape: tuple[int, ...] = (49, 10, 1), n_classes: int = 12, filters: int = 64,
           blocks: int = 4, **_: Any) -> keras.Model:
    """Build the KWS DS-CNN: conv 10x4/2, four depthwise-separable blocks, average pool, dense."""
    inputs = keras.Input(shape=input_shape, name="features")
    x = _as_image(inputs, tuple(input_shape), (49, 10, 1))
    x = L.Conv2D(filters, (10, 4), strides=(2, 2), padding="same")(x)
    x = L.Dropout(0.2)(_bn_relu(x))
    for _i in range(blocks):
        x = _bn_relu(L.DepthwiseConv2D((3, 3), padding="same")(x))
        x = _bn_relu(L.Conv2D(filters, (1, 1), padding="same")(x))
    x = L.Dropout(0.4)(x)
    x = L.AveragePooling2D(pool_size=tuple(int(d) for d in x.shape[1:3]))(x)
    x = L.Flatten()(x)
    outputs = L.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="ds_cnn")


def mobilenet_v1(input_shape: tuple[int, ...] = (96, 96, 3), n_classes: int = 2, alpha: float = 0.25,
                 **_: Any) -> keras.Model:
    """Build the VWW MobileNetV1 (width multiplier 0.25, plain ReLU, 13 depthwise-separable blocks)."""
    inputs = keras.Input(shape=input_shape, name="features")
    x = _as_image(inputs, tuple(input_shape), (96, 96, 3))
    x = _bn_relu(L.Conv2D(int(32 * alpha), 3, strides=2, padding="same")(x))
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for width, stride in plan:
        x = _bn_relu(L.DepthwiseConv2D(3, strides=stride, padding="same")(x))
        x = _bn_relu(L.Conv2D(int(width * alpha), 1, padding="same")(x))
    x = L.AveragePooling2D(pool_size=tuple(int(d) for d in x.shape[1:3]))(x)
    x = L.Flatten()(x)
    outputs = L.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v1")


def _resnet_stack(x: Any, filters: int, stride: int) -> Any:
    y = _bn_relu(L.Conv2D(filters, 3, strides=stride, padding="same")(x))
    y = L.BatchNormalization()(L.Conv2D(filters, 3, padding="same")(y))
    if stride != 1:
        # the reference projects the skip with a 1x1 strided conv and no batch norm
        x = L.Conv2D(filters, 1, strides=stride, padding="same")(x)
    return L.ReLU()(L.Add()([x, y]))


def resnet8(input_shape: tuple[int, ...] = (32, 32, 3), n_classes: int = 10, **_: Any) -> keras.Model:
    """Build the IC ResNet-8: conv 16, three residual stacks (16, 32/2, 64/2), average pool, dense."""
    inputs = keras.Input(shape=input_shape, name="features")
    x = _as_image(inputs, tuple(input_shape), (32, 32, 3))
    x = _bn_relu(L.Conv2D(16, 3, padding="same")(x))
    x = _resnet_stack(x, 16, 1)
    x = _resnet_stack(x, 32, 2)
    x = _resnet_stack(x, 64, 2)
    x = L.AveragePooling2D(pool_size=tuple(int(d) for d in x.shape[1:3]))(x)
    x = L.Flatten()(x)
    outputs = L.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="resnet8")


def fc_autoencoder(input_shape: tuple[int, ...] = (640,), n_classes: int = 0, hidden: int = 128,
                   bottleneck: int = 8, **_: Any) -> keras.Model:
    """Build the AD autoencoder: Dense 128 x4, bottleneck 8, Dense 128 x4, reconstruction (n_classes unused)."""
    inputs = keras.Input(shape=input_shape, name="features")
    x = L.Flatten()(inputs) if len(input_shape) > 1 else inputs
    size = int(x.shape[-1])
    for units in [hidden] * 4 + [bottleneck] + [hidden] * 4:
        x = _bn_relu(L.Dense(units)(x))
    outputs = L.Dense(size, name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="fc_autoencoder")
