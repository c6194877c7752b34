"""Own models without TensorFlow: the model section's sources, builder look-up errors, file checks, the compression
matrix and `tinymlops import` usage errors (each a one-line message naming the key and what was expected)."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from tinymlops.compress.applicable import KERAS_TECHNIQUES, parent_kind, skip_reason
from tinymlops.config import ConfigError, PipelineConfig, load_pipeline
from tinymlops.importer import inspect_file
from tinymlops.models.config import ModelSection, file_kind
from tinymlops.models.own import load_builder, load_keras_file

runner = CliRunner()


def _pipeline(tmp: Path, model: dict[str, object], epochs: int = 2) -> Path:
    path = tmp / "pipeline.yaml"
    path.write_text(json.dumps({"kind": "pipeline", "project": "own", "dataset": {"name": "digits"},
                                "mlflow": {"experiment": "own", "registered_model": "own"},
                                "model": model, "train": {"epochs": epochs}}))
    return path


# --------------------------------------------------------------------------------------------------------------
# model: {arch | builder | file}
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "kind"), [
    ({"arch": "mlp", "params": {"hidden": [8]}}, "arch"),
    ({"builder": "my_models:build"}, "builder"),
    ({"builder": "pkg.sub.models:make_net"}, "builder"),
    ({"file": "net.keras"}, "keras"), ({"file": "net.H5"}, "keras"), ({"file": "exported_savedmodel"}, "keras"),
    ({"file": "m.tflite"}, "tflite"), ({"file": "sub/m.onnx"}, "onnx"),
])
def test_model_section_kinds(section: dict[str, object], kind: str):
    assert ModelSection.model_validate(section).kind == kind


@pytest.mark.parametrize(("section", "message"), [
    ({}, "give exactly one of arch (built-in), builder ('module:function') or file (a model file); got none"),
    ({"arch": "mlp", "builder": "m:f"}, "give exactly one of arch"),
    ({"builder": "m:f", "file": "x.onnx"}, "got builder, file"),
    ({"arch": "mymodels:tiny_net"}, "unknown arch 'mymodels:tiny_net'; expected one of"),
    ({"builder": "my_models.build"}, "builder 'my_models.build': expected 'module:function'"),
    ({"builder": "my-models:build"}, "expected 'module:function'"),
    ({"file": "model.pb"}, "unsupported model file extension '.pb' (model.pb); expected .keras, .h5, .hdf5, "
                           ".tflite, .onnx or a SavedModel directory"),
    ({"file": "m.onnx", "params": {"x": 1}}, "params apply to arch and builder, not to a model file"),
])
def test_model_section_errors_name_the_problem(tmp_path: Path, section: dict[str, object], message: str):
    with pytest.raises(ConfigError) as err:
        load_pipeline(_pipeline(tmp_path, section))
    text = str(err.value)
    assert f"{tmp_path / 'pipeline.yaml'}: model: " in text and message in text
    assert len(text.splitlines()) == 1


def test_epochs_zero_only_for_a_pretrained_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="train.epochs: 0 only evaluates a pre-trained model"):
        load_pipeline(_pipeline(tmp_path, {"arch": "mlp"}, epochs=0))
    with pytest.raises(ConfigError, match="train.epochs: 0 only evaluates"):
        load_pipeline(_pipeline(tmp_path, {"builder": "m:f"}, epochs=0))
    cfg = load_pipeline(_pipeline(tmp_path, {"file": "net.keras"}, epochs=0))
    assert cfg.train.epochs == 0 and cfg.resolve(str(cfg.model.file)) == tmp_path / "net.keras"


def test_arch_configs_keep_their_meaning():
    """The demos' arch configs validate as before (their figures depend on it)."""
    for name in ("pipeline.yaml", "digits.yaml"):
        cfg = load_pipeline(Path(__file__).resolve().parents[2] / "configs" / name)
        assert cfg.model.kind == "arch" and cfg.model.arch in ("mlp", "cnn2d") and cfg.model.label == cfg.model.arch


