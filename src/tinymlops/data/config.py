"""The pipeline config's ``dataset:`` section (a public contract: docs/data.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tinymlops.config_base import Strict


class VibrationParams(Strict):
    """Knobs of the seeded rotating-machine generator (see tinymlops.data.vibration)."""

    windows_per_class: int = Field(500, ge=10)
    window_samples: int = Field(256, ge=64)
    sample_rate_hz: float = Field(1600.0, gt=0)
    shaft_hz: float = Field(25.0, gt=0)
    shaft_hz_jitter: float = Field(0.08, ge=0, lt=1)
    noise_std: float = Field(0.1, ge=0)
    gain: float = Field(1.0, gt=0)
    offset: float = 0.0


class DatasetSection(Strict):
    name: Literal["digits", "vibration"]
    seed: int = 0
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    vibration: VibrationParams = Field(default_factory=VibrationParams)
