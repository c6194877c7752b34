"""The train stage: dataset → pre-processing → Keras model → fit → evaluate → exports → registered version.

``run_train`` is the stage's one entry point (``flows/train.py`` wraps it; ``tinymlops train --no-prefect`` calls
it). ``prepare`` is NumPy only; ``fit_model`` and ``run_train`` cross the TensorFlow boundary (imported lazily).
Everything is recorded in MLflow through :mod:`tinymlops.registry`; a failure marks the run FAILED and registers
nothing (registration is the last step).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tinymlops import registry
from tinymlops.config import PipelineConfig, load_pipeline
from tinymlops.data import Dataset, load_splits, shift_augment
from tinymlops.errors import RegistryError, UsageError
from tinymlops.ip import watermark
from tinymlops.metrics import agreement, classification_metrics, confusion
from tinymlops.preprocessing import FittedPreprocessing, fit, transform

REFERENCE_SAMPLE_ROWS = 2000
#: variants a pipeline starts compressing from: a trained float model or an imported .tflite/.onnx file
PARENT_VARIANTS = ("float32", "imported")
#: exported artifacts must agree with the Keras model on at least this fraction of the test split
EXPORT_AGREEMENT_MIN = 0.99


@dataclass(frozen=True)
class Prepared:
    """Splits of raw data and the pre-processing fitted on the training split."""

    splits: dict[str, Dataset]
    preprocessing: FittedPreprocessing

    def features(self, name: str) -> np.ndarray:
        return transform(self.preprocessing, self.splits[name].X)

    @property
    def class_names(self) -> list[str]:
        return self.splits["train"].class_names


class TrainExtra(Protocol):
    """Training data beyond the configured dataset: merged into the splits, recorded as run inputs."""

    def extend(self, cfg: PipelineConfig, prep: Prepared) -> Prepared: ...

    def log_inputs(self, run_id: str) -> None: ...


@dataclass(frozen=True)
class TrainResult:
    """What the train stage hands on: identifiers of the registered float version and its figures."""

    run_id: str
    model_name: str
    version: str
    metrics: dict[str, float]
    dataset_digests: dict[str, str]
    duration_s: float
    experiment: str = ""

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (flow results, ``--json``)."""
        return {**asdict(self), "model_uri": self.model_uri}


def prepare(cfg: PipelineConfig) -> Prepared:
    """Load the dataset, split it with the configured strategy and fit the pre-processing on the training split."""
    splits = load_splits(cfg.dataset, cfg.config_dir)
    spec = fit(cfg.preprocessing, splits["train"].X, splits["train"].sample_rate_hz, project_dir=cfg.config_dir)
    return Prepared(splits, spec)


@dataclass
class Ready:
    """A compiled Keras model and the (augmented) arrays it is fitted on."""

    model: Any
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def build_model(cfg: PipelineConfig, prep: Prepared) -> Ready:
    """Seed TensorFlow, build (or load) the configured Keras model for the data and compile it.

    A model the builder or file brings compiled keeps its optimizer and loss. Raises ConfigError (one line naming
    ``model.*``) when the model cannot be made or does not fit the data, before anything is logged.
    """
    from tinymlops.models.own import make_model
    from tinymlops.tf import keras, tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    keras.utils.set_random_seed(cfg.train.seed)
    x_train, x_val = prep.features("train"), prep.features("val")
    y_train, y_val = prep.splits["train"].y, prep.splits["val"].y
    if cfg.train.augment_shift_pixels:
        if cfg.preprocessing.features != "identity":
            raise ValueError("train.augment_shift_pixels needs preprocessing.features: identity (image inputs)")
        x_train, y_train = shift_augment(x_train, y_train, cfg.train.augment_shift_pixels)
    model, compiled = make_model(cfg.model, cfg.config_dir, x_train.shape[1:], len(prep.class_names))
    if not compiled:
        model.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return Ready(model, x_train, y_train, x_val, y_val)


