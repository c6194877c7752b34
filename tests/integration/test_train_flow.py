"""Train flow end to end on a real MLflow store and Prefect: lineage, registration, exports that agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.integration

SMALL = {
    "kind": "pipeline",
    "project": "vibration-test",
    "mlflow": {"experiment": "it-train", "registered_model": "it-vibration"},
    "dataset": {"name": "vibration", "seed": 3, "vibration": {"windows_per_class": 60}},
    "preprocessing": {"features": "spectral", "bands": 8},
    "model": {"arch": "mlp", "params": {"hidden": [16]}},
    "train": {"epochs": 6, "early_stopping_patience": 0},
    "stages": ["train"],
}


def write_config(tmp_path: Path, **overrides: object) -> Path:
    cfg = json.loads(json.dumps(SMALL))
    cfg.update(overrides)
    p = tmp_path / "pipeline.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None):
    import os

    home = tmp_path_factory.mktemp("train-home")
    os.environ["TINYMLOPS_HOME"] = str(home)
    from flows.train import train_flow

    cfg_path = write_config(home)
    out = train_flow(str(cfg_path))
    return cfg_path, out


def test_train_flow_registers_a_traceable_version(trained) -> None:
    from tinymlops import registry

    _, out = trained
    assert out["version"] == "1" and out["model_uri"] == "models:/it-vibration/1"
    mv = registry.get_version("it-vibration", "1")
    for key in ("dataset_digest", "git_commit", "config_hash", "task", "variant", "format", "train_run_id"):
        assert mv.tags.get(key), key
    assert mv.tags["variant"] == "float32" and mv.run_id == out["run_id"]
    assert "Test accuracy" in mv.description and mv.tags["dataset_digest"] in mv.description
    run = registry.get_run(out["run_id"])
    assert run.status == "FINISHED"
    contexts = {d.name: d.context for d in run.datasets}
    assert set(contexts) == {"vibration-train", "vibration-val", "vibration-test"}
    assert run.datasets[0].digest
    assert "loss" in run.metrics and "test_accuracy" in run.metrics
    hist = registry.client().get_metric_history(out["run_id"], "loss")
    assert len(hist) == 6  # one point per epoch
    arts = {a.path for a in registry.client().list_artifacts(out["run_id"])}
    assert {"keras", "exports", "package", "evaluation", "reference"} <= arts


def test_exported_package_predicts_like_the_trained_model(trained) -> None:
    from tinymlops import registry
    from tinymlops.config import load_pipeline
    from tinymlops.preprocessing import FittedPreprocessing, transform
    from tinymlops.runtimes import open_runner
    from tinymlops.tf import keras
    from tinymlops.train import prepare

    cfg_path, out = trained
    pkg = registry.download_package("it-vibration", "1")
    manifest = registry.read_manifest(pkg)
    assert manifest["format"] == "onnx" and manifest["reference"]["features"]
    raw_test = prepare(load_pipeline(cfg_path)).splits["test"].X
    # the device path: raw input -> manifest pre-processing -> runtime
    device_features = transform(FittedPreprocessing(**manifest["preprocessing"]), raw_test)
    keras_dir = registry.download(out["run_id"], "keras")
    model = keras.models.load_model(keras_dir / "model.h5")
    train_time = model.predict(device_features, verbose=0).argmax(axis=1)
    with open_runner(pkg / manifest["file"]) as r:
        onnx_pred = r.predict(device_features).argmax(axis=1)
    exports = registry.download(out["run_id"], "exports")
    with open_runner(exports / "model_fp32.tflite") as r:
        tfl = r.predict(device_features)
    with open_runner(exports / "model_fp32.tflite", "tflm") as r:
        tflm = r.predict(device_features)
        assert r.arena_bytes > 0
    assert (onnx_pred == train_time).mean() >= 0.99
    assert (tfl.argmax(axis=1) == train_time).mean() >= 0.99
    np.testing.assert_allclose(tflm, tfl, atol=1e-4)


def test_failed_training_is_marked_failed_and_registers_nothing(trained, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymlops import registry, train
    from tinymlops.config import load_pipeline
    from tinymlops.train import run_train

    c = registry.client()
    exp = c.get_experiment_by_name("it-train")
    before = len(c.search_runs([exp.experiment_id]))
    bad = write_config(tmp_path, model={"arch": "cnn2d", "params": {}},  # 33 features: not a square image
                       preprocessing={"features": "spectral", "bands": 7})
    with pytest.raises(ValueError, match="square image"):
        run_train(load_pipeline(bad))
    assert len(c.search_runs([exp.experiment_id])) == before  # refused before a run opens: nothing to clean up

    def fail(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the fit ran out of memory")

    monkeypatch.setattr(train, "fit_model", fail)  # a failure once the run is open
    with pytest.raises(RuntimeError, match="out of memory"):
        run_train(load_pipeline(write_config(tmp_path)))
    failed = c.search_runs([exp.experiment_id], "attributes.status = 'FAILED'")
    assert failed and "out of memory" in failed[0].data.tags["error"]
    assert [str(v.version) for v in registry.list_versions("it-vibration")] == ["1"]


def test_unreachable_tracking_server_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymlops import registry
    from tinymlops.errors import RegistryError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(RegistryError, match=r"http://127\.0\.0\.1:9 is not reachable"):
        registry.connect("http://127.0.0.1:9")
    registry.connect()  # restore the embedded store for other tests


def test_corrupt_model_files_give_clear_errors(tmp_path: Path) -> None:
    from tinymlops.errors import ModelFormatError
    from tinymlops.runtimes import open_runner

    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"\x00" * 64)
    for runtime in ("tflite", "tflm"):
        with pytest.raises(ModelFormatError, match="broken.tflite"):
            open_runner(bad, runtime)
    onnx_bad = tmp_path / "broken.onnx"
    onnx_bad.write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="broken.onnx"):
        open_runner(onnx_bad)


def test_train_no_prefect_registers_the_same_way_without_prefect(tmp_path: Path) -> None:
    """`tinymlops train --no-prefect` calls run_train in-process: a registered version, and Prefect never imported."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    cfg = write_config(tmp_path, mlflow={"experiment": "it-train-np", "registered_model": "it-vibration-np"})
    code = ("import sys\nfrom cli import main\nsys.argv = ['tinymlops', *sys.argv[1:]]\ntry:\n    main()\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "assert 'prefect' not in sys.modules, 'prefect imported'\n")
    env = {**os.environ, "TINYMLOPS_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run([sys.executable, "-c", code, "train", "-c", str(cfg), "--no-prefect", "--json"], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["model_uri"] == "models:/it-vibration-np/1" and out["experiment"] == "it-train-np"
    assert 0.5 < out["metrics"]["test_accuracy"] <= 1.0 and out["run_id"]
