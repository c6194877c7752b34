"""Compress flow end to end on a real MLflow store, real runtimes (TFLite, TFLM subprocess, onnxruntime), Prefect.

One tiny float model is trained once for the module; every technique runs on it with few epochs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.integration

MODEL = "it-compress"
SMALL: dict[str, Any] = {
    "kind": "pipeline",
    "project": "vibration-compress-test",
    "mlflow": {"experiment": "it-compress", "registered_model": MODEL},
    "dataset": {"name": "vibration", "seed": 5, "vibration": {"windows_per_class": 60}},
    "preprocessing": {"features": "spectral", "bands": 8},
    "model": {"arch": "mlp", "params": {"hidden": [16], "dropout": 0.0}},
    "train": {"epochs": 15, "early_stopping_patience": 0, "learning_rate": 0.01},
    "stages": ["train", "compress"],
    "compress": {"variants": [
        {"technique": "ptq-int8", "representative_samples": 50},
        {"technique": "ptq-dynamic"},
        {"technique": "fp16"},
        {"technique": "prune", "target_sparsity": 0.8, "epochs": 3, "min_layer_weights": 0,
         "representative_samples": 50},
        {"technique": "cluster", "clusters": 8, "epochs": 2, "representative_samples": 50},
        {"technique": "qat-int8", "epochs": 2, "representative_samples": 50},
        {"technique": "prune-cluster-qat", "target_sparsity": 0.6, "clusters": 8, "epochs": 1,
         "min_layer_weights": 0, "representative_samples": 50},
        {"technique": "onnx-int8", "calibration_samples": 50},
        {"technique": "onnx-fp32"},
    ]},
}


def write_config(path: Path, **overrides: Any) -> Path:
    cfg = json.loads(json.dumps(SMALL))
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Train and register the tiny float model (version 1) in a fresh store."""
    home = tmp_path_factory.mktemp("compress-home")
    os.environ["TINYMLOPS_HOME"] = str(home)
    from tinymlops.config import load_pipeline
    from tinymlops.train import run_train

    cfg_path = write_config(home / "pipeline.yaml")
    res = run_train(load_pipeline(cfg_path))
    assert res.version == "1"
    return cfg_path, res.run_id


@pytest.fixture(scope="module")
def compressed(trained: tuple[Path, str], prefect_harness: None) -> dict[str, Any]:
    """Run the compress flow once, nested under a pipeline run."""
    from flows.compress import compress_flow
    from tinymlops import registry

    cfg_path, _ = trained
    with registry.run("it-compress", "pipeline") as parent:
        out = compress_flow(str(cfg_path), "1", parent.run_id)
    out["pipeline_run_id"] = parent.run_id
    return out


def by_variant(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["variant"]: v for v in out["variants"]}


def test_every_technique_is_registered_with_lineage_tags(compressed: dict[str, Any]) -> None:
    from tinymlops import registry

    v = by_variant(compressed)
    assert {k: x["status"] for k, x in v.items()} == {s["technique"]: "registered" for s in SMALL["compress"]["variants"]}
    compress_run = registry.get_run(compressed["compress_run_id"])
    assert compress_run.status == "FINISHED"
    assert compress_run.tags["mlflow.parentRunId"] == compressed["pipeline_run_id"]
    train_mv = registry.get_version(MODEL, "1")
    for name, res in v.items():
        mv = registry.get_version(MODEL, res["version"])
        t = mv.tags
        assert t["variant"] == name and t["technique"] == name and t["parent_version"] == "1"
        assert t["train_run_id"] == train_mv.tags["train_run_id"]
        assert t["dataset_digest"] == train_mv.tags["dataset_digest"]
        assert t["format"] == ("onnx" if name.startswith("onnx") else "tflite")
        assert name in mv.description and "accuracy" in mv.description
        run = registry.get_run(mv.run_id)
        assert run.status == "FINISHED"
        assert run.tags["mlflow.parentRunId"] == compressed["compress_run_id"]
        assert run.params["technique"] == name
        manifest = registry.read_manifest(registry.download_package(MODEL, res["version"]))
        assert manifest["variant"] == name and manifest["format"] == t["format"]
        assert manifest["file"] == f"model.{t['format']}" and manifest["parent_version"] == "1"
        assert manifest["metrics"]["accuracy"] == pytest.approx(res["accuracy"])
        assert manifest["reference"]["prediction_counts"]
    assert mv.tags.get("param.calibration_samples") is None  # onnx-fp32 has no parameters
    assert registry.get_version(MODEL, v["prune"]["version"]).tags["param.target_sparsity"] == "0.8"
    # the float parent carries the same size figures as its variants
    assert int(train_mv.tags["size_bytes"]) == compressed["float_onnx_bytes"]


