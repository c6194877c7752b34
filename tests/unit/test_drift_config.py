"""Drift config: the shipped file loads; bad values are config errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinymlops.config import load
from tinymlops.errors import ConfigError
from tinymlops.monitor.config import DriftConfig, parse_duration_s

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_loads():
    cfg = load(REPO / "configs/drift.yaml")
    assert isinstance(cfg, DriftConfig)
    assert cfg.window_s == 3600 and cfg.retrain.cooldown_s == 86400
    assert cfg.thresholds.features.psi_warn < cfg.thresholds.features.psi_retrain


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172800),
                                               ("1w", 604800), (30, 30)])
def test_durations(text, seconds):
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize(("body", "needle"), [
    ("thresholds:\n  features:\n    psi_warn: 0.3\n    psi_retrain: 0.2\n", "retrain thresholds"),
    ("thresholds: {}\nwindow: soon\n", "window"),
    ("thresholds: {}\nretrain:\n  cooldown: soon\n", "retrain.cooldown"),
    ("thresholds:\n  features:\n    alpha: 2\n", "thresholds.features.alpha"),
    ("thresholds: {}\nsurprise: 1\n", "surprise: unknown key"),
])
def test_bad_values_are_config_errors(tmp_path: Path, body: str, needle: str):
    p = tmp_path / "drift.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError) as e:
        load(p)
    assert needle in str(e.value)
