"""Own models end to end on the bundled digits data: a project builder and a pre-trained .keras file train and
register; an imported .tflite (int8) and .onnx are evaluated, registered, compressed as far as their format allows,
profiled and packaged for a Linux-class target and a microcontroller (real MLflow store, TFLite, TFLite Micro,
onnxruntime, fleet DB). Builder errors that need a real Keras model are checked here too (one line each)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

BUILDER = '''
import tensorflow as tf
import tf_keras as keras


def build(input_shape, n_classes, width=32):
    """A compiled model: the train stage keeps its optimizer, loss and metric."""
    m = keras.Sequential([keras.Input(input_shape), keras.layers.Dense(width, activation="relu"),
                          keras.layers.Dense(n_classes, activation="softmax")])
    m.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
              metrics=[keras.metrics.SparseCategoricalAccuracy(name="own_acc")])
    return m


def wrong_outputs(input_shape, n_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Dense(n_classes + 1, activation="softmax")])


def wrong_inputs(input_shape, n_classes):
    return keras.Sequential([keras.Input((input_shape[0] + 3,)), keras.layers.Dense(n_classes)])


def not_a_model(input_shape, n_classes):
    return {"layers": 2}


def raises(input_shape, n_classes):
    raise RuntimeError("no GPU here")


def unusual(input_shape, n_classes):
    """Conv1D (which TFMOT's QAT cannot quantise and pruning here leaves dense) and a reversal TFLM lacks."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Reshape((16, input_shape[0] // 16))(inputs)
    x = keras.layers.Conv1D(16, 3, activation="relu", name="c1d")(x)
    x = keras.layers.Lambda(lambda t: tf.reverse(t, [1]), name="flip")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x))
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project directory with its own MLflow store, a builder module and a config writer."""
    root = tmp_path_factory.mktemp("own-project")
    (root / "own_models_it.py").write_text(BUILDER)
    old = os.environ.get("TINYMLOPS_HOME")
    os.environ["TINYMLOPS_HOME"] = str(root / ".tinymlops")
    yield root
    if old is None:
        os.environ.pop("TINYMLOPS_HOME", None)
    else:
        os.environ["TINYMLOPS_HOME"] = old


def _config(root: Path, name: str, model: dict[str, Any], epochs: int = 2,
            variants: list[dict[str, Any]] | None = None) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "kind": "pipeline", "project": "own", "dataset": {"name": "digits", "seed": 1},
        "mlflow": {"experiment": "own-models", "registered_model": name}, "model": model,
        "train": {"epochs": epochs, "batch_size": 64, "early_stopping_patience": 0},
        "compress": {"variants": variants or []}}))
    return path


@pytest.fixture(scope="module")
def pretrained(project: Path) -> dict[str, Any]:
    """A tf_keras model trained here and saved as .keras; its int8 .tflite and float .onnx exports."""
    from tinymlops.compress.export import to_onnx
    from tinymlops.compress.techniques import convert_int8, representative_rows
    from tinymlops.config import load_pipeline
    from tinymlops.tf import keras
    from tinymlops.train import prepare

    prep = prepare(load_pipeline(_config(project, "prep", {"arch": "mlp"})))
    x, y = prep.features("train"), prep.splits["train"].y
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Dense(24, activation="relu"),
                              keras.layers.Dense(len(prep.class_names), activation="softmax")])
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="pre_acc")])
    model.fit(x, y, epochs=4, batch_size=64, verbose=0)
    model.save(project / "pretrained.keras")
    (project / "int8.tflite").write_bytes(convert_int8(model, representative_rows(x, 100)))
    to_onnx(model, project / "float.onnx")
    x_test, y_test = prep.features("test"), prep.splits["test"].y
    return {"prep": prep, "keras_test_accuracy": float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())}


def test_builder_model_trains_with_its_own_compile_settings_and_registers(project: Path):
    from tinymlops import registry
    from tinymlops.train import run_train

    res = run_train(_config(project, "own-builder", {"builder": "own_models_it:build", "params": {"width": 24}}))
    mv = registry.get_version("own-builder", res.version)
    assert mv.tags["variant"] == "float32" and mv.tags["model_source"] == "builder:own_models_it:build"
    run = registry.get_run(res.run_id)
    assert "val_own_acc" in run.metrics  # the builder's compiled metric: its compile() was kept
    assert run.metrics["epochs_run"] == 2 and res.metrics["test_accuracy"] > 0.6
    assert run.params["model.params.width"] == "24"


@pytest.mark.parametrize(("fn", "message"), [
    ("wrong_outputs", "returned a model that outputs shape (11,) per sample but the dataset has 10 classes"),
    ("wrong_inputs", "returned a model that takes inputs of shape (67,) but the data's features (after "
                     "pre-processing) have shape (64,)"),
    ("not_a_model", "returned dict, not a Keras model"),
    ("raises", "raised RuntimeError: no GPU here"),
])
def test_builder_errors_are_one_line_and_open_no_run(project: Path, fn: str, message: str):
    from tinymlops import registry
    from tinymlops.errors import ConfigError
    from tinymlops.train import run_train

    with pytest.raises(ConfigError) as err:
        run_train(_config(project, f"bad-{fn.replace('_', '-')}", {"builder": f"own_models_it:{fn}"}))
    text = str(err.value)
    assert text.startswith(f"model.builder: own_models_it:{fn}(input_shape=(64,), n_classes=10, **params) ")
    assert message in text and len(text.splitlines()) == 1
    exp = registry.client().get_experiment_by_name("own-models")
    runs = registry.client().search_runs([exp.experiment_id], f"tags.mlflow.runName = 'train own_models_it:{fn}'")
    assert runs == []


def test_pretrained_keras_file_fine_tunes_and_registers(project: Path, pretrained: dict[str, Any]):
    from tinymlops import registry
    from tinymlops.train import run_train

    res = run_train(_config(project, "own-keras", {"file": "pretrained.keras"}, epochs=1))
    mv = registry.get_version("own-keras", res.version)
    sha = hashlib.sha256((project / "pretrained.keras").read_bytes()).hexdigest()
    assert mv.tags["variant"] == "float32" and mv.tags["source_sha256"] == sha
    assert mv.tags["source_path"] == str(project / "pretrained.keras")
    run = registry.get_run(res.run_id)
    assert run.metrics["epochs_run"] == 1 and "val_pre_acc" in run.metrics  # fine-tuned with its own compile
    assert res.metrics["test_accuracy"] > 0.8


def test_pretrained_keras_file_evaluates_as_is_with_zero_epochs(project: Path, pretrained: dict[str, Any]):
    from tinymlops.train import run_train

    res = run_train(_config(project, "own-keras-eval", {"file": "pretrained.keras"}, epochs=0))
    assert res.metrics["epochs_run"] == 0
    assert res.metrics["test_accuracy"] == pytest.approx(pretrained["keras_test_accuracy"], abs=1e-9)


def test_imported_tflite_and_onnx_register_compress_profile_and_package(project: Path, pretrained: dict[str, Any]):
    from cli import app
    from tinymlops import registry
    from tinymlops.compress.stage import run_compress
    from tinymlops.config import load_pipeline
    from tinymlops.errors import UsageError
    from tinymlops.fleet import packages
    from tinymlops.fleet.store import open_store
    from tinymlops.importer import run_import
    from tinymlops.profile.matrix import run_profile
    from tinymlops.rollout.publish import publish_package

    variants = [{"technique": "ptq-int8"}, {"technique": "onnx-int8", "calibration_samples": 50}]
    cfg_path = _config(project, "own-import", {"file": "int8.tflite"}, variants=variants)
    tfl = run_import(load_pipeline(cfg_path))
    # the same from the command line: tinymlops import FILE --name MODEL --config C --json
    out = CliRunner().invoke(app, ["import", str(project / "float.onnx"), "--name", "own-import", "--config",
                                   str(cfg_path), "--json"])
    assert out.exit_code == 0, out.output
    onx = json.loads(out.stdout)
    acc = pretrained["keras_test_accuracy"]
    for version, fmt, file in ((tfl.version, "tflite", "int8.tflite"), (onx["version"], "onnx", "float.onnx")):
        mv = registry.get_version("own-import", version)
        assert mv.tags["variant"] == "imported" and mv.tags["technique"] == "none" and mv.tags["format"] == fmt
        assert mv.tags["source_sha256"] == hashlib.sha256((project / file).read_bytes()).hexdigest()
        manifest = registry.read_manifest(registry.download_package("own-import", version))
        assert manifest["file"] == f"model.{fmt}" and manifest["class_names"] == [str(i) for i in range(10)]
    assert onx["metrics"]["test_accuracy"] == pytest.approx(acc, abs=0.01)  # ONNX float = the Keras model
    assert abs(tfl.metrics["test_accuracy"] - acc) < 0.05  # int8: close to it
    tfl_run = registry.get_run(tfl.run_id)
    assert tfl_run.metrics["tflm_tflite_agreement"] > 0.95  # int8 TFLite also evaluated in TFLite Micro

    # compression: TFLite gets nothing (every technique says why); ONNX float gets onnx-int8 only
    c_tfl = run_compress(cfg_path, tfl.version)
    assert c_tfl.registered == 0 and c_tfl.failed == 0 and c_tfl.skipped == 2
    c_onnx = run_compress(cfg_path, onx["version"])
    by_name = {v["variant"]: v for v in c_onnx.variants}
    assert by_name["onnx-int8"]["status"] == "registered" and by_name["onnx-int8"]["format"] == "onnx"
    assert by_name["ptq-int8"]["status"] == "skipped" and "needs the Keras model" in by_name["ptq-int8"]["reason"]
    tags = registry.get_run(c_onnx.ref.compress_run_id).tags
    assert tags["skipped.ptq-int8"] == by_name["ptq-int8"]["reason"] and "skipped.onnx-int8" not in tags

    # profile: a Linux-class board per format and a microcontroller
    prof = run_profile("own-import", targets=["raspberry-pi-4", "raspberry-pi-zero-2-w", "nucleo-l4r5zi"])
    assert prof.targets["nucleo-l4r5zi"]["recommended_version"] == tfl.version  # the int8 TFLite fits the MCU
    assert prof.targets["raspberry-pi-4"]["recommended_version"] == tfl.version
    assert prof.targets["raspberry-pi-zero-2-w"]["recommended_version"] in (onx["version"],
                                                                            by_name["onnx-int8"]["version"])

    # packaging: the rollout's publish path, signed packages in a fleet DB
    st = open_store(f"sqlite:///{project / 'fleet.db'}")
    for version, target in ((tfl.version, "nucleo-l4r5zi"), (tfl.version, "raspberry-pi-4"),
                            (onx["version"], "raspberry-pi-zero-2-w")):
        pid = publish_package(st, "own-import", version, target)
        bundle = packages.build_package("own-import", version, target)
        assert bundle.manifest["variant"] == "imported" and bundle.manifest["source"]["train_run_id"]
        assert pid
    with pytest.raises(UsageError, match=f"own-import v{onx['version']} is a onnx model; target nucleo-l4r5zi runs"):
        packages.build_package("own-import", onx["version"], "nucleo-l4r5zi")


def test_imported_file_that_does_not_fit_the_data(project: Path, pretrained: dict[str, Any]):
    from tinymlops.compress.export import to_onnx
    from tinymlops.config import load_pipeline
    from tinymlops.errors import ConfigError
    from tinymlops.importer import run_import
    from tinymlops.tf import keras

    m = keras.Sequential([keras.Input((10,)), keras.layers.Dense(3, activation="softmax")])
    to_onnx(m, project / "other.onnx")
    with pytest.raises(ConfigError) as err:
        run_import(load_pipeline(_config(project, "own-misfit", {"file": "other.onnx"})))
    assert str(err.value) == ("model.file: other.onnx takes inputs of shape (1, 10) (10 values per sample) but the "
                              "data's features (after pre-processing) have 64 values")
    assert np.prod(pretrained["prep"].features("test").shape[1:]) == 64


def test_layers_a_technique_cannot_handle_get_one_line_and_the_others_register(project: Path):
    from tinymlops import registry
    from tinymlops.compress.stage import run_compress
    from tinymlops.train import run_train

    variants = [{"technique": "ptq-int8", "representative_samples": 50},
                {"technique": "qat-int8", "epochs": 1, "representative_samples": 50},
                {"technique": "prune", "epochs": 1, "target_sparsity": 0.5, "min_layer_weights": 100,
                 "representative_samples": 50}]
    cfg = _config(project, "own-unusual", {"builder": "own_models_it:unusual"}, epochs=1, variants=variants)
    res = run_compress(cfg, run_train(cfg).version)
    by_name = {v["variant"]: v for v in res.variants}
    assert by_name["qat-int8"]["status"] == "failed"
    assert by_name["qat-int8"]["error"] == ("qat-int8: layer 'c1d' (Conv1D) is not supported by quantisation-aware "
                                            "training (TFMOT)")
    tflm_line = ("op REVERSE_V2 (layer 'flip') is not supported by TFLite Micro; the variant is registered for "
                 "Linux-class runtimes and will not fit microcontrollers")
    assert by_name["ptq-int8"]["status"] == "registered" and by_name["ptq-int8"]["notes"] == [f"ptq-int8: {tflm_line}"]
    assert "tflm_tflite_agreement" not in by_name["ptq-int8"]  # not run in TFLite Micro, which would fail on it
    assert by_name["prune"]["status"] == "registered" and by_name["prune"]["notes"] == [
        "prune: layer 'c1d' (Conv1D, 208 weights) is left dense: pruning handles Dense and Conv2D layers",
        f"prune: {tflm_line}"]
    assert registry.get_run(by_name["prune"]["run_id"]).tags["note.0"].startswith("prune: layer 'c1d'")
    assert registry.get_run(res.ref.compress_run_id).tags["failed_variants"] == "qat-int8"