def test_recorded_accuracy_is_the_artifacts_own_in_its_runtime(trained: tuple[Path, str],
                                                                compressed: dict[str, Any]) -> None:
    from tinymlops import registry
    from tinymlops.config import load_pipeline
    from tinymlops.metrics import classification_metrics
    from tinymlops.runtimes import open_runner
    from tinymlops.train import prepare

    cfg_path, _ = trained
    prep = prepare(load_pipeline(cfg_path))
    x_test, y_test = prep.features("test"), prep.splits["test"].y
    v = by_variant(compressed)
    for name in ("ptq-int8", "qat-int8", "onnx-int8", "fp16"):
        pkg = registry.download_package(MODEL, v[name]["version"])
        with open_runner(pkg / registry.read_manifest(pkg)["file"]) as r:
            acc = classification_metrics(y_test, r.predict(x_test), 4)["accuracy"]
            if name.endswith("int8") and name != "onnx-int8":
                assert r.input_dtype == "int8"  # full-integer: what a microcontroller runs
        assert acc == pytest.approx(v[name]["accuracy"]), name
    for name in ("ptq-int8", "prune", "cluster", "qat-int8", "prune-cluster-qat"):
        assert v[name]["tflm_tflite_agreement"] >= 0.995, name
        assert v[name]["tflm_arena_bytes"] > 0
    assert "tflm_tflite_agreement" not in v["ptq-dynamic"]  # float activations: not an MCU artifact
    assert v["onnx-fp32"]["agreement_with_float"] == 1.0
    assert v["ptq-int8"]["size_bytes"] < 0.8 * compressed["float_tflite_bytes"]


