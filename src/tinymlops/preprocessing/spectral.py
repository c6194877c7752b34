"""``spectral``: per axis, log FFT band energies, log RMS, log kurtosis, crest factor and mean of a window."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from tinymlops.preprocessing.base import EPS, Block, axis_names, channels_last

PER_AXIS_EXTRA = ("log_rms", "log_kurtosis", "crest", "mean")


def band_edges(samples: int, bands: int) -> np.ndarray:
    """rfft bin edges of the bands (bin 0, DC, is skipped); the C tables use the same."""
    return np.linspace(1, samples // 2 + 1, bands + 1).astype(int)


class Spectral(Block):
    """(samples,) or (samples, axes) windows -> axes x (bands + 4) features, axis-major."""

    block: Literal["spectral"] = "spectral"
    bands: int = Field(8, ge=2, le=64, description="FFT bands per axis")

    def apply(self, X: np.ndarray) -> np.ndarray:
        X = channels_last(X, self.block, "(samples,) or (samples, axes)")
        mean = X.mean(axis=1, keepdims=True)
        xc = X - mean
        win = np.hanning(X.shape[1])[None, :, None]
        power = np.abs(np.fft.rfft(xc * win, axis=1)) ** 2  # (N, bins, axes)
        edges = band_edges(X.shape[1], self.bands)
        band_e = np.stack([power[:, a:b].sum(axis=1) for a, b in zip(edges[:-1], edges[1:], strict=True)], axis=1)
        rms = np.sqrt((xc**2).mean(axis=1))
        kurt = (xc**4).mean(axis=1) / (rms**4 + EPS)
        crest = np.abs(xc).max(axis=1) / (rms + EPS)
        feats = [np.log(band_e + EPS), np.log(rms + EPS)[:, None], np.log(kurt + EPS)[:, None],
                 crest[:, None], mean[:, 0][:, None]]
        # (N, per-axis features, axes) -> axis-major flat vector
        return np.concatenate(feats, axis=1).transpose(0, 2, 1).reshape(len(X), -1)

    def names(self, in_shape: tuple[int, ...], in_names: list[str] | None) -> list[str]:
        n_axes = in_shape[1] if len(in_shape) == 2 else 1
        per_axis = [f"band{i}_log_energy" for i in range(self.bands)] + list(PER_AXIS_EXTRA)
        return [f"{a}_{f}" for a in axis_names(n_axes) for f in per_axis]
