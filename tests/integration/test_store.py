"""A relocatable store: `tinymlops store move` and `store relocate` keep artifacts and versions downloadable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
TINYMLOPS = Path(sys.executable).with_name("tinymlops")


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["TINYMLOPS_HOME"] = str(home)
    return subprocess.run([str(TINYMLOPS), *args], env=env, cwd=home.parent, capture_output=True, text=True,
                          timeout=180)


def _use(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymlops import registry

    monkeypatch.setenv("TINYMLOPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry.connect()


def _build_store(home: Path, work: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A run with an artifact and a registered version whose package is that run's ``package/``."""
    from tinymlops import registry

    _use(home, monkeypatch)
    pkg = work / "package"
    pkg.mkdir(parents=True)
    (pkg / "manifest.json").write_text(json.dumps({"file": "model.tflite", "variant": "float32"}))
    (pkg / "model.tflite").write_bytes(b"TFL3 not really a model, 32 bytes")
    with registry.run("store-it", "train") as r:
        registry.log_artifact(r.run_id, pkg, registry.PACKAGE_DIR)
        registry.log_text(r.run_id, "hello from the old place", "notes/readme.txt")
    version = registry.register_version("movable", r.run_id, {"variant": "float32", "format": "tflite"}, "v")
    return r.run_id, version


def _readable(run_id: str, version: str, dst: Path) -> None:
    from tinymlops import registry

    assert registry.download(run_id, "notes/readme.txt", dst / "a").read_text() == "hello from the old place"
    pkg = registry.download_package("movable", version, dst / "b")
    assert registry.read_manifest(pkg)["file"] == "model.tflite" and (pkg / "model.tflite").is_file()


def test_store_move_keeps_artifacts_and_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = tmp_path / "old-home", tmp_path / "elsewhere" / "new-home"
    run_id, version = _build_store(old, tmp_path / "work", monkeypatch)
    from tinymlops import settings

    (old / "rollout-demo").mkdir()
    (old / "rollout-demo" / "fleet.db").write_bytes(b"")
    settings.record_fleet_db(f"sqlite:///{old}/rollout-demo/fleet.db", "the demo")
    (tmp_path / "elsewhere").mkdir()
    res = _cli(old, "store", "move", str(new), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["old_home"] == str(old) and out["new_home"] == str(new)
    assert out["updated"]["model_versions.source"] == 1 and out["updated"]["runs.artifact_uri"] >= 1
    assert not old.exists() and (new / "mlflow.db").is_file()
    assert out["updated"]["fleet.json"] == 1  # the demo's recorded fleet moved along
    monkeypatch.setenv("TINYMLOPS_HOME", str(new))
    monkeypatch.delenv("TINYMLOPS_FLEET_DB", raising=False)
    assert settings.fleet_db_choice()[0] == f"sqlite:///{new}/rollout-demo/fleet.db"

    _use(new, monkeypatch)
    _readable(run_id, version, tmp_path / "dl")
    from tinymlops import registry

    assert registry.get_version("movable", version).source.startswith(new.as_uri())
    assert registry.get_run(run_id).artifact_uri.startswith(new.as_uri())


def test_a_home_moved_by_hand_is_repaired_by_relocate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = tmp_path / "a", tmp_path / "b"
    run_id, version = _build_store(old, tmp_path / "work", monkeypatch)
    shutil.move(str(old), str(new))
    _use(new, monkeypatch)
    with pytest.raises(Exception, match="readme.txt|No such file|not exist"):  # noqa: PT011 - MLflow's own type
        _readable(run_id, version, tmp_path / "broken")

    res = _cli(new, "store", "relocate")
    assert res.returncode == 0, res.stderr
    assert f"moved from {old} to {new}" in res.stdout
    _readable(run_id, version, tmp_path / "dl")
    again = _cli(new, "store", "relocate", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["total"] == 0  # idempotent


def test_store_move_refuses_bad_targets_without_touching_the_store(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    _build_store(home, tmp_path / "work", monkeypatch)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    for target, message in ((taken, "already exists"), (home / "inside", "must be outside"),
                            (tmp_path / "no" / "parent", "directory does not exist")):
        res = _cli(home, "store", "move", str(target))
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr + res.stdout
    assert (home / "mlflow.db").is_file() and not (tmp_path / "no").exists()
    res = _cli(tmp_path / "empty-home", "store", "relocate")
    assert res.returncode == 2 and "no embedded MLflow store here" in res.stderr
