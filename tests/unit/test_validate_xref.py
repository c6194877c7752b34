"""`tinymlops validate` and `run` check what a pipeline config points at: boards, drift and rollout configs.

The console script runs from /tmp (outside the repository), as a user with a project elsewhere would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
EXE = shutil.which("tinymlops", path=str(Path(sys.executable).parent)) or "tinymlops"


def _project(tmp_path: Path, **changes: object) -> Path:
    """A copy of the demo config with its drift and rollout files in a tmp directory; ``changes`` are top-level."""
    for name in ("drift.yaml", "drift-demo.yaml", "rollout.yaml"):
        shutil.copy(REPO / "configs" / name, tmp_path / name)
    cfg = yaml.safe_load((REPO / "configs" / "pipeline.yaml").read_text())
    cfg.update(changes)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TINYMLOPS_TARGETS_DIR", "MLFLOW_TRACKING_URI")}
    env["TINYMLOPS_HOME"] = str(home)
    return subprocess.run([EXE, *args], cwd="/tmp", env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_valid_project_outside_the_repo(tmp_path: Path) -> None:
    res = _cli("validate", str(_project(tmp_path, profile={"targets": ["nucleo-l4r5zi", "host"]})),
               home=tmp_path / "h")
    assert res.returncode == 0, res.stderr
    assert "valid pipeline config" in res.stdout


def test_unknown_board_is_reported(tmp_path: Path) -> None:
    path = _project(tmp_path, profile={"targets": ["nucleo-l4r5zi", "nucleo-l4r5zz"]})
    res = _cli("validate", str(path), home=tmp_path / "h")
    assert res.returncode == 2
    assert "profile.targets[1]" in res.stderr and "'nucleo-l4r5zz'" in res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_demo_fleet_board_is_reported(tmp_path: Path) -> None:
    path = _project(tmp_path, demo_fleet={"healthy_target": "raspberry-pi-9"})
    res = _cli("validate", str(path), home=tmp_path / "h")
    assert res.returncode == 2
    assert "demo_fleet.healthy_target" in res.stderr and "raspberry-pi-9" in res.stderr


def test_missing_and_invalid_referenced_configs(tmp_path: Path) -> None:
    path = _project(tmp_path, drift="nope.yaml")
    rollout = yaml.safe_load((tmp_path / "rollout.yaml").read_text())
    rollout["surprise"] = 1
    (tmp_path / "rollout.yaml").write_text(yaml.safe_dump(rollout))
    res = _cli("validate", str(path), home=tmp_path / "h")
    assert res.returncode == 2
    lines = res.stderr
    assert "drift:" in lines and "nope.yaml: file not found" in lines
    assert "rollout:" in lines and "surprise: unknown key" in lines


def test_missing_targets_dir_is_reported(tmp_path: Path) -> None:
    path = _project(tmp_path, profile={"targets": "all", "targets_dir": "no-such-boards"})
    res = _cli("validate", str(path), home=tmp_path / "h")
    assert res.returncode == 2
    assert "profile.targets_dir" in res.stderr and "no-such-boards" in res.stderr


def test_run_fails_fast_on_an_unknown_board(tmp_path: Path) -> None:
    """`run` refuses before Prefect starts or anything trains (it trained and compressed for 30 s before)."""
    path = _project(tmp_path, profile={"targets": ["no-such-board"]})
    home = tmp_path / "h"
    t0 = time.monotonic()
    res = _cli("run", "-c", str(path), home=home)
    assert res.returncode == 2
    assert "no-such-board" in res.stderr and "Traceback" not in res.stderr
    assert time.monotonic() - t0 < 30
    assert not (home / "mlflow.db").exists() and not (home / "prefect").exists()
