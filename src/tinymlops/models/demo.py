"""Small demo architectures for the bundled tasks."""

from __future__ import annotations

from typing import Any

from tinymlops.tf import keras


def mlp(input_shape: tuple[int, ...], n_classes: int, hidden: tuple[int, ...] = (64, 32),
        dropout: float = 0.1, **_: Any) -> keras.Model:
    """Build a dense classifier on a feature vector."""
    inputs = keras.Input(shape=input_shape, name="features")
    x = keras.layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mlp")


def cnn2d(input_shape: tuple[int, ...], n_classes: int, filters: tuple[int, ...] = (16, 32),
          dense: int = 64, dropout: float = 0.2, **_: Any) -> keras.Model:
    """Build a small image CNN; a flat input of a square image size is reshaped to HxWx1."""
    inputs = keras.Input(shape=input_shape, name="features")
    x = inputs
    if len(input_shape) == 1:
        side = int(round(input_shape[0] ** 0.5))
        if side * side != input_shape[0]:
            raise ValueError(f"cnn2d needs a square image; got {input_shape[0]} features")
        x = keras.layers.Reshape((side, side, 1))(x)
    for i, f in enumerate(filters):
        x = keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv_{i}")(x)
        if i < len(filters) - 1:
            x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(dense, activation="relu", name="dense")(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn2d")
