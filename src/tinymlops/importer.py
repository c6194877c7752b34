"""Import a finished ``.tflite`` or ``.onnx`` model: evaluate it on the dataset's test split and register it as is.

``run_import`` is what ``model: {file: x.tflite | x.onnx}`` makes the train stage do and what ``tinymlops import``
calls: no training; the file becomes a registered version (variant ``imported``, technique ``none``, its sha256 and
source path as tags) with the same package and manifest as a trained version, so profiling, compression (what the
format allows) and rollout packaging treat it like any other. Nothing is registered when the file cannot be read
or does not fit the data (a one-line ConfigError before any run is opened).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops import registry
from tinymlops.config import PipelineConfig
from tinymlops.errors import ConfigError, ModelFormatError, RuntimeCrash
from tinymlops.models.config import file_kind
from tinymlops.runtimes import open_runner

IMPORTED_VARIANT = "imported"
#: ONNX operators that mean a model is already quantised (onnx-int8 has nothing left to do)
ONNX_QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                                "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QLinearAdd"})


@dataclass(frozen=True)
class ModelFile:
    """What an imported model file is: format, runtime input shape and dtype, whether it is quantised."""

    path: Path
    fmt: str
    input_shape: tuple[int, ...]
    input_dtype: str
    quantized: bool

    @property
    def full_int8(self) -> bool:
        """True for an int8-in/int8-out TFLite model: what microcontroller runtimes (TFLite Micro) run."""
        return self.fmt == "tflite" and self.input_dtype == "int8"


def onnx_quantized(path: Path) -> bool:
    """Return True if an ONNX graph already holds quantisation operators."""
    import onnx

    return any(n.op_type in ONNX_QUANTIZED_OPS for n in onnx.load(str(path)).graph.node)


def inspect_file(path: Path, key: str = "model.file") -> ModelFile:
    """Open a model file in its runtime and describe it (ConfigError naming ``key`` if it cannot be used)."""
    try:
        kind = file_kind(str(path))
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if kind not in ("tflite", "onnx"):
        raise ConfigError(f"{key}: {path.name} is a Keras model; import takes .tflite or .onnx files (a Keras model "
                          "is fine-tuned by the train stage: model: {file: ...})")
    if not path.is_file():
        raise ConfigError(f"{key}: {path}: file not found")
    try:
        with open_runner(path) as runner:
            shape, dtype = tuple(int(d) for d in getattr(runner, "input_shape", ())), runner.input_dtype
    except (ModelFormatError, RuntimeCrash) as exc:
        raise ConfigError(f"{key}: {path}: not a readable {kind} model ({str(exc).removeprefix(f'{path}: ')})"
                          ) from None
    quantized = dtype != "float32" if kind == "tflite" else onnx_quantized(path)
    return ModelFile(path, kind, shape, dtype, quantized)


def check_fits(mf: ModelFile, n_features: int, n_classes: int, sample: np.ndarray, key: str) -> None:
    """Check that the model takes the data's features and returns one value per class (one-line ConfigError)."""
    wanted = int(np.prod(mf.input_shape[1:])) if len(mf.input_shape) > 1 else int(mf.input_shape[0])
    if wanted != n_features:
        raise ConfigError(f"{key}: {mf.path.name} takes inputs of shape {mf.input_shape} ({wanted} values per "
                          f"sample) but the data's features (after pre-processing) have {n_features} values")
    with open_runner(mf.path) as runner:
        out = runner.predict(sample[:1])
    if out.shape[1] != n_classes:
        raise ConfigError(f"{key}: {mf.path.name} outputs {out.shape[1]} values per sample but the dataset has "
                          f"{n_classes} classes")


def _tflm_figures(mf: ModelFile, x_test: np.ndarray, y_test: np.ndarray, n_classes: int, tflite_out: np.ndarray,
                  say: Callable[[str], None]) -> dict[str, float]:
    """Evaluate a full-int8 TFLite model in TFLite Micro too; a model TFLM cannot run gets one line, not a failure."""
    from tinymlops.metrics import agreement, classification_metrics

    if not mf.full_int8:
        return {}
    try:
        with open_runner(mf.path, "tflm") as tflm:
            out = tflm.predict(x_test)
            arena = float(getattr(tflm, "arena_bytes", 0))
    except (ModelFormatError, RuntimeCrash) as exc:
        say(f"TFLite Micro cannot run {mf.path.name}: {str(exc).splitlines()[0][:300]} (microcontroller targets "
            "will not fit it; Linux-class targets are unaffected)")
        return {}
    return {"tflm_accuracy": classification_metrics(y_test, out, n_classes)["accuracy"],
            "tflm_tflite_agreement": agreement(out, tflite_out), "tflm_arena_bytes": arena}


