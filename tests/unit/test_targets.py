"""One target catalogue: one search path, boards shipped in the package, one place for the metric keys."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinymlops import metrics
from tinymlops.errors import ConfigError
from tinymlops.profile import targets
from tinymlops.profile.targets import SHIPPED_TARGETS_DIR, TARGETS_DIR_ENV, catalogue, get_target, targets_dir

ROOT = Path(__file__).resolve().parents[2]
CODE = [ROOT / "src" / "tinymlops", ROOT / "cli", ROOT / "flows"]
TINYMLOPS = Path(sys.executable).with_name("tinymlops")
SINE = Path(next(iter(importlib.util.find_spec("tflite_micro").submodule_search_locations))) / "python" / \
    "tflite_micro" / "sine_float.tflite"
BOARD = ("name: {name}\ncore: cortex-m4\nclock_mhz: 80\nsram_bytes: 65536\nflash_bytes: 262144\n"
         "runtime: tflm-reference\nactive_power_mw: 10\n")


def _catalogue(d: Path, *names: str) -> Path:
    d.mkdir(parents=True)
    for n in names:
        (d / f"{n}.yaml").write_text(BOARD.format(name=n))
    return d


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(TARGETS_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_shipped_catalogue_has_the_eleven_boards() -> None:
    cat = catalogue(SHIPPED_TARGETS_DIR)
    assert len(cat) == 11 and {"nucleo-l4r5zi", "host", "host-onnxruntime", "raspberry-pi-4"} <= set(cat)


def test_search_path_explicit_then_env_then_project_then_shipped(clean_env: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert targets_dir() == SHIPPED_TARGETS_DIR  # no project catalogue here: the built-in boards
    assert "nucleo-l4r5zi" in catalogue() and get_target("nucleo-l4r5zi").core == "cortex-m4"
    project = _catalogue(clean_env / "configs" / "targets", "proj-board")
    assert targets_dir().resolve() == project and set(catalogue()) == {"proj-board"}
    env = _catalogue(clean_env / "env-cat", "env-board")
    monkeypatch.setenv(TARGETS_DIR_ENV, str(env))
    assert set(catalogue()) == {"env-board"}
    explicit = _catalogue(clean_env / "mine", "my-board")
    assert set(catalogue(explicit)) == {"my-board"} and get_target("my-board", explicit).clock_mhz == 80


def test_missing_directories_are_named_with_where_they_came_from(clean_env: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="nope: targets directory not found"):
        catalogue(clean_env / "nope")
    monkeypatch.setenv(TARGETS_DIR_ENV, "/no/such/catalogue")
    with pytest.raises(ConfigError, match=f"{TARGETS_DIR_ENV}=/no/such/catalogue"):
        catalogue()
    monkeypatch.delenv(TARGETS_DIR_ENV)
    with pytest.raises(ConfigError, match="unknown target 'atari'.*nucleo-l4r5zi"):
        get_target("atari")


def test_board_names_work_from_any_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != TARGETS_DIR_ENV}
    env["TINYMLOPS_HOME"] = str(tmp_path / "home")
    res = subprocess.run([str(TINYMLOPS), "targets", "--json"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "nucleo-l4r5zi" in {t["name"] for t in json.loads(res.stdout)}
    res = subprocess.run([str(TINYMLOPS), "profile", "--model", str(SINE), "--target", "nucleo-l4r5zi", "--json",
                          "--no-measure"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["target"] == "nucleo-l4r5zi" and out["fits"] is True and out["latency_ms"] > 0


def _string_constants(path: Path) -> list[str]:
    """Return string literals of a module, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_the_project_catalogue_path_is_written_once() -> None:
    places = [str(p.relative_to(ROOT)) for base in CODE for p in base.rglob("*.py")
              for s in _string_constants(p) if "configs/targets" in s]
    assert places == ["src/tinymlops/profile/targets.py"]
    assert Path("configs", "targets") == targets.PROJECT_TARGETS_DIR


def test_per_target_metric_keys_are_built_only_in_metrics() -> None:
    pattern = re.compile(r"\}\.(latency_ms|energy_uj|peak_ram_bytes|flash_bytes|fits)\b|\"fits\.\{")
    offenders = [str(p.relative_to(ROOT)) for base in CODE for p in base.rglob("*.py")
                 if p.name != "metrics.py" and pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_metric_keys_round_trip() -> None:
    logged = metrics.profile_metrics("pico", {"latency_ms": 2.5, "energy_uj": float("nan"), "peak_ram_bytes": 900,
                                              "flash_bytes": 4000, "macs": 7}, fits=True)
    assert logged == {"pico.latency_ms": 2.5, "pico.peak_ram_bytes": 900.0, "pico.flash_bytes": 4000.0,
                      "pico.fits": 1.0}
    assert metrics.target_figures({**logged, "host.latency_ms": 1.0}, "pico") == {
        "latency_ms": 2.5, "peak_ram_bytes": 900.0, "flash_bytes": 4000.0}
    assert metrics.fits_key("pico") == "fits.pico" and metrics.target_metric("a.b", "energy_uj") == "a.b.energy_uj"
