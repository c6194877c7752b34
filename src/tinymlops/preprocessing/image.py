"""``image``: bilinear resize (half-pixel centres, as ``tf.image.resize``), optional grayscale, scale."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from tinymlops.preprocessing.base import Block

Side = Annotated[int, Field(ge=1, le=4096)]

#: ITU-R 601 luma weights, as tf.image.rgb_to_grayscale
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def resize_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and fraction per output row/column (TensorFlow's half-pixel bilinear)."""
    pos = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    floor = np.floor(pos)
    lo = np.maximum(floor, 0).astype(int)
    hi = np.minimum(np.ceil(pos), in_size - 1).astype(int)
    return lo, hi, pos - floor


class Image(Block):
    """(H, W) or (H, W, C) images -> (height, width, 1 if grayscale else C), each value divided by ``scale``."""

    block: Literal["image"] = "image"
    size: tuple[Side, Side] | None = Field(None, description="[height, width] to resize to; default: keep")
    grayscale: bool = False
    scale: float = Field(1.0, gt=0, description="divide pixel values by this (255 for 8-bit pixels)")

    def apply(self, X: np.ndarray) -> np.ndarray:
        if X.ndim == 3:
            X = X[..., None]
        if X.ndim != 4 or X.shape[3] not in (1, 3):
            raise ValueError(f"image block needs (H, W), (H, W, 1) or (H, W, 3) inputs, got {list(X.shape[1:])}")
        if self.size is not None and tuple(X.shape[1:3]) != tuple(self.size):
            (r0, r1, fr), (c0, c1, fc) = (resize_weights(X.shape[1], self.size[0]),
                                          resize_weights(X.shape[2], self.size[1]))
            # columns, then rows: the same arithmetic as TensorFlow's top/bottom lerp, one gather per axis
            cols = X[:, :, c0] + (X[:, :, c1] - X[:, :, c0]) * fc[None, None, :, None]
            X = cols[:, r0] + (cols[:, r1] - cols[:, r0]) * fr[None, :, None, None]
        if self.grayscale and X.shape[3] == 3:
            X = (X * np.asarray(GRAY_WEIGHTS)).sum(axis=3, keepdims=True)
        return X / self.scale