def test_file_kind_rejects_unknown_extensions():
    with pytest.raises(ValueError, match=r"unsupported model file extension '\.pt'"):
        file_kind("weights.pt")


# --------------------------------------------------------------------------------------------------------------
# builder look-up (no TensorFlow: the project module is plain Python here)
# --------------------------------------------------------------------------------------------------------------


def test_builder_module_not_found(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        load_builder("no_such_models_mod:build", tmp_path)
    assert str(err.value) == (f"model.builder: module 'no_such_models_mod' not found (looked in {tmp_path} and the "
                              "Python path)")


def test_builder_function_not_found_lists_what_the_module_defines(tmp_path: Path):
    (tmp_path / "fn_missing_models.py").write_text("def make(a, b):\n    return None\n\ndef _private():\n    pass\n")
    with pytest.raises(ConfigError) as err:
        load_builder("fn_missing_models:build", tmp_path)
    assert str(err.value) == (f"model.builder: fn_missing_models ({tmp_path / 'fn_missing_models.py'}) has no "
                              "function 'build'; it defines: make")


def test_builder_module_failing_import_names_the_cause(tmp_path: Path):
    (tmp_path / "dep_missing_models.py").write_text("import not_installed_dependency_xyz\n")
    with pytest.raises(ConfigError) as err:
        load_builder("dep_missing_models:build", tmp_path)
    assert str(err.value) == ("model.builder: importing dep_missing_models failed: ModuleNotFoundError: No module "
                              "named 'not_installed_dependency_xyz'")
    (tmp_path / "syntax_models.py").write_text("def build(:\n")
    with pytest.raises(ConfigError, match=r"^model.builder: importing syntax_models failed: SyntaxError"):
        load_builder("syntax_models:build", tmp_path)


def test_builder_of_the_configs_own_project_wins_over_a_same_named_module(tmp_path: Path):
    """Two projects with a `models_same.py` each: every config gets its own (no stale module from sys.modules)."""
    for name, value in (("a", 1), ("b", 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "models_same.py").write_text(f"def build(shape, n):\n    return {value}\n")
    try:
        assert load_builder("models_same:build", tmp_path / "a")((1,), 2) == 1
        assert load_builder("models_same:build", tmp_path / "b")((1,), 2) == 2
    finally:
        sys.modules.pop("models_same", None)
        for d in ("a", "b"):
            if str(tmp_path / d) in sys.path:
                sys.path.remove(str(tmp_path / d))


# --------------------------------------------------------------------------------------------------------------
# model files
# --------------------------------------------------------------------------------------------------------------


def test_keras_file_not_found_and_not_a_savedmodel(tmp_path: Path):
    with pytest.raises(ConfigError, match=f"^model.file: {tmp_path / 'net.keras'}: file not found$"):
        load_keras_file(tmp_path / "net.keras")
    (tmp_path / "exported").mkdir()
    with pytest.raises(ConfigError, match="a directory but not a SavedModel"):
        load_keras_file(tmp_path / "exported")


def test_keras3_archive_is_refused_with_the_way_out(tmp_path: Path):
    path = tmp_path / "k3.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
    with pytest.raises(ConfigError) as err:
        load_keras_file(path)
    assert str(err.value).startswith(f"model.file: {path} was saved by Keras 3.15.1; tinymlops fine-tunes Keras 2")
    assert "import that" in str(err.value)


@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_unreadable_model_file(tmp_path: Path, suffix: str):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00not a model at all" * 10)
    with pytest.raises(ConfigError) as err:
        inspect_file(path)
    text = str(err.value)
    assert text.startswith(f"model.file: {path}: not a readable {suffix[1:]} model (") and len(text.splitlines()) == 1


def test_import_file_checks(tmp_path: Path):
    with pytest.raises(ConfigError, match=f"^model.file: {tmp_path / 'gone.onnx'}: file not found$"):
        inspect_file(tmp_path / "gone.onnx")
    with pytest.raises(ConfigError, match=r"unsupported model file extension '\.bin'"):
        inspect_file(tmp_path / "w.bin")
    with pytest.raises(ConfigError, match="import takes .tflite or .onnx files"):
        inspect_file(tmp_path / "net.keras")


# --------------------------------------------------------------------------------------------------------------
# compression matrix
# --------------------------------------------------------------------------------------------------------------


def test_compression_matrix():
    techniques = [*KERAS_TECHNIQUES, "onnx-int8", "onnx-fp32"]
    assert parent_kind("float32", "onnx") == "keras"
    assert all(skip_reason(t, "keras") is None for t in techniques)
    # ONNX float: only onnx-int8 applies; a quantised ONNX model gets nothing
    assert [t for t in techniques if skip_reason(t, parent_kind("imported", "onnx")) is None] == ["onnx-int8"]
    assert "quantised already" in str(skip_reason("onnx-int8", "onnx", quantized=True))
    assert "needs the Keras model" in str(skip_reason("qat-int8", "onnx"))
    # TFLite: none, each with its reason on one line
    reasons = [skip_reason(t, parent_kind("imported", "tflite")) for t in techniques]
    assert all(r and r.startswith(f"{t} skipped: the parent is an imported TFLite model") and "\n" not in r
               for t, r in zip(techniques, reasons, strict=True))


# --------------------------------------------------------------------------------------------------------------
# tinymlops import: usage errors before anything is opened
# --------------------------------------------------------------------------------------------------------------


def test_import_cli_errors_are_one_line_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path / "home"))
    cfg = _pipeline(tmp_path, {"arch": "mlp"})
    (tmp_path / "w.pt").write_bytes(b"x")
    res = runner.invoke(app, ["import", str(tmp_path / "w.pt"), "--name", "m", "--config", str(cfg)])
    assert res.exit_code == 2, res.output
    assert "FILE: unsupported model file extension '.pt'" in res.output and "Traceback" not in res.output
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    res = runner.invoke(app, ["import", str(bad), "--name", "m", "--config", str(cfg)])
    assert res.exit_code == 2 and f"FILE: {bad}: not a readable onnx model" in res.output, res.output
    res = runner.invoke(app, ["import", str(bad), "--config", str(cfg)])
    assert res.exit_code == 2 and "--name" in res.output
    assert not (tmp_path / "home" / "mlflow.db").exists()  # nothing was opened or registered


