"""``log_mel`` and ``mfcc``: framed log-mel spectrograms and their cepstra, as ``tf.signal`` computes them.

Frames of ``frame_length`` samples every ``frame_step`` (no padding at the end), a periodic Hann window, an rfft of
``fft_length`` points, ``|X|^power``, HTK-mel triangular filters (``tf.signal.linear_to_mel_weight_matrix``),
``log(mel + log_offset)``; MFCCs are the orthonormal-scaled DCT-II of that (``tf.signal.mfccs_from_log_mel_
spectrograms``). Parity with ``tf.signal`` is tested (tests/integration/test_preprocessing_tf_parity.py).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from tinymlops.preprocessing.base import Block, FitContext


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)


def mel_weights(n_mels: int, n_bins: int, sample_rate_hz: float, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """(n_bins, n_mels) triangular filters of ``tf.signal.linear_to_mel_weight_matrix`` (bin 0 has no weight)."""
    freqs = np.linspace(0.0, sample_rate_hz / 2.0, n_bins)[1:]
    bins_mel = hz_to_mel(freqs)[:, None]
    edges = np.linspace(hz_to_mel(fmin_hz), hz_to_mel(fmax_hz), n_mels + 2)
    lower, center, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    w = np.maximum(0.0, np.minimum((bins_mel - lower) / (center - lower), (upper - bins_mel) / (upper - center)))
    return np.concatenate([np.zeros((1, n_mels)), w], axis=0)


def dct_matrix(n_mels: int, n_mfcc: int) -> np.ndarray:
    """(n_mels, n_mfcc): unnormalised DCT-II times rsqrt(2 n_mels), as ``mfccs_from_log_mel_spectrograms``."""
    n = np.arange(n_mels)[:, None]
    k = np.arange(n_mfcc)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * n_mels)) / np.sqrt(2.0 * n_mels)


def hann_periodic(length: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


class LogMel(Block):
    """(samples,) or (samples, 1) mono audio -> (frames, n_mels) log-mel spectrogram."""

    block: Literal["log_mel"] = "log_mel"
    frame_length: int = Field(256, ge=8, le=8192, description="samples per frame")
    frame_step: int = Field(128, ge=1, le=8192, description="samples between frame starts")
    fft_length: int | None = Field(None, ge=8, le=16384, description="default: next power of two >= frame_length")
    n_mels: int = Field(40, ge=1, le=256)
    fmin_hz: float = Field(20.0, ge=0)
    fmax_hz: float | None = Field(None, gt=0, description="default: half the sample rate")
    power: Literal[1, 2] = Field(2, description="1: magnitude, 2: power spectrogram")
    log_offset: float = Field(1e-6, gt=0)
    sample_rate_hz: float | None = Field(None, gt=0, description="default: the dataset's sample rate")

    @model_validator(mode="after")
    def _check(self) -> LogMel:
        if self.fft_length is not None and self.fft_length < self.frame_length:
            raise ValueError(f"fft_length {self.fft_length} is shorter than frame_length {self.frame_length}")
        return self

    @property
    def n_fft(self) -> int:
        return self.fft_length or 1 << (self.frame_length - 1).bit_length()

    def fit(self, X: np.ndarray, ctx: FitContext) -> LogMel:
        rate = self.sample_rate_hz or ctx.sample_rate_hz
        if rate is None:
            raise ValueError(f"{self.block} needs sample_rate_hz: the dataset has none; set it on the block")
        fmax = self.fmax_hz or rate / 2.0
        if not self.fmin_hz < fmax <= rate / 2.0:
            raise ValueError(f"{self.block}: need fmin_hz < fmax_hz <= sample rate / 2 ({rate / 2.0:g} Hz), got "
                             f"{self.fmin_hz:g}..{fmax:g}")
        return self.model_copy(update={"sample_rate_hz": float(rate), "fmax_hz": float(fmax),
                                       "fft_length": self.n_fft})

    def frames(self, X: np.ndarray) -> np.ndarray:
        if X.ndim == 3 and X.shape[2] == 1:
            X = X[:, :, 0]
        if X.ndim != 2:
            raise ValueError(f"{self.block} needs mono audio (samples,) or (samples, 1), got {list(X.shape[1:])}")
        if X.shape[1] < self.frame_length:
            raise ValueError(f"{self.block}: {X.shape[1]} samples are fewer than frame_length {self.frame_length}")
        return np.lib.stride_tricks.sliding_window_view(X, self.frame_length, axis=1)[:, :: self.frame_step]

    def check_fitted(self) -> None:
        if self.sample_rate_hz is None or self.fmax_hz is None:
            raise ValueError(f"pre-processing block {self.block!r} is not fitted (no sample_rate_hz/fmax_hz)")

    def log_mel(self, X: np.ndarray) -> np.ndarray:
        self.check_fitted()
        assert self.sample_rate_hz is not None and self.fmax_hz is not None
        spec = np.abs(np.fft.rfft(self.frames(X) * hann_periodic(self.frame_length), n=self.n_fft, axis=-1))
        w = mel_weights(self.n_mels, self.n_fft // 2 + 1, self.sample_rate_hz, self.fmin_hz, self.fmax_hz)
        # einsum, not BLAS matmul: these small products are 5-10x faster without BLAS threads on a busy device
        return np.log(np.einsum("nfk,km->nfm", spec**self.power, w) + self.log_offset)

    def apply(self, X: np.ndarray) -> np.ndarray:
        return self.log_mel(X)


class Mfcc(LogMel):
    """(samples,) mono audio -> (frames, n_mfcc) mel-frequency cepstral coefficients."""

    block: Literal["mfcc"] = "mfcc"  # type: ignore[assignment]
    n_mfcc: int = Field(13, ge=1, le=256)

    @model_validator(mode="after")
    def _check_mfcc(self) -> Mfcc:
        if self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc {self.n_mfcc} is more than n_mels {self.n_mels}")
        return self

    def apply(self, X: np.ndarray) -> np.ndarray:
        return np.einsum("nfm,mk->nfk", self.log_mel(X), dct_matrix(self.n_mels, self.n_mfcc))