def test_technique_effects_are_measured_in_the_artifact(compressed: dict[str, Any]) -> None:
    from tinymlops import registry
    from tinymlops.compress.evaluate import weight_stats

    v = by_variant(compressed)
    assert v["prune"]["sparsity"] >= 0.78
    assert v["prune"]["gzip_bytes"] < v["ptq-int8"]["gzip_bytes"]
    assert v["ptq-int8"]["sparsity"] < 0.1
    assert max(v["cluster"]["unique_values"].values()) <= 8
    assert max(v["prune-cluster-qat"]["unique_values"].values()) <= 8 and v["prune-cluster-qat"]["sparsity"] >= 0.55
    assert max(v["ptq-int8"]["unique_values"].values()) > 8
    # the stats come from the registered file itself
    pkg = registry.download_package(MODEL, v["cluster"]["version"])
    assert weight_stats(pkg / "model.tflite")["unique_values"] == v["cluster"]["unique_values"]
    qdq = registry.download_package(MODEL, v["onnx-int8"]["version"]) / "model.onnx"
    import onnx

    ops = {n.op_type for n in onnx.load(str(qdq)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_variants_listing_lineage_and_prefect_table(compressed: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["variants", MODEL, "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["variant"]: r for r in json.loads(res.stdout)["versions"]}
    assert len(rows) == 10 and rows["float32"]["parent_version"] is None
    ptq = rows["ptq-int8"]
    assert ptq["accuracy_delta"] == pytest.approx(ptq["accuracy"] - compressed["float_accuracy"], abs=1e-3)
    assert ptq["size_bytes"] == by_variant(compressed)["ptq-int8"]["size_bytes"] and ptq["gzip_bytes"] > 0

    res = runner.invoke(app, ["lineage", MODEL, ptq["version"], "--json"])
    assert res.exit_code == 0, res.output
    chain = json.loads(res.stdout)["chain"]
    assert [s["step"] for s in chain] == ["dataset", "train_run", "parent_version", "variant"]
    assert chain[1]["run_id"] == compressed["train_run_id"] and "test_accuracy" in chain[1]["figures"]
    assert chain[2]["version"] == "1" and chain[3]["figures"]["tflm_tflite_agreement"] >= 0.995
    assert chain[0]["rows"]["train"] > 0 and chain[0]["digest"] == compressed["dataset_digest"]
    human = runner.invoke(app, ["lineage", MODEL, ptq["version"]])
    assert human.exit_code == 0 and "parent version 1" in human.stdout and "train run" in human.stdout

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["compress-variants"])))
    assert arts and arts[0].type == "table"
    table = arts[0].data if isinstance(arts[0].data, list) else json.loads(arts[0].data)
    assert {r["variant"] for r in table} >= {"ptq-int8", "onnx-int8", "float32 (parent)"}


def test_a_failing_variant_is_recorded_and_the_others_go_on(trained: tuple[Path, str], tmp_path: Path) -> None:
    from tinymlops import registry
    from tinymlops.compress.stage import run_compress

    cfg_path = write_config(tmp_path / "bad.yaml", compress={"variants": [
        {"technique": "cluster", "name": "cluster-too-many", "clusters": 128, "epochs": 1},  # head has 64 weights
        {"technique": "ptq-int8", "name": "int8-ok", "representative_samples": 20},
    ]})
    before = len(registry.list_versions(MODEL))
    out = run_compress(cfg_path, "1").to_dict()
    res = by_variant(out)
    assert res["int8-ok"]["status"] == "registered" and res["cluster-too-many"]["status"] == "failed"
    assert "128 clusters" in res["cluster-too-many"]["error"] and "probabilities" in res["cluster-too-many"]["error"]
    failed_run = registry.get_run(res["cluster-too-many"]["run_id"])
    assert failed_run.status == "FAILED" and "128 clusters" in failed_run.tags["error"]
    assert failed_run.tags["mlflow.parentRunId"] == out["compress_run_id"]
    versions = registry.list_versions(MODEL)
    assert len(versions) == before + 1 and versions[-1].tags["variant"] == "int8-ok"
    assert registry.get_run(out["compress_run_id"]).tags["failed_variants"] == "cluster-too-many"


def test_parent_must_exist_and_be_a_float_version(trained: tuple[Path, str], compressed: dict[str, Any]) -> None:
    from tinymlops.compress.stage import open_stage
    from tinymlops.config import load_pipeline
    from tinymlops.errors import RegistryError, UsageError

    cfg = load_pipeline(trained[0])
    with pytest.raises(RegistryError, match=f"{MODEL}/999 does not exist"):
        open_stage(cfg, "999")
    with pytest.raises(UsageError, match="is variant 'ptq-int8'; compress starts from a float32 or imported version"):
        open_stage(cfg, by_variant(compressed)["ptq-int8"]["version"])
    assert np.isfinite(compressed["float_accuracy"])


def test_an_unsupported_layer_fails_the_technique_with_its_name(trained: tuple[Path, str], tmp_path: Path) -> None:
    from tinymlops.compress.techniques import FloatSource, TechniqueUnsupported, build
    from tinymlops.config import QatInt8
    from tinymlops.tf import keras

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype(np.float32), rng.integers(0, 2, 64)
    inputs = keras.Input((6,))
    h = keras.layers.LayerNormalization(name="norm")(keras.layers.Dense(8)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))
    model.save(tmp_path / "m.h5")
    src = FloatSource(tmp_path / "m.h5", tmp_path / "unused.onnx", x, y, x, y)
    with pytest.raises(TechniqueUnsupported, match="qat-int8: layer 'norm' .LayerNormalization. is not supported"):
        build(QatInt8(technique="qat-int8", epochs=1), src, tmp_path)
