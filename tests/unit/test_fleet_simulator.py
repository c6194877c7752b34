"""Simulator configuration: cohort specs, drift knobs, power figures, mode choice, catalogue checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinymlops.config import VibrationParams, validate_data
from tinymlops.errors import ConfigError, UsageError
from tinymlops.fleet import packages
from tinymlops.sim import simulator
from tinymlops.sim.simulator import CohortSpec, DriftSpec, Simulation, SimulationSpec


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    d = tmp_path / "targets"
    d.mkdir()
    (d / "mcu.yaml").write_text("name: mcu\nruntime: tflm-cmsis-nn\nactive_power_mw: 40\ncore: cortex-m4\n"
                                "clock_mhz: 120\nsram_bytes: 640000\nflash_bytes: 2000000\n")
    (d / "gw.yaml").write_text("name: gw\nruntime: onnxruntime\ncore: cortex-a72\nclock_mhz: 1500\nsram_bytes: 4000000000\nflash_bytes: 32000000000\nactive_power_mw: 3000\n")
    return d


def test_drift_knobs_override_only_what_is_set() -> None:
    base = VibrationParams()
    assert simulator.cohort_stream(base, DriftSpec()) is None
    drifted = simulator.cohort_stream(base, DriftSpec(gain=1.5, shaft_hz=30))
    assert drifted is not None and drifted.gain == 1.5 and drifted.shaft_hz == 30
    assert drifted.offset == base.offset and drifted.noise_std == base.noise_std


def test_power_figures_are_found_in_catalogue_targets() -> None:
    assert simulator.target_power_mw({"active_power_mw": 40}) == 40.0
    assert simulator.target_power_mw({"power": {"active_mw": 12}}) == 12.0
    assert simulator.target_power_mw({"runtime": "tflite"}) is None


def test_simulation_spec_errors_name_the_key() -> None:
    good = {"cohorts": [{"name": "a", "devices": 2, "target": "mcu", "faults": {"corrupt_output_rate": 0.1}}]}
    spec = validate_data(good, SimulationSpec, "sim.yaml")
    assert spec.cohorts[0].faults.corrupt_output_rate == 0.1
    bad = {"cohorts": [{"name": "a", "devices": 0, "target": "mcu", "drift": {"gian": 2}}]}
    with pytest.raises(ConfigError) as err:
        validate_data(bad, SimulationSpec, "sim.yaml")
    assert "devices" in str(err.value) and "gian" in str(err.value)


def test_mode_is_chosen_by_fleet_size_and_targets_are_checked(catalogue: Path, tmp_path: Path) -> None:
    packages.signing_key(tmp_path)
    key = tmp_path / packages.PUBLIC_KEY_FILE
    small = Simulation("http://x", "t", [CohortSpec(name="a", devices=3, target="mcu")], state_root=tmp_path / "s",
                       trusted_key_path=key, targets_dir=catalogue)
    big = Simulation("http://x", "t", [CohortSpec(name="a", devices=5, target="mcu"),
                                       CohortSpec(name="b", devices=5, target="gw")],
                     state_root=tmp_path / "s", trusted_key_path=key, targets_dir=catalogue)
    assert small.mode == "processes" and big.mode == "async"
    cfg = big.agent_config(big.cohorts[0], "a-0000", None, 0, 10.0, None)
    assert cfg.runtime == "tflm-cmsis-nn" and cfg.energy_mw == 40.0 and cfg.state_dir == tmp_path / "s" / "a-0000"
    with pytest.raises(UsageError, match="nope"):
        Simulation("http://x", "t", [CohortSpec(name="a", devices=1, target="nope")], trusted_key_path=key,
                   targets_dir=catalogue)
