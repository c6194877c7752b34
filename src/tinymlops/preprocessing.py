"""Pre-processing that travels with the model.

Declared once in the pipeline config, fitted on the training split, stored in every artifact's manifest and
applied by this same code at training time, in evaluation and on the device (the edge agent). NumPy only.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from tinymlops.config import PreprocessingSection

_EPS = 1e-6


class FittedPreprocessing(BaseModel):
    """A fitted pre-processing spec: everything needed to turn a raw input into model features."""

    model_config = ConfigDict(extra="forbid")

    features: str
    bands: int
    scale: float
    normalize: str
    raw_shape: list[int]
    sample_rate_hz: float | None = None
    feature_names: list[str]
    mean: list[float] | None = None
    std: list[float] | None = None

    @property
    def n_features(self) -> int:
        return len(self.feature_names)


def _spectral(X: np.ndarray, bands: int) -> np.ndarray:
    """Per axis: log band energies, log RMS, kurtosis, crest factor and mean of a (N, samples, axes) batch."""
    mean = X.mean(axis=1, keepdims=True)
    xc = X - mean
    win = np.hanning(X.shape[1])[None, :, None]
    power = np.abs(np.fft.rfft(xc * win, axis=1)) ** 2  # (N, bins, axes)
    edges = np.linspace(1, power.shape[1], bands + 1).astype(int)  # skip the DC bin
    band_e = np.stack([power[:, a:b].sum(axis=1) for a, b in zip(edges[:-1], edges[1:], strict=True)], axis=1)
    rms = np.sqrt((xc**2).mean(axis=1))
    kurt = (xc**4).mean(axis=1) / (rms**4 + _EPS)
    crest = np.abs(xc).max(axis=1) / (rms + _EPS)
    feats = [np.log(band_e + _EPS), np.log(rms + _EPS)[:, None], np.log(kurt + _EPS)[:, None],
             crest[:, None], mean[:, 0][:, None]]
    # (N, per-axis features, axes) -> axis-major flat vector
    return np.concatenate(feats, axis=1).transpose(0, 2, 1).reshape(len(X), -1)


def _spectral_names(bands: int, n_axes: int) -> list[str]:
    axes = ["x", "y", "z"][:n_axes] if n_axes <= 3 else [f"a{i}" for i in range(n_axes)]
    per_axis = [f"band{i}_log_energy" for i in range(bands)] + ["log_rms", "log_kurtosis", "crest", "mean"]
    return [f"{a}_{f}" for a in axes for f in per_axis]


def _extract(spec: PreprocessingSection | FittedPreprocessing, X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64) / spec.scale
    if spec.features == "spectral":
        if X.ndim == 2:
            X = X[:, :, None]
        return _spectral(X, spec.bands)
    return X.reshape(len(X), -1)


def fit(section: PreprocessingSection, X_train_raw: np.ndarray, sample_rate_hz: float | None = None,
        ) -> FittedPreprocessing:
    """Fit the configured pre-processing on raw training inputs."""
    F = _extract(section, X_train_raw)
    if section.features == "spectral":
        n_axes = 1 if X_train_raw.ndim == 2 else X_train_raw.shape[2]
        names = _spectral_names(section.bands, n_axes)
    else:
        names = [f"f{i}" for i in range(F.shape[1])]
    mean = std = None
    if section.normalize == "standard":
        mean = F.mean(axis=0).tolist()
        std = np.maximum(F.std(axis=0), 1e-3).tolist()
    return FittedPreprocessing(features=section.features, bands=section.bands, scale=section.scale,
                               normalize=section.normalize, raw_shape=list(X_train_raw.shape[1:]),
                               sample_rate_hz=sample_rate_hz, feature_names=names, mean=mean, std=std)


def transform(spec: FittedPreprocessing, X_raw: np.ndarray) -> np.ndarray:
    """Turn a batch of raw inputs (N, *raw_shape) into float32 model features (N, n_features)."""
    X_raw = np.asarray(X_raw)
    if list(X_raw.shape[1:]) != spec.raw_shape:
        raise ValueError(f"raw input shape {list(X_raw.shape[1:])} does not match the model's {spec.raw_shape}")
    F = _extract(spec, X_raw)
    if spec.mean is not None and spec.std is not None:
        F = (F - np.asarray(spec.mean)) / np.asarray(spec.std)
    return F.astype(np.float32)