def fit_model(cfg: PipelineConfig, prep: Prepared,
              on_epoch: Callable[[int, dict[str, float]], None] | None = None,
              ready: Ready | None = None) -> tuple[Any, dict[str, list[float]]]:
    """Fit the configured model (built by :func:`build_model` unless given); return (model, history).

    ``train.epochs: 0`` (pre-trained model files only) evaluates the model as is: the history is empty.
    """
    from tinymlops.tf import keras

    r = ready or build_model(cfg, prep)
    if cfg.train.epochs == 0:
        return r.model, {}
    callbacks: list[Any] = []
    if cfg.train.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.train.early_stopping_patience,
                                                       restore_best_weights=True))
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: on_epoch(epoch, {k: float(v) for k, v in (logs or {}).items()})))
    hist = r.model.fit(r.x_train, r.y_train, validation_data=(r.x_val, r.y_val), epochs=cfg.train.epochs,
                       batch_size=cfg.train.batch_size, callbacks=callbacks, verbose=0)
    return r.model, {k: [float(x) for x in v] for k, v in hist.history.items()}


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _confusion_figure(cm: np.ndarray, class_names: list[str], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(class_names), 1.0 + 0.6 * len(class_names)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def base_manifest(cfg: PipelineConfig, prep: Prepared, variant: str, fmt: str, reference: dict[str, Any],
                  metrics: dict[str, float], n_outputs: int) -> dict[str, Any]:
    """Return the manifest fields shared by every package of this model (file, sha256, size added on write)."""
    return {
        "model_name": cfg.mlflow.registered_model,
        "variant": variant,
        "format": fmt,
        "task": cfg.project,
        "class_names": prep.class_names,
        "preprocessing": prep.preprocessing.model_dump(),
        "input": {"shape": [1, prep.preprocessing.n_features], "dtype": "float32"},
        "output": {"shape": [1, n_outputs], "dtype": "float32"},
        "reference": reference,
        "metrics": metrics,
    }


def run_train(config: str | Path | PipelineConfig, parent_run_id: str | None = None,
              progress: Callable[[str], None] | None = None, extra: TrainExtra | None = None) -> TrainResult:
    """Run the whole train stage and register a new float32 version: THE train entry point (flows wrap it).

    Args:
        config: a pipeline config file (``kind: pipeline``) or an already loaded one.
        parent_run_id: nest the train run under this MLflow run (the pipeline run).
        progress: called with one line per step and epoch (the flow passes its logger).
        extra: more training data than the config names (consented field data: ``monitor.field_retrain``).
    """
    cfg = config if isinstance(config, PipelineConfig) else load_pipeline(config)
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    registry.connect(cfg.mlflow.tracking_uri)
    say(f"preparing dataset {cfg.dataset.name!r}")
    if cfg.model.kind in ("tflite", "onnx"):  # a finished model file: registered as is, no training
        from tinymlops.importer import run_import

        return run_import(cfg, parent_run_id=parent_run_id, progress=say)
    prep = prepare(cfg) if extra is None else extra.extend(cfg, prepare(cfg))
    digests = {k: v.digest() for k, v in prep.splits.items()}
    tags = {"tinymlops.stage": "train", "task": cfg.project, "config_hash": cfg.config_hash(),
            "git_commit": _git_commit(), "dataset_digest": digests["train"], **model_source_tags(cfg)}
    say(f"building {cfg.model.label}")
    ready = build_model(cfg, prep)  # a model that cannot be made fails here, before any run is opened
    wm = watermark.embed(cfg, ready, len(prep.class_names))  # owner watermark (config ip.watermark), or None
    with registry.run(cfg.mlflow.experiment, f"train {cfg.model.label}", parent_run_id, tags) as r:
        _log_inputs(r.run_id, cfg, prep)
        if extra is not None:
            extra.log_inputs(r.run_id)

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            registry.log_metrics(r.run_id, logs, step=epoch)
            say(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {logs.get('loss', 0):.4f}  "
                f"val_accuracy {logs.get('val_accuracy', 0):.4f}")

        say(f"training {cfg.model.label} on {len(prep.splits['train'].y)} samples" if cfg.train.epochs else
            f"evaluating {cfg.model.label} as is (train.epochs: 0)")
        t_fit = time.perf_counter()
        model, history = fit_model(cfg, prep, on_epoch, ready)
        probs, metrics = _evaluate(r.run_id, cfg, prep, model, history, time.perf_counter() - t_fit)
        say("exporting float32 Keras, TFLite and ONNX models")
        _export_and_log(r.run_id, cfg, prep, model, probs, metrics)
        if wm is not None:  # sealed with the owner's IP key on the run, never in the package
            watermark.record(r.run_id, cfg.mlflow.registered_model, wm)
        say("registering the float32 model version")
        version = _register(r.run_id, cfg, prep, metrics, digests["train"], tags)
    return TrainResult(r.run_id, cfg.mlflow.registered_model, version, metrics, digests,
                       time.perf_counter() - t0, cfg.mlflow.experiment)


def model_source_tags(cfg: PipelineConfig) -> dict[str, str]:
    """Return tags saying where the model came from: ``model_source`` and, for a file, its path and sha256."""
    m = cfg.model
    if m.arch is not None:
        return {"model_source": f"arch:{m.arch}"}
    if m.builder is not None:
        return {"model_source": f"builder:{m.builder}"}
    from tinymlops.compress.export import sha256_file

    path = cfg.resolve(str(m.file)).resolve()
    tags = {"model_source": f"file:{m.kind}", "source_path": str(path)}
    if path.is_file():  # a SavedModel directory has no single digest
        tags["source_sha256"] = sha256_file(path)
    return tags


def latest_trained(config: str | Path | PipelineConfig) -> TrainResult:
    """Return the latest registered float32 version of the config's model (a pipeline whose stages omit train).

    Raises:
        UsageError: the model has no complete float32 version to start from.
    """
    cfg = config if isinstance(config, PipelineConfig) else load_pipeline(config)
    name = cfg.mlflow.registered_model
    registry.connect(cfg.mlflow.tracking_uri)
    try:
        versions = registry.list_versions(name)
    except RegistryError:
        versions = []
    floats = [v for v in versions if v.tags.get("variant") in PARENT_VARIANTS and "tinymlops.incomplete" not in v.tags]
    if not floats:
        raise UsageError(f"stages: without 'train' the pipeline starts from the latest registered float32 version of "
                         f"{name!r}, but there is none in {registry.tracking_uri()}: add train to stages or run "
                         "`tinymlops train` first")
    latest = max(floats, key=lambda v: int(v.version))
    run = registry.get_run(latest.run_id)
    return TrainResult(latest.run_id, name, latest.version, dict(run.metrics),
                       {"train": latest.tags.get("dataset_digest", "")}, 0.0, cfg.mlflow.experiment)


def _log_inputs(run_id: str, cfg: PipelineConfig, prep: Prepared) -> None:
    """Log the dataset splits (digest, schema, source), data warnings, the parameters and the config on the run."""
    train = prep.splits["train"]
    for name, part in prep.splits.items():
        X = part.X
        features = ({c: X[:, j] for j, c in enumerate(part.feature_names)} if part.feature_names and X.ndim == 2
                    else X)
        registry.log_dataset(run_id, features, part.y, part.name, part.digest(), part.source, name,
                             path=part.path, sha256=part.content_sha256 or "")
    warnings = dict.fromkeys(w for part in prep.splits.values() for w in part.warnings)
    if warnings:
        registry.log_text(run_id, "\n".join(warnings) + "\n", "dataset/warnings.txt")
    s = cfg.dataset.split
    dataset = {"name": cfg.dataset.name, "source": cfg.dataset.source, "split": s.strategy, "seed": s.seed,
               "split_by": cfg.dataset.split_column(), "sha256": train.content_sha256,
               "class_names": ",".join(train.class_names), **{f"{k}_rows": len(v.y) for k, v in prep.splits.items()}}
    registry.log_params(run_id, {"model": cfg.model.model_dump(), "train": cfg.train.model_dump(),
                                 "dataset": {k: v for k, v in dataset.items() if v is not None},
                                 "preprocessing": cfg.preprocessing.model_dump()})
    config = cfg.model_dump(mode="json")
    if train.path:  # stages that rebuild the splits from this logged config find the same file from anywhere
        config["dataset"].update(path=train.path, sha256=train.content_sha256)
    registry.log_dict(run_id, config, "config/pipeline.json")


def _evaluate(run_id: str, cfg: PipelineConfig, prep: Prepared, model: Any, history: dict[str, list[float]],
              fit_s: float) -> tuple[np.ndarray, dict[str, float]]:
    """Evaluate the fitted model on the test split; log metrics and the confusion matrix; return (probs, metrics)."""
    probs = model.predict(prep.features("test"), verbose=0)
    return probs, log_evaluation(run_id, cfg, prep, probs, fit_s, len(history.get("loss", [])))


def log_evaluation(run_id: str, cfg: PipelineConfig, prep: Prepared, probs: np.ndarray, fit_s: float,
                   epochs_run: int) -> dict[str, float]:
    """Log test-split metrics of a model's outputs and its confusion matrix on the run; return the metrics."""
    y_test = prep.splits["test"].y
    n_classes = len(prep.class_names)
    test = classification_metrics(y_test, probs, n_classes)
    metrics = {"test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
               "accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "train_seconds": fit_s,
               "epochs_run": epochs_run}
    registry.log_metrics(run_id, metrics)
    cm = confusion(y_test, probs.argmax(axis=1), n_classes)
    registry.log_figure(run_id, _confusion_figure(cm, prep.class_names, f"{cfg.project}: test split"),
                        "evaluation/confusion_matrix.png")
    return metrics


def _export_and_log(run_id: str, cfg: PipelineConfig, prep: Prepared, model: Any, probs: np.ndarray,
                    metrics: dict[str, float]) -> None:
    """Export Keras/TFLite/ONNX, check they agree with Keras, log them, the package and the reference sample."""
    from tinymlops.compress.export import to_onnx, to_tflite_float, write_package
    from tinymlops.monitor.reference import compute_reference
    from tinymlops.runtimes import open_runner

    x_train, x_test = prep.features("train"), prep.features("test")
    scores = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
    ref = compute_reference(x_train, model.predict(x_train, verbose=0), prep.preprocessing.feature_names,
                            prep.class_names, metrics=scores,  # validation split calibrates label-free estimates
                            calibration=(model.predict(prep.features("val"), verbose=0), prep.splits["val"].y),
                            prior_labels=prep.splits["train"].y)
    with tempfile.TemporaryDirectory(prefix="tinymlops-train-") as tmp:
        tmpd = Path(tmp)
        try:
            model.save(tmpd / "model.h5")
        except (TypeError, ValueError, NotImplementedError) as exc:  # e.g. a Lambda closing over a module
            raise RuntimeError(f"saving the trained {cfg.model.label} model failed ({type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[0][:200]}); every layer must be serialisable: a "
                               "Lambda must not capture modules or objects, a custom layer needs get_config()") from None
        registry.log_artifact(run_id, tmpd / "model.h5", "keras")
        (tmpd / "model_fp32.tflite").write_bytes(to_tflite_float(model))
        to_onnx(model, tmpd / "model_fp32.onnx")
        export_agreement = {}
        for f in ("model_fp32.tflite", "model_fp32.onnx"):
            with open_runner(tmpd / f) as runner:
                export_agreement[f] = agreement(runner.predict(x_test), probs)
        registry.log_metrics(run_id, {"export_agreement_tflite": export_agreement["model_fp32.tflite"],
                                      "export_agreement_onnx": export_agreement["model_fp32.onnx"],
                                      "size_bytes_tflite_fp32": (tmpd / "model_fp32.tflite").stat().st_size,
                                      "size_bytes_onnx_fp32": (tmpd / "model_fp32.onnx").stat().st_size})
        bad = {k: v for k, v in export_agreement.items() if v < EXPORT_AGREEMENT_MIN}
        if bad:
            raise RuntimeError(f"exported models disagree with the Keras model: {bad}")
        registry.log_artifact(run_id, tmpd / "model_fp32.tflite", "exports")
        registry.log_artifact(run_id, tmpd / "model_fp32.onnx", "exports")
        manifest = base_manifest(cfg, prep, "float32", "onnx", ref.model_dump(), scores, len(prep.class_names))
        write_package(tmpd / "package", tmpd / "model_fp32.onnx", manifest)
        registry.log_artifact(run_id, tmpd / "package", "package")
        log_reference_sample(run_id, x_train, prep, tmpd)
        registry.log_onnx_model(run_id, tmpd / "model_fp32.onnx")


def _register(run_id: str, cfg: PipelineConfig, prep: Prepared, metrics: dict[str, float], digest: str,
              tags: dict[str, str]) -> str:
    """Register the run's package as a new float32 version (the last step: a failure registers nothing)."""
    description = (  # markdown: the MLflow UI renders it on the version page
        f"**{cfg.project}: float32 {cfg.model.label}**, the trained parent of every compressed variant.\n\n"
        f"- **dataset**: {cfg.dataset.name}, {len(prep.splits['train'].y)} train / "
        f"{len(prep.splits['test'].y)} test samples, digest `{digest}`\n"
        f"- **Test accuracy** {metrics['accuracy']:.2%}, macro-F1 {metrics['macro_f1']:.3f} (test split)\n"
        f"- **package**: ONNX fp32 + manifest (pre-processing `{cfg.preprocessing.features}`, reference profile)\n"
        f"- **made by**: train run `{run_id}`, config hash `{tags['config_hash']}`, git `{tags['git_commit']}`\n"
    )
    version = registry.register_version(
        cfg.mlflow.registered_model, run_id,
        {"variant": "float32", "technique": "none", "format": "onnx", "task": cfg.project,
         "train_run_id": run_id, "dataset_digest": digest, "config_hash": tags["config_hash"],
         "git_commit": tags["git_commit"], "accuracy": f"{metrics['accuracy']:.4f}",
         **{k: tags[k] for k in ("model_source", "source_path", "source_sha256") if k in tags}},
        description)
    registry.set_tags(run_id, {"registered_version": version})
    return version


def log_reference_sample(run_id: str, x_train: np.ndarray, prep: Prepared, tmpd: Path) -> None:
    """Log up to REFERENCE_SAMPLE_ROWS model-input rows with labels (Evidently's reference data)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(x_train), size=min(REFERENCE_SAMPLE_ROWS, len(x_train)), replace=False))
    df = pd.DataFrame(x_train[idx], columns=prep.preprocessing.feature_names)
    df["label"] = prep.splits["train"].y[idx]
    df.to_csv(tmpd / "sample.csv", index=False)
    registry.log_artifact(run_id, tmpd / "sample.csv", "reference")