def run_import(cfg: PipelineConfig, file: str | Path | None = None, parent_run_id: str | None = None,
               progress: Callable[[str], None] | None = None, key: str = "model.file") -> Any:
    """Evaluate a .tflite/.onnx file on the config's test split and register it as a version (variant imported).

    Args:
        file: the model file (default: the config's ``model.file``), relative to the config's directory.
        key: what to name in error messages (``model.file`` or the CLI's ``FILE``).
    Returns:
        a :class:`tinymlops.train.TrainResult` (metrics of the file on the test split; no training).
    """
    from tinymlops.compress.evaluate import gzip_bytes, weight_stats
    from tinymlops.compress.export import sha256_file, write_package
    from tinymlops.monitor.reference import compute_reference
    from tinymlops.train import (
        TrainResult,
        _git_commit,
        _log_inputs,
        base_manifest,
        log_evaluation,
        log_reference_sample,
        prepare,
    )

    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    path = cfg.resolve(str(file if file is not None else cfg.model.file)).resolve()
    mf = inspect_file(path, key)
    registry.connect(cfg.mlflow.tracking_uri)
    say(f"preparing dataset {cfg.dataset.name!r}")
    prep = prepare(cfg)
    x_train, x_test, y_test = prep.features("train"), prep.features("test"), prep.splits["test"].y
    n_classes = len(prep.class_names)
    check_fits(mf, int(np.prod(x_test.shape[1:])), n_classes, x_test, key)
    digests = {k: v.digest() for k, v in prep.splits.items()}
    sha = sha256_file(path)
    tags = {"tinymlops.stage": "import", "task": cfg.project, "config_hash": cfg.config_hash(),
            "git_commit": _git_commit(), "dataset_digest": digests["train"], "model_source": f"file:{mf.fmt}",
            "source_path": str(path), "source_sha256": sha}
    with registry.run(cfg.mlflow.experiment, f"import {path.name}", parent_run_id, tags) as r:
        _log_inputs(r.run_id, cfg, prep)
        say(f"evaluating {path.name} on {len(y_test)} test samples in {mf.fmt} runtime")
        with open_runner(path) as runner:
            probs = runner.predict(x_test)
        metrics = log_evaluation(r.run_id, cfg, prep, probs, 0.0, 0)
        fig: dict[str, Any] = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                               "size_bytes": path.stat().st_size, "gzip_bytes": gzip_bytes(path),
                               "runtime": runner.runtime, **weight_stats(path),
                               **_tflm_figures(mf, x_test, y_test, n_classes, probs, say)}
        measured = {k: float(v) for k, v in fig.items() if k in ("accuracy", "macro_f1", "size_bytes", "gzip_bytes",
                    "sparsity", "tflm_accuracy", "tflm_tflite_agreement", "tflm_arena_bytes")}
        registry.log_metrics(r.run_id, {**{k: v for k, v in measured.items() if k not in metrics},
                                        f"size_bytes_{mf.fmt}": fig["size_bytes"]})
        scores = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
        ref = compute_reference(x_train, runner_outputs(path, x_train), prep.preprocessing.feature_names,
                                prep.class_names, metrics=scores)
        with tempfile.TemporaryDirectory(prefix="tinymlops-import-") as tmp:
            tmpd = Path(tmp)
            manifest = base_manifest(cfg, prep, IMPORTED_VARIANT, mf.fmt, ref.model_dump(), measured, n_classes)
            manifest.update({"technique": "none", "source": {"path": str(path), "sha256": sha}})
            write_package(tmpd / "package", path, manifest)
            registry.log_artifact(r.run_id, tmpd / "package", registry.PACKAGE_DIR)
            log_reference_sample(r.run_id, x_train, prep, tmpd)
            if mf.fmt == "onnx":
                registry.log_onnx_model(r.run_id, path)
        say("registering the imported model version")
        version = registry.register_version(
            cfg.mlflow.registered_model, r.run_id,
            {"variant": IMPORTED_VARIANT, "technique": "none", "format": mf.fmt, "task": cfg.project,
             "train_run_id": r.run_id, "dataset_digest": digests["train"], "config_hash": tags["config_hash"],
             "git_commit": tags["git_commit"], "accuracy": f"{metrics['accuracy']:.4f}",
             "macro_f1": f"{metrics['macro_f1']:.4f}", "size_bytes": fig["size_bytes"],
             "gzip_bytes": fig["gzip_bytes"], "sparsity": f"{fig['sparsity']:.4f}", "quantized": str(mf.quantized),
             "model_source": tags["model_source"], "source_path": str(path), "source_sha256": sha},
            _description(cfg, mf, sha, fig, len(prep.splits["train"].y), len(y_test), digests["train"], r.run_id))
        registry.set_tags(r.run_id, {"registered_version": version})
    say(f"registered {cfg.mlflow.registered_model}/{version} (imported {path.name}): accuracy "
        f"{metrics['accuracy']:.2%}, {fig['size_bytes']} bytes")
    return TrainResult(r.run_id, cfg.mlflow.registered_model, version, metrics, digests, time.perf_counter() - t0,
                       cfg.mlflow.experiment)


def runner_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """Return a model file's outputs on rows, in its runtime."""
    with open_runner(path) as runner:
        return runner.predict(x)


def _description(cfg: PipelineConfig, mf: ModelFile, sha: str, fig: dict[str, Any], n_train: int, n_test: int,
                 digest: str, run_id: str) -> str:
    """Return the version's markdown description (the MLflow UI renders it on the version page)."""
    mcu = (f"- **TFLite Micro**: accuracy {fig['tflm_accuracy']:.2%}, arena {int(fig['tflm_arena_bytes'])} bytes\n"
           if "tflm_accuracy" in fig else "")
    return (f"**{cfg.project}: imported {mf.fmt}** `{mf.path.name}`{' (quantised)' if mf.quantized else ''}, "
            f"{fig['size_bytes']} bytes, registered as is (no training).\n\n"
            f"- **source**: `{mf.path}`, sha256 `{sha}`\n"
            f"- **dataset**: {cfg.dataset.name}, {n_train} train / {n_test} test samples, digest `{digest}`\n"
            f"- **test split**, evaluated in {fig['runtime']}: accuracy {fig['accuracy']:.2%}, "
            f"macro-F1 {fig['macro_f1']:.3f}\n{mcu}"
            f"- **made by**: import run `{run_id}`\n")
