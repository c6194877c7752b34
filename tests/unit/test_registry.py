"""The MLflow adapter: it hands out plain dataclasses, and it is the only module that imports MLflow."""

from __future__ import annotations

import ast
import dataclasses
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
