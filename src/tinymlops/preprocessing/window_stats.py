"""``window_stats``: per channel, statistics of a window (mean, std, RMS, kurtosis, crest factor)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from tinymlops.preprocessing.base import EPS, Block, channels_last

Stat = Literal["mean", "std", "rms", "kurtosis", "crest"]
STATS: tuple[Stat, ...] = ("mean", "std", "rms", "kurtosis", "crest")


class WindowStats(Block):
    """(samples,) or (samples, channels) windows -> channels x len(stats) features, channel-major.

    ``std`` is the population standard deviation, ``rms`` the root mean square of the raw values, ``kurtosis``
    the fourth central moment over std^4 (3 for a Gaussian), ``crest`` the peak absolute value over the RMS.
    """

    block: Literal["window_stats"] = "window_stats"
    stats: list[Stat] = Field(default_factory=lambda: list(STATS), min_length=1)

    @field_validator("stats")
    @classmethod
    def _unique(cls, v: list[Stat]) -> list[Stat]:
        if len(set(v)) != len(v):
            raise ValueError(f"stats repeat a statistic: {v}")
        return v

    def apply(self, X: np.ndarray) -> np.ndarray:
        X = channels_last(X, self.block)
        mean = X.mean(axis=1)
        xc = X - mean[:, None, :]
        var = (xc**2).mean(axis=1)
        std = np.sqrt(var)
        rms = np.sqrt((X**2).mean(axis=1))
        values = {"mean": mean, "std": std, "rms": rms,
                  "kurtosis": (xc**4).mean(axis=1) / (var**2 + EPS),
                  "crest": np.abs(X).max(axis=1) / (rms + EPS)}
        return np.stack([values[s] for s in self.stats], axis=2).reshape(len(X), -1)  # (N, channels, stats)

    def names(self, in_shape: tuple[int, ...], in_names: list[str] | None) -> list[str]:
        n_ch = in_shape[1] if len(in_shape) == 2 else 1
        return [f"ch{c}_{s}" for c in range(n_ch) for s in self.stats]
