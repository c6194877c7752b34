"""The emulated profiling method's switches, CPI scaling and its fallback without a toolchain (no QEMU run here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinymlops.export import emulated
from tinymlops.profile.targets import TargetConfig, get_target


def _target(**kw: object) -> TargetConfig:
    base = get_target("nucleo-l4r5zi").model_dump()
    return TargetConfig.model_validate({**base, **kw})


def test_only_targets_that_ask_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(emulated.EMULATOR_ENV, raising=False)
    assert not emulated.requested(get_target("nucleo-l4r5zi"))        # shipped boards keep their figures
    assert emulated.requested(_target(emulator="qemu"))
    assert not emulated.requested(_target(emulator="qemu", core="cortex-m55"))   # no QEMU board for M55
    assert not emulated.requested(get_target("raspberry-pi-4"))
    monkeypatch.setenv(emulated.EMULATOR_ENV, "qemu")
    assert emulated.requested(get_target("arduino-nano-33-ble-sense"))
    assert not emulated.requested(get_target("nucleo-h7a3zi-q"))      # X-CUBE-AI: QEMU runs TFLM, not it
    assert not emulated.requested(get_target("raspberry-pi-pico"))    # Cortex-M0+: no emulator


def test_auto_mode_follows_the_toolchain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(emulated.EMULATOR_ENV, "auto")
    monkeypatch.setenv("PATH", str(tmp_path))  # no cross compiler, no QEMU: the demo keeps its static figures
    assert not emulated.tools_present()
    assert not emulated.requested(get_target("nucleo-l4r5zi"))
    monkeypatch.setattr(emulated, "tools_present", lambda: True)
    assert emulated.requested(get_target("nucleo-l4r5zi"))
    assert not emulated.requested(get_target("raspberry-pi-4"))
    monkeypatch.setenv(emulated.EMULATOR_ENV, "off")
    assert not emulated.requested(get_target("nucleo-l4r5zi"))


def test_cpi_scales_the_m4_calibration_by_core() -> None:
    m4 = emulated.cpi("cortex-m4", "tflm-cmsis-nn")
    assert m4 == pytest.approx(emulated.CPI_M4["tflm-cmsis-nn"])
    assert emulated.cpi("cortex-m7", "tflm-cmsis-nn") == pytest.approx(m4 * 0.54)
    assert emulated.cpi("cortex-m33", "tflm-cmsis-nn") == pytest.approx(m4 * 0.80)


class _Fig:
    def __init__(self) -> None:
        self.latency_ms, self.energy_uj, self.flash_bytes, self.peak_ram_bytes = 1.0, 40.0, 100_000, 8_000
        self.notes: list[str] = []
        self.measured: dict[str, object] = {}
        self.sources: dict[str, str] = {}


def test_without_toolchain_the_estimate_stays_with_a_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    fig = _Fig()
    emulated.measure_emulated(tmp_path / "m.tflite", _target(emulator="qemu"), fig)
    assert (fig.latency_ms, fig.flash_bytes, fig.peak_ram_bytes) == (1.0, 100_000, 8_000)
    assert fig.measured == {} and "emulated profiling skipped" in fig.notes[0]
    assert "apt-get install -y gcc-arm-none-eabi" in fig.notes[0]


def test_target_yaml_accepts_only_known_emulators() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        _target(emulator="renode")


def test_pipeline_summary_shows_a_firmware_column_only_when_measured(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.pipeline import print_summary

    target = {"recommended_version": "3", "variant": "ptq-int8", "accuracy": 0.97, "latency_ms": 0.08,
              "energy_uj": 3.1, "peak_ram_bytes": 7_760, "reasons": []}
    out = {"project": "p", "train": {"model_uri": "models:/m/1", "metrics": {"test_accuracy": 0.97,
                                                                              "test_macro_f1": 0.97,
                                                                              "train_seconds": 1.0}},
           "profile": {"targets": {"nucleo-l4r5zi": dict(target), "host": dict(target)}}}
    print_summary(out)
    assert "firmware" not in capsys.readouterr().out
    out["profile"]["targets"]["nucleo-l4r5zi"]["firmware"] = {"flash_bytes": 73_100, "ram_bytes": 7_760,
                                                              "instructions_per_inference": 5_720}
    print_summary(out)
    text = capsys.readouterr().out
    assert "firmware" in text and "73,100 B / 7,760 B / 5,720" in text
