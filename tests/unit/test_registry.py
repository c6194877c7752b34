"""The MLflow adapter: it hands out plain dataclasses, and it is the only module that imports MLflow."""

from __future__ import annotations

import ast
import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinymlops import registry

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [ROOT / "src" / "tinymlops", ROOT / "cli", ROOT / "flows"]
#: the one module allowed to import mlflow (its heavy helpers, e.g. the ONNX flavour, live there too)
ADAPTER = ROOT / "src" / "tinymlops" / "registry.py"


def mlflow_importers() -> dict[str, int]:
    """Return {file: line} of every import of mlflow (any depth, function-level included) in the app and library."""
    found = {}
    for base in SCANNED:
        for path in base.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                if any(n.split(".")[0] == "mlflow" for n in names):
                    found.setdefault(str(path.relative_to(ROOT)), node.lineno)
    return found


def test_only_the_registry_imports_mlflow() -> None:
    assert set(mlflow_importers()) == {str(ADAPTER.relative_to(ROOT))}


def test_the_scan_sees_function_level_and_from_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "src" / "tinymlops"
    pkg.mkdir(parents=True)
    (pkg / "registry.py").write_text("import mlflow\n")
    (pkg / "sneaky.py").write_text("def f():\n    from mlflow.entities import Metric\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "SCANNED", [pkg])
    assert set(mlflow_importers()) == {"src/tinymlops/registry.py", "src/tinymlops/sneaky.py"}


def _register(tmp_path: Path) -> tuple[str, str]:
    model_dir = tmp_path / "pkg"
    model_dir.mkdir()
    (model_dir / "manifest.json").write_text('{"file": "m.tflite"}')
    (model_dir / "m.tflite").write_bytes(b"x")
    with registry.run("reg-unit", "train", tags={"stage": "train"}) as r:
        registry.log_params(r.run_id, {"model": {"arch": "mlp"}})
        registry.log_metrics(r.run_id, {"accuracy": 0.9, "nucleo-l4r5zi.latency_ms": 2.5})
        registry.log_artifact(r.run_id, model_dir, registry.PACKAGE_DIR)
        registry.log_dataset(r.run_id, np.zeros((4, 2), np.float32), np.zeros(4, np.int64), "toy-train", "abc123",
                             "unit-test", "train")
    version = registry.register_version("reg-model", r.run_id, {"variant": "float32", "format": "tflite"},
                                        "first")
    return r.run_id, version


def test_versions_runs_and_alias_moves_are_plain_dataclasses(tm_home: Path, tmp_path: Path) -> None:
    run_id, version = _register(tmp_path)
    registry.set_alias("reg-model", "candidate-x", version, "best on x", {"latency_ms": 2.5})

    mv = registry.get_version("reg-model", version)
    assert isinstance(mv, registry.VersionInfo) and dataclasses.is_dataclass(mv)
    assert (mv.name, mv.version, mv.run_id, mv.description) == ("reg-model", "1", run_id, "first")
    assert mv.tags == {"variant": "float32", "format": "tflite"} and mv.aliases == ["candidate-x"]
    assert mv.source.endswith("/package") and mv.created_ms > 0 and mv.uri == "models:/reg-model/1"
    assert registry.get_alias("reg-model", "candidate-x") == mv
    assert registry.get_alias("reg-model", "nope") is None
    assert registry.list_versions("reg-model") == [mv]  # version search drops aliases: the adapter restores them
    from tinymlops.compress.lineage import variants

    assert variants("reg-model")[0]["aliases"] == ["candidate-x"]

    run = registry.get_run(run_id)
    assert isinstance(run, registry.RunInfo)
    assert (run.status, run.name) == ("FINISHED", "train") and run.experiment_id.isdigit()
    assert run.params == {"model.arch": "mlp"} and run.metrics["nucleo-l4r5zi.latency_ms"] == 2.5
    assert run.tags["stage"] == "train" and run.artifact_uri and run.end_ms and run.end_ms >= run.start_ms > 0
    assert [(d.name, d.digest, d.context) for d in run.datasets] == [("toy-train", "abc123", "train")]

    (move,) = registry.alias_history("reg-model", "candidate-")
    assert isinstance(move, registry.AliasMove)
    assert (move.alias, move.version, move.previous_version, move.reason) == ("candidate-x", "1", "", "best on x")
    assert move.figures == {"latency_ms": 2.5} and move.time_ms > 0


# ---- store errors: one line naming the store and the cause, exit 1; a sqlite URI in a missing directory exit 2 ----

TINYMLOPS = Path(sys.executable).with_name("tinymlops")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _variants(tmp_path: Path, uri: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["TINYMLOPS_HOME"] = str(tmp_path / "home")
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run([str(TINYMLOPS), "variants", "M"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def _one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    out = (res.stdout + res.stderr).strip()
    assert "Traceback" not in out and "Max retries" not in out and "urllib3" not in out, out
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out
    return lines[0]


def test_unreachable_server_is_one_line_naming_store_and_cause(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    res = _variants(tmp_path, uri)
    assert res.returncode == 1
    assert _one_line_error(res) == f"error: MLflow tracking store {uri} is not reachable: Connection refused"
    assert time.perf_counter() - t0 < 60  # no retry back-off


def test_sqlite_uri_in_a_missing_directory_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    res = _variants(tmp_path, f"sqlite:///{missing}/x.db")
    assert res.returncode == 2
    line = _one_line_error(res)
    assert f"directory {missing} does not exist" in line and "nothing was created" in line
    assert not (tmp_path / "no").exists()


def test_corrupt_store_file_is_named(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"PK\x03\x04 this is a zip file, not a database" * 100)
    res = _variants(tmp_path, f"sqlite:///{db}")
    assert res.returncode == 1
    assert _one_line_error(res).startswith(f"error: MLflow store {db} is not an SQLite database")
    assert db.read_bytes().startswith(b"PK\x03\x04")  # left as it was


def test_damaged_store_pages_are_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert _variants(tmp_path, None).returncode == 1  # creates the embedded store (the model does not exist)
    db = home / "mlflow.db"
    data = bytearray(db.read_bytes())
    data[100:] = bytes((i * 7919) % 251 for i in range(len(data) - 100))  # header intact, pages garbage
    db.write_bytes(bytes(data))
    res = _variants(tmp_path, None)
    assert res.returncode == 1
    line = _one_line_error(res)
    assert line.startswith(f"error: MLflow store {db} is not a usable MLflow database") and "malformed" in line


def test_store_error_cause_of_a_failed_mlflow_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

    try:
        MlflowClient(tracking_uri=f"http://127.0.0.1:{_free_port()}").search_experiments(max_results=1)
    except Exception as exc:
        assert registry.store_error_cause(exc) == "Connection refused"
    else:
        raise AssertionError("a closed port answered")