def test_import_help_teaches():
    res = runner.invoke(app, ["import", "--help"])
    assert res.exit_code == 0
    for words in ("variant `imported`", "onnx-int8", "--name", "--config", "SavedModel"):
        assert words in res.output


def test_pipeline_config_in_code_resolves_against_the_working_directory():
    cfg = PipelineConfig.model_validate({"project": "p", "dataset": {"name": "digits"},
                                         "mlflow": {"experiment": "e", "registered_model": "m"},
                                         "model": {"file": "m.onnx"}})
    assert cfg.resolve("m.onnx") == Path.cwd() / "m.onnx"


def test_validate_finds_a_missing_builder_module_or_model_file_in_a_second(tmp_path: Path):
    """`tinymlops validate` (and `run` before Prefect starts) checks what model: points at, without running it."""
    cfg = _pipeline(tmp_path, {"builder": "absent_models_xyz:build"})
    res = runner.invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 2
    assert (f"{cfg}: model.builder: module 'absent_models_xyz' not found (looked in {tmp_path} and the Python "
            "path)") in res.output.replace("\n", "")
    (tmp_path / "absent_models_xyz.py").write_text("raise SystemExit('validate must not run project code')\n")
    assert runner.invoke(app, ["validate", str(cfg)]).exit_code == 0
    cfg = _pipeline(tmp_path, {"file": "models/net.onnx"})
    res = runner.invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 2 and f"model.file: {tmp_path / 'models' / 'net.onnx'}: file not found" in res.output
