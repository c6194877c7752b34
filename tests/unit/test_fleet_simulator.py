"""Simulator configuration: cohort specs, drift knobs, power figures, mode choice, catalogue checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinymlops.config import validate_data
from tinymlops.data.config import VibrationParams
from tinymlops.errors import ConfigError, UsageError
from tinymlops.fleet import packages
from tinymlops.sim import simulator
from tinymlops.sim.faults import FaultSpec
from tinymlops.sim.simulator import CohortSpec, DriftSpec, Simulation, SimulationSpec


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    d = tmp_path / "targets"
    d.mkdir()
    (d / "mcu.yaml").write_text("name: mcu\nruntime: tflm-cmsis-nn\nactive_power_mw: 40\ncore: cortex-m4\n"
                                "clock_mhz: 120\nsram_bytes: 640000\nflash_bytes: 2000000\n")
    (d / "gw.yaml").write_text("name: gw\nruntime: onnxruntime\ncore: cortex-a72\nclock_mhz: 1500\n"
                               "sram_bytes: 4000000000\nflash_bytes: 32000000000\nactive_power_mw: 3000\n")
    return d


def test_drift_knobs_override_only_what_is_set() -> None:
    base = VibrationParams()
    assert simulator.cohort_stream(base, DriftSpec()) is None
    drifted = simulator.cohort_stream(base, DriftSpec(gain=1.5, shaft_hz=30))
    assert drifted is not None and drifted.gain == 1.5 and drifted.shaft_hz == 30
    assert drifted.offset == base.offset and drifted.noise_std == base.noise_std


def test_power_figures_come_from_the_typed_catalogue(catalogue: Path, tmp_path: Path) -> None:
    packages.signing_key(tmp_path)
    sim = Simulation("http://x", "t", [CohortSpec(name="a", devices=1, target="gw")], state_root=tmp_path / "s",
                     trusted_key_path=tmp_path / packages.PUBLIC_KEY_FILE, targets_dir=catalogue)
    assert sim.agent_config(sim.cohorts[0], "a-0000", None, 0, None, None).energy_mw == 3000.0


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


def test_runtime_faults_need_async_mode_and_auto_picks_it(catalogue: Path, tmp_path: Path) -> None:
    packages.signing_key(tmp_path)
    key = tmp_path / packages.PUBLIC_KEY_FILE
    slow = [CohortSpec(name="a", devices=2, target="gw", faults=FaultSpec(slow_inference_ms=5))]
    crash = [CohortSpec(name="a", devices=2, target="gw", faults=FaultSpec(crash_after_s=1))]
    kw = {"state_root": tmp_path / "s", "trusted_key_path": key, "targets_dir": catalogue}
    assert Simulation("http://x", "t", slow, **kw).mode == "async"
    assert Simulation("http://x", "t", crash, **kw).mode == "processes"  # a crash is a SIGKILL there
    with pytest.raises(UsageError, match="async"):
        Simulation("http://x", "t", slow, mode="processes", **kw)


def test_process_mode_spawns_the_installed_product_command(catalogue: Path, tmp_path: Path) -> None:
    packages.signing_key(tmp_path)
    sim = Simulation("http://x", "t", [CohortSpec(name="a", devices=1, target="gw", drift=DriftSpec(gain=2))],
                     state_root=tmp_path / "s", trusted_key_path=tmp_path / packages.PUBLIC_KEY_FILE,
                     targets_dir=catalogue)
    argv = sim._agent_argv(sim.agent_config(sim.cohorts[0], "a-0000", "tok", 0, None, None), sim.cohorts[0], 0)
    assert argv[0] == str(Path(sys.executable).with_name("tinymlops")) and argv[1] == "agent"
    assert "from cli import main" not in " ".join(argv)
    assert argv[argv.index("--input") + 1] == "synthetic" and argv[argv.index("--drift-gain") + 1] == "2.0"
    assert not any(a.startswith("--fault") for a in argv)


def test_python_m_cli_runs_the_command() -> None:
    out = subprocess.run([sys.executable, "-m", "cli", "agent", "--help"], capture_output=True, text=True,
                         timeout=60, check=True)
    assert "--input" in out.stdout and "--fault" not in out.stdout


def test_synthetic_stream_drifts_after_the_delay_and_on_demand() -> None:
    from tinymlops.sim.streams import SyntheticStream

    s = SyntheticStream(VibrationParams(), seed=3, drift=VibrationParams(gain=3.0), drift_after_s=3600)
    w = s.read()
    assert w is not None and w.label is not None and not s.exhausted and not s.drifted
    s.set_drift(VibrationParams(gain=3.0))
    s.read()
    assert s.drifted
    same = SyntheticStream(VibrationParams(), seed=3).read()
    assert same is not None and np.array_equal(same.values, w.values)  # seeded: reproducible windows
