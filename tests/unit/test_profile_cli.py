"""`tinymlops profile` / `tinymlops targets`: the JSON contract, outside target YAMLs, bad input exit codes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from typer.testing import CliRunner

from cli import app
from tinymlops.profile.targets import SHIPPED_TARGETS_DIR

TARGETS = str(SHIPPED_TARGETS_DIR)
SINE = Path(next(iter(importlib.util.find_spec("tflite_micro").submodule_search_locations))) / "python" / \
    "tflite_micro" / "sine_float.tflite"
runner = CliRunner()


def _board(tmp_path: Path, sram: int = 65536) -> Path:
    p = tmp_path / "my-board.yaml"
    p.write_text(f"kind: target\nname: my-board\ncore: cortex-m33\nclock_mhz: 100\nsram_bytes: {sram}\n"
                 "flash_bytes: 1048576\nruntime: tflm-reference\nactive_power_mw: 12\n")
    return p


def test_profile_json_contract_with_measured_tflm_arena(tmp_path: Path) -> None:
    res = runner.invoke(app, ["profile", "--model", str(SINE), "--target", str(_board(tmp_path)), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["target"] == "my-board" and out["fits"] is True and out["reasons"] == []
    assert out["macs"] == 288 and out["params"] == 321
    assert out["latency_ms"] > 0 and out["energy_uj"] == round(out["latency_ms"] * 12, 4)
    m = out["measured"]
    assert m["tflm_arena_bytes"] > 0
    # static arena estimate within 5 % of what TFLM measured
    assert abs(m["tflm_arena_estimate_bytes"] - m["tflm_arena_bytes"]) <= 0.05 * m["tflm_arena_bytes"]


def test_profile_does_not_fit_lists_reasons(tmp_path: Path) -> None:
    res = runner.invoke(app, ["profile", "-m", str(SINE), "-t", str(_board(tmp_path, sram=1024)), "--json",
                              "--no-measure"])
    assert res.exit_code == 0
    out = json.loads(res.stdout)
    assert out["fits"] is False and any("> SRAM 1,024 B" in r for r in out["reasons"])


def test_profile_several_catalogue_targets_table_and_json(tmp_path: Path) -> None:
    res = runner.invoke(app, ["profile", "-m", str(SINE), "-t", "nucleo-l4r5zi", "-t", "raspberry-pi-pico",
                              "--targets-dir", TARGETS, "--json", "--no-measure"])
    assert res.exit_code == 0
    assert [r["target"] for r in json.loads(res.stdout)] == ["nucleo-l4r5zi", "raspberry-pi-pico"]
    res = runner.invoke(app, ["profile", "-m", str(SINE), "-t", "nucleo-l4r5zi", "--targets-dir", TARGETS,
                              "--no-measure"])
    assert res.exit_code == 0 and "nucle" in res.stdout


def test_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"definitely not a flatbuffer model file")
    res = runner.invoke(app, ["profile", "-m", str(bad), "-t", "nucleo-l4r5zi", "--targets-dir", TARGETS])
    assert res.exit_code == 2 and "Traceback" not in res.output
    res = runner.invoke(app, ["profile", "-m", str(SINE), "-t", "atari-2600", "--targets-dir", TARGETS])
    assert res.exit_code == 2 and "unknown target" in res.output
    y = tmp_path / "broken.yaml"
    y.write_text("kind: target\nname: x\ncore: z80\n")
    res = runner.invoke(app, ["profile", "-m", str(SINE), "-t", str(y)])
    assert res.exit_code == 2 and "broken.yaml: core" in res.output


def test_targets_lists_catalogue() -> None:
    res = runner.invoke(app, ["targets", "--targets-dir", TARGETS, "--json"])
    assert res.exit_code == 0
    names = {t["name"] for t in json.loads(res.stdout)}
    assert {"nucleo-l4r5zi", "host", "raspberry-pi-4"} <= names
