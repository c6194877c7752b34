"""What the MLflow UI reads: experiments marked as model training, a signature beside every package."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tinymlops import registry, registry_ui


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "manifest.json").write_text(json.dumps({"file": "m.onnx", "variant": "float32", "format": "onnx",
                                                   "input": {"shape": [1, 64], "dtype": "float32"},
                                                   "output": {"shape": [1, 10], "dtype": "float32"}}))
    (pkg / "m.onnx").write_bytes(b"x")
    return pkg


def test_new_and_existing_experiments_open_on_the_runs_table(tm_home: Path) -> None:
    c = registry.client()
    exp_id = registry.ensure_experiment("ui-new")
    assert c.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    old_id = c.create_experiment("ui-old")  # made before the tag existed (or by another tool)
    assert "mlflow.experimentKind" not in (c.get_experiment(old_id).tags or {})
    assert registry.ensure_experiment("ui-old") == old_id
    assert c.get_experiment(old_id).tags["mlflow.experimentKind"] == "custom_model_development"
    c.set_experiment_tag(old_id, "mlflow.experimentKind", "genai_development")  # a user's explicit choice stays
    registry.ensure_experiment("ui-old")
    assert c.get_experiment(old_id).tags["mlflow.experimentKind"] == "genai_development"


def test_every_registered_version_has_a_signature_the_ui_reads(tm_home: Path, tmp_path: Path) -> None:
    with registry.run("ui-sig", "train mlp") as r:
        registry.log_artifact(r.run_id, _package(tmp_path), registry.PACKAGE_DIR)
    version = registry.register_version("ui-model", r.run_id, {"variant": "float32"}, "first")
    # the UI fetches model-versions/get-artifact?path=MLmodel from the version's source: the package directory
    mlmodel = registry.download(r.run_id, f"{registry.PACKAGE_DIR}/MLmodel", tmp_path / "dl")
    doc = yaml.safe_load(mlmodel.read_text())
    assert json.loads(doc["signature"]["inputs"]) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 64]}}]
    assert json.loads(doc["signature"]["outputs"])[0]["tensor-spec"]["shape"] == [-1, 10]
    # MLflow itself parses it into a signature (what the version page renders)
    from mlflow.models import Model

    sig = Model.load(str(mlmodel)).signature
    assert sig is not None and sig.inputs.inputs[0].shape == (-1, 64)
    assert registry.get_version("ui-model", version).source.endswith("/package")
    registry.set_version_description("ui-model", version, "## float32\n\n| board | ms |\n|---|---|\n| a | 1 |")
    assert registry.get_version("ui-model", version).description.startswith("## float32")


def test_flatten_keeps_dotted_parameter_names() -> None:
    assert registry_ui.flatten({"model": {"arch": "mlp", "opt": {"lr": 1}}, "x": 2}) == {
        "model.arch": "mlp", "model.opt.lr": 1, "x": 2}
