"""Compress area without TensorFlow: variant config errors, CLI bad input, artifact measurements on ONNX."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from tinymlops.errors import ConfigError

BASE: dict[str, Any] = {
    "kind": "pipeline", "project": "p", "mlflow": {"experiment": "e", "registered_model": "m"},
    "dataset": {"name": "digits"}, "model": {"arch": "mlp"},
}


def write(tmp_path: Path, variants: list[dict[str, Any]]) -> Path:
    p = tmp_path / "pipeline.yaml"
    p.write_text(yaml.safe_dump({**BASE, "compress": {"variants": variants}}))
    return p


def test_every_technique_validates_with_its_parameters(tmp_path: Path) -> None:
    from tinymlops.config import load_pipeline

    cfg = load_pipeline(write(tmp_path, [
        {"technique": t} for t in ("ptq-int8", "ptq-dynamic", "fp16", "prune", "cluster", "qat-int8",
                                   "prune-cluster-qat", "onnx-int8", "onnx-fp32")]))
    specs = {s.technique: s for s in cfg.compress.variants}
    assert specs["prune"].target_sparsity == 0.8 and specs["prune"].min_layer_weights == 256
    assert specs["cluster"].clusters == 16 and specs["qat-int8"].learning_rate is None


def test_unknown_technique_is_a_config_error_naming_it(tmp_path: Path) -> None:
    from tinymlops.config import load_pipeline

    with pytest.raises(ConfigError, match=r"compress\.variants\.0.*'distill'"):
        load_pipeline(write(tmp_path, [{"technique": "distill"}]))


@pytest.mark.parametrize(("variant", "key"), [
    ({"technique": "prune", "target_sparsity": 1.5}, r"compress\.variants\.0\.prune\.target_sparsity"),
    ({"technique": "cluster", "clusters": 1}, r"compress\.variants\.0\.cluster\.clusters"),
    ({"technique": "qat-int8", "epochs": 0}, r"compress\.variants\.0\.qat-int8\.epochs"),
    ({"technique": "ptq-int8", "sparsity": 0.5}, r"compress\.variants\.0\.ptq-int8\.sparsity: unknown key"),
])
def test_bad_parameter_is_a_config_error_naming_the_key(tmp_path: Path, variant: dict[str, Any], key: str) -> None:
    from tinymlops.config import load_pipeline

    with pytest.raises(ConfigError, match=key):
        load_pipeline(write(tmp_path, [variant]))


def test_repeated_variant_names_are_rejected(tmp_path: Path) -> None:
    from tinymlops.config import load_pipeline

    with pytest.raises(ConfigError, match="repeated"):
        load_pipeline(write(tmp_path, [{"technique": "ptq-int8"}, {"technique": "prune", "name": "ptq-int8"}]))


def test_cli_rejects_bad_input_with_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["compress", "-c", str(write(tmp_path, [{"technique": "distill"}])), "--version", "1"])
    assert res.exit_code == 2 and "distill" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["compress", "-c", str(write(tmp_path, [{"technique": "ptq-int8"}]))])
    assert res.exit_code == 2 and "--version" in res.output
    res = runner.invoke(app, ["compress", "-c", str(write(tmp_path, [])), "--version", "1"])
    assert res.exit_code == 2 and "nothing to build" in res.output


def test_cli_names_a_missing_model(tm_home: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["variants", "no-such-model", "--json"])
    assert res.exit_code == 1 and "'no-such-model' does not exist" in res.output
    res = runner.invoke(app, ["lineage", "no-such-model", "3"])
    assert res.exit_code == 1 and "no-such-model/3 does not exist" in res.output
    for cmd in ("compress", "variants", "lineage"):
        assert runner.invoke(app, [cmd, "--help"]).exit_code == 0


def _qdq_model(path: Path, w_q: np.ndarray, scales: np.ndarray) -> Path:
    """Write a one-layer ONNX classifier whose int8 weights are dequantised per output channel (QDQ)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_in, n_out = w_q.shape
    inits = [numpy_helper.from_array(w_q.astype(np.int8), "w_q"),
             numpy_helper.from_array(scales.astype(np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(n_out, np.int8), "w_zp")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=1),
             helper.make_node("MatMul", ["features", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_in])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, n_out])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_weight_stats_and_evaluation_read_the_artifact(tmp_path: Path) -> None:
    from tinymlops.compress.evaluate import evaluate_artifact, gzip_bytes, weight_stats

    w = np.array([[3, 0, -2], [0, 0, 5], [3, 0, 3], [1, 0, -2]])  # 5 of 12 zero
    path = _qdq_model(tmp_path / "m.onnx", w, np.array([0.1, 0.2, 0.3]))
    stats = weight_stats(path)
    assert stats["sparsity"] == pytest.approx(5 / 12) and stats["weight_count"] == 12
    assert stats["unique_values"] == {"w_q": 3}  # per output channel: [3,0,3,1] and [-2,5,3,-2] have 3
    assert gzip_bytes(path) == len(gzip.compress(path.read_bytes(), 9, mtime=0))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    logits = x @ (w * np.array([0.1, 0.2, 0.3]))
    top2 = np.sort(logits, axis=1)[:, -2:]
    x, logits = x[top2[:, 1] - top2[:, 0] > 1e-3][:40], logits[top2[:, 1] - top2[:, 0] > 1e-3][:40]  # no near-ties
    y = logits.argmax(axis=1)
    wrong = (y + 1) % 3
    float_probs = np.eye(3)[np.where(np.arange(40) < 30, y, wrong)]  # the "float model" agrees on 30 of 40
    fig = evaluate_artifact(path, x, y, 3, float_probs)
    assert fig["accuracy"] == 1.0 and fig["agreement_with_float"] == pytest.approx(0.75)
    assert fig["runtime"] == "onnxruntime" and fig["size_bytes"] == path.stat().st_size
    assert "tflm_tflite_agreement" not in fig


def test_compress_modules_import_without_tensorflow() -> None:
    mods = ["tinymlops.compress.stage", "tinymlops.compress.lineage", "tinymlops.compress.evaluate",
            "tinymlops.compress.techniques", "cli.compress"]
    code = (f"import sys\nfor m in {mods!r}:\n    __import__(m)\n"
            "print([h for h in ('tensorflow', 'tf_keras', 'tensorflow_model_optimization', 'prefect') "
            "if h in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stderr
