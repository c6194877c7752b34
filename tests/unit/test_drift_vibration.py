"""Drift on the vibration task from device sketches: a 15 % sensor-gain shift is caught, normal windows are not."""

from __future__ import annotations

import pytest

from tinymlops.data.config import VibrationParams
from tinymlops.monitor.config import Thresholds
from tinymlops.monitor.drift import compute_figures
from tinymlops.monitor.verdict import decide
from tinymlops.sim.synthetic import Scenario, build_scenario


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario(n_reference=1500)


def _window(sc: Scenario, params: VibrationParams, seed: int):
    reps = [sc.device_report(f"d{k}", "1", params, seed * 100 + k, 100) for k in range(5)]
    return decide(compute_figures(sc.reference, "m", "1", reps), Thresholds())


def test_gain_shift_is_flagged_in_the_first_500_inference_window(scenario: Scenario):
    for seed in range(3):
        v = _window(scenario, VibrationParams(gain=1.15), 1 + seed)
        assert v.level == "retrain", v.reasons
        drifted = set(v.drifted_features)
        assert {"x_band6_log_energy", "y_band7_log_energy", "z_band1_log_energy"} <= drifted
        # gain-invariant shape features stay quiet
        assert not drifted & {"x_log_kurtosis", "y_log_kurtosis", "z_crest"}


def test_windows_without_drift_are_quiet(scenario: Scenario):
    levels = [_window(scenario, VibrationParams(), 50 + s).level for s in range(10)]
    assert levels.count("ok") >= 9, levels
