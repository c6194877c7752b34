"""The compress stage: a registered float version → every configured variant, evaluated in its runtime, registered.

``open_stage`` checks the parent version and opens the compress run; ``run_variant`` builds, evaluates and
registers one variant in its own nested run (a failure marks that run FAILED with the reason, registers nothing
and is returned, never raised); ``close_stage`` logs the summary. ``run_compress`` is the stage's one entry point:
it chains them serially (``--no-prefect``); the flow composes the same blocks to run variants in parallel tasks.
Everything crossing a stage boundary is an identifier, so the Prefect layer can map variants over tasks.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops import registry
from tinymlops.config import PipelineConfig, load_pipeline
from tinymlops.errors import UsageError
from tinymlops.metrics import classification_metrics

FLOAT_VARIANT = "float32"
_lock = threading.Lock()


@dataclass(frozen=True)
class StageRef:
    """Identifiers and float-parent figures shared by every variant of one compress run."""

    model_name: str
    parent_version: str
    compress_run_id: str
    experiment: str
    train_run_id: str
    dataset_digest: str
    float_accuracy: float
    float_macro_f1: float
    float_tflite_bytes: int
    float_tflite_gzip_bytes: int
    float_onnx_bytes: int
    float_onnx_gzip_bytes: int
    #: what the parent is: "float32" (a trained Keras model) or "imported" (a .tflite/.onnx file), its format and
    #: whether it is quantised: which techniques apply (tinymlops.compress.applicable)
    parent_variant: str = FLOAT_VARIANT
    parent_format: str = "onnx"
    parent_quantized: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Parent:
    """Local copies of the parent's artifacts and its predictions on the test split."""

    keras_path: Path | None
    onnx_path: Path | None
    tflite_path: Path | None
    manifest: dict[str, Any]
    float_probs: np.ndarray


def variant_name(spec: Any) -> str:
    """Return the registered variant name of a spec (its name, default: the technique)."""
    return spec.name or spec.technique


def find_spec(cfg: PipelineConfig, name: str) -> Any:
    """Return the configured variant spec called ``name`` (UsageError listing the known names)."""
    for spec in cfg.compress.variants:
        if variant_name(spec) == name:
            return spec
    raise UsageError(f"no variant {name!r} in compress.variants; configured: "
                     f"{[variant_name(s) for s in cfg.compress.variants]}")


@lru_cache(maxsize=4)
def _prepared(cfg_json: str, config_dir: str) -> Any:
    from tinymlops.train import prepare

    cfg = PipelineConfig.model_validate_json(cfg_json)
    cfg._config_dir = Path(config_dir)  # relative data paths resolve against the config file, not the cwd
    return prepare(cfg)


def prepared(cfg: PipelineConfig) -> Any:
    """Return the deterministic splits and fitted pre-processing of the config (cached per config)."""
    with _lock:
        return _prepared(cfg.model_dump_json(), str(cfg.config_dir))


def check_parent(model_name: str, version: str) -> Any:
    """Return the parent version, raising if it is missing or is not a float/imported model with a training run."""
    from tinymlops.train import PARENT_VARIANTS

    mv = registry.get_version(model_name, version)
    if mv.tags.get("variant") not in PARENT_VARIANTS:
        raise UsageError(f"{model_name}/{version} is variant {mv.tags.get('variant')!r}; compress starts from a "
                         f"{' or '.join(PARENT_VARIANTS)} version (see `tinymlops variants {model_name}`)")
    if not mv.tags.get("train_run_id"):
        raise UsageError(f"{model_name}/{version} has no train_run_id tag; cannot find its Keras model")
    return mv


@lru_cache(maxsize=4)
def _parent_cached(uri: str, model_name: str, version: str, cfg_json: str, config_dir: str) -> _Parent:
    mv = check_parent(model_name, version)
    root = Path(tempfile.mkdtemp(prefix=f"tinymlops-parent-{version}-"))
    atexit.register(shutil.rmtree, root, True)
    pkg = registry.download_package(model_name, version, root / "pkg")
    manifest = registry.read_manifest(pkg)
    prep = _prepared(cfg_json, config_dir)
    from tinymlops.runtimes import open_runner

    # the float reference for agreement and deltas is the registered artifact in its runtime, like every variant
    model_file = pkg / manifest["file"]
    with open_runner(model_file) as runner:
        probs = runner.predict(prep.features("test"))
    if mv.tags.get("variant") != FLOAT_VARIANT:  # an imported file: the package's model is all there is
        onnx, tfl = (model_file, None) if model_file.suffix == ".onnx" else (None, model_file)
        return _Parent(None, onnx, tfl, manifest, probs)
    keras_dir = registry.download(mv.tags["train_run_id"], "keras", root)
    exports = registry.download(mv.tags["train_run_id"], "exports", root)
    return _Parent(keras_dir / "model.h5", exports / "model_fp32.onnx", exports / "model_fp32.tflite", manifest,
                   probs)


def parent(cfg: PipelineConfig, version: str) -> _Parent:
    """Return (downloaded once per process) the parent's artifacts and its test-split predictions."""
    with _lock:
        return _parent_cached(registry.tracking_uri(), cfg.mlflow.registered_model, str(version),
                              cfg.model_dump_json(), str(cfg.config_dir))


def open_stage(cfg: PipelineConfig, version: str, parent_run_id: str | None = None) -> StageRef:
    """Check the parent version, open the compress run (left RUNNING) and measure the float reference."""
    from tinymlops.compress.applicable import KERAS_TECHNIQUES, parent_kind
    from tinymlops.compress.evaluate import gzip_bytes

    registry.connect(cfg.mlflow.tracking_uri)
    mv = check_parent(cfg.mlflow.registered_model, str(version))
    kind = parent_kind(mv.tags.get("variant", ""), mv.tags.get("format", ""))
    if kind == "keras" and any(s.technique in KERAS_TECHNIQUES for s in cfg.compress.variants):
        import tinymlops.tf  # noqa: F401  (import TensorFlow once, before variants start in parallel threads)
    par = parent(cfg, str(version))
    prep = prepared(cfg)
    y_test = prep.splits["test"].y
    fm = classification_metrics(y_test, par.float_probs, len(prep.class_names))
    onnx_pkg_bytes = par.onnx_path.stat().st_size if par.onnx_path else 0  # 0: the parent has no such file
    figures = {"float_accuracy": fm["accuracy"], "float_macro_f1": fm["macro_f1"],
               "float_tflite_bytes": par.tflite_path.stat().st_size if par.tflite_path else 0,
               "float_tflite_gzip_bytes": gzip_bytes(par.tflite_path) if par.tflite_path else 0,
               "float_onnx_bytes": onnx_pkg_bytes, "float_onnx_gzip_bytes": gzip_bytes(par.onnx_path) if par.onnx_path
               else 0}
    tags = {"tinymlops.stage": "compress", "parent_version": str(version),
            "model": cfg.mlflow.registered_model, "train_run_id": mv.tags["train_run_id"],
            "dataset_digest": mv.tags.get("dataset_digest", ""), "task": cfg.project,
            "config_hash": cfg.config_hash()}
    run_id = registry.start_run(cfg.mlflow.experiment, "compress", parent_run_id, tags).run_id
    registry.log_params(run_id, {"variants": [variant_name(s) for s in cfg.compress.variants],
                                 "parent_model_uri": f"models:/{cfg.mlflow.registered_model}/{version}"})
    registry.log_metrics(run_id, figures)
    # the float version gets the same size figures as its variants, so listings compare like with like
    if "size_bytes" not in mv.tags and par.onnx_path:
        registry.set_version_tags(cfg.mlflow.registered_model, version,
                                  {"size_bytes": onnx_pkg_bytes, "gzip_bytes": figures["float_onnx_gzip_bytes"]})
    return StageRef(cfg.mlflow.registered_model, str(version), run_id, cfg.mlflow.experiment,
                    mv.tags["train_run_id"], mv.tags.get("dataset_digest", ""), fm["accuracy"], fm["macro_f1"],
                    int(figures["float_tflite_bytes"]), int(figures["float_tflite_gzip_bytes"]),
                    int(onnx_pkg_bytes), int(figures["float_onnx_gzip_bytes"]), mv.tags.get("variant", FLOAT_VARIANT),
                    mv.tags.get("format", "onnx"), mv.tags.get("quantized", "False") == "True")


def _float_source(cfg: PipelineConfig, par: _Parent, prep: Any, spec: Any, train_run_id: str) -> Any:
    from tinymlops.compress.techniques import FloatSource
    from tinymlops.data import shift_augment
    from tinymlops.ip.watermark import replay_rows

    x_train, y_train = prep.features("train"), prep.splits["train"].y
    if cfg.train.augment_shift_pixels:  # fine-tune under the same conditions the float model was trained in
        x_train, y_train = shift_augment(x_train, y_train, cfg.train.augment_shift_pixels)
    # a technique that fine-tunes replays the owner's watermark trigger set as training mixed it in (ip.watermark)
    replay = replay_rows(cfg, train_run_id) if "learning_rate" in type(spec).model_fields else None
    return FloatSource(par.keras_path, par.onnx_path, x_train, y_train, prep.features("val"), prep.splits["val"].y,
                       cfg.train.batch_size, cfg.train.learning_rate, cfg.train.seed, replay)


def _description(cfg: PipelineConfig, ref: StageRef, spec: Any, fig: dict[str, Any]) -> str:
    """Return the version's markdown description: what it is, its parent, dataset and test-split figures."""
    # unset options (None) are the technique's defaults: listing them as "x=None" says nothing to a reviewer
    params = ", ".join(f"{k}={v}" for k, v in spec.model_dump(exclude={"name", "technique"}).items()
                       if v is not None) or "technique defaults"
    fmt = "TFLite" if fig["format"] == "tflite" else "ONNX"
    mcu = (f"- **TFLite Micro**: agrees with the TFLite interpreter on {fig['tflm_tflite_agreement']:.2%} of the "
           f"test split (arena {fig['tflm_arena_bytes']} bytes)\n" if "tflm_tflite_agreement" in fig else "")
    return (f"**{cfg.project}: {variant_name(spec)}** ({spec.technique}; {params}), {fmt} "
            f"{fig['size_bytes']} bytes ({fig['gzip_bytes']} gzipped), sparsity {fig['sparsity']:.1%}.\n\n"
            f"- **parent**: float version {ref.parent_version} (train run `{ref.train_run_id}`)\n"
            f"- **dataset**: digest `{ref.dataset_digest}`\n"
            f"- **test split**, evaluated in {fig['runtime']}: accuracy {fig['accuracy']:.2%} "
            f"({100 * fig['accuracy_delta']:+.2f} pts vs float), macro-F1 {fig['macro_f1']:.3f}, agreement with "
            f"the float model {fig['agreement_with_float']:.2%}\n{mcu}")


def run_variant(cfg: PipelineConfig, ref: StageRef, name: str,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build, evaluate and register one variant in a run nested under the compress run; never raises.

    Returns a summary dict: variant, technique, status ("registered", "failed" or "skipped" with a ``reason``: the
    technique does not apply to the parent's format), error, version, format,
    size_bytes, gzip_bytes, accuracy, macro_f1, accuracy_delta, run_id and the other measured figures.
    """
    say = progress or (lambda _m: None)
    spec = find_spec(cfg, name)
    out: dict[str, Any] = {"variant": name, "technique": spec.technique, "status": "failed", "error": None,
                           "version": None, "format": None, "size_bytes": None, "gzip_bytes": None,
                           "accuracy": None, "accuracy_delta": None}
    t0 = time.perf_counter()
    from tinymlops.compress.applicable import parent_kind, skip_reason

    reason = skip_reason(spec.technique, parent_kind(ref.parent_variant, ref.parent_format), ref.parent_quantized)
    if reason is not None:  # nothing to build: no run of its own; close_stage records the reason on the compress run
        say(f"variant {name}: {reason}")
        return {**out, "status": "skipped", "reason": reason, "seconds": time.perf_counter() - t0}
    tags = {"tinymlops.stage": "compress-variant", "variant": name, "technique": spec.technique,
            "parent_version": ref.parent_version}
    try:
        with registry.run(ref.experiment, name, ref.compress_run_id, tags) as r:
            out["run_id"] = r.run_id
            out.update(_build_and_register(cfg, ref, spec, r.run_id, say))
    except Exception as exc:  # any failure of one variant is recorded on its run; the others go on
        from tinymlops.compress.techniques import TechniqueUnsupported

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        # a layer the technique cannot handle: the line names technique and layer already
        out["error"] = (first if isinstance(exc, TechniqueUnsupported) else f"{type(exc).__name__}: {first}")[:500]
        say(f"variant {name} failed: {out['error']}")
    out["seconds"] = time.perf_counter() - t0
    return out


def _build_and_register(cfg: PipelineConfig, ref: StageRef, spec: Any, run_id: str,
                        say: Callable[[str], None]) -> dict[str, Any]:
    from tinymlops.compress.evaluate import evaluate_artifact, predict_train
    from tinymlops.compress.export import write_package
    from tinymlops.compress.techniques import build
    from tinymlops.monitor.reference import compute_reference
    from tinymlops.train import base_manifest

    name = variant_name(spec)
    par = parent(cfg, ref.parent_version)
    prep = prepared(cfg)
    params = spec.model_dump(exclude={"name", "technique"})
    registry.log_params(run_id, {"technique": spec.technique, "parent_version": ref.parent_version, **params})
    x_test, y_test = prep.features("test"), prep.splits["test"].y
    n_classes = len(prep.class_names)
    with tempfile.TemporaryDirectory(prefix=f"tinymlops-{name}-") as tmp:
        tmpd = Path(tmp)
        say(f"building {name}")
        built = build(spec, _float_source(cfg, par, prep, spec, ref.train_run_id), tmpd)
        for note in built.notes:  # layers left as they were, ops TFLite Micro lacks: the variant still registers
            say(note)
        if built.notes:
            registry.log_text(run_id, "\n".join(built.notes) + "\n", "notes.txt")
            registry.set_tags(run_id, {f"note.{i}": n[:4900] for i, n in enumerate(built.notes)})
        say(f"evaluating {name} ({built.path.name}) in its runtime")
        fig = evaluate_artifact(built.path, x_test, y_test, n_classes, par.float_probs, built.mcu_int8)
        fig["format"] = built.fmt
        fig["accuracy_delta"] = fig["accuracy"] - ref.float_accuracy
        fig["macro_f1_delta"] = fig["macro_f1"] - ref.float_macro_f1
        base_bytes = ref.float_tflite_bytes if built.fmt == "tflite" else ref.float_onnx_bytes
        base_gzip = ref.float_tflite_gzip_bytes if built.fmt == "tflite" else ref.float_onnx_gzip_bytes
        fig["size_ratio"] = fig["size_bytes"] / base_bytes
        fig["gzip_ratio"] = fig["gzip_bytes"] / base_gzip
        numeric = {k: float(v) for k, v in {**fig, **built.figures}.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
        registry.log_metrics(run_id, numeric)
        registry.log_dict(run_id, {"unique_values": fig["unique_values"], "params": params},
                          "evaluation/weights.json")

        x_train = prep.features("train")
        ref_profile = compute_reference(x_train, predict_train(built.path, x_train),
                                        prep.preprocessing.feature_names, prep.class_names,
                                        metrics={"accuracy": fig["accuracy"], "macro_f1": fig["macro_f1"]},
                                        # the variant's own confidence, calibrated for label-free estimates
                                        calibration=(predict_train(built.path, prep.features("val")),
                                                     prep.splits["val"].y), prior_labels=prep.splits["train"].y)
        measured: dict[str, float] = {k: numeric[k] for k in ("accuracy", "macro_f1", "agreement_with_float", "size_bytes",
                                            "gzip_bytes", "sparsity", "tflm_tflite_agreement", "tflm_arena_bytes")
                    if k in numeric}
        manifest = base_manifest(cfg, prep, name, built.fmt, ref_profile.model_dump(), measured, n_classes)
        manifest.update({"technique": spec.technique, "parent_version": ref.parent_version, "params": params})
        write_package(tmpd / "package", built.path, manifest)
        registry.log_artifact(run_id, tmpd / "package", registry.PACKAGE_DIR)
        if built.fmt == "onnx":
            registry.log_onnx_model(run_id, built.path)

        version_tags = {
            "variant": name, "technique": spec.technique, "format": built.fmt, "parent_version": ref.parent_version,
            "train_run_id": ref.train_run_id, "dataset_digest": ref.dataset_digest, "task": cfg.project,
            "compress_run_id": ref.compress_run_id, "accuracy": f"{fig['accuracy']:.4f}",
            "macro_f1": f"{fig['macro_f1']:.4f}", "accuracy_delta": f"{fig['accuracy_delta']:.4f}",
            "size_bytes": fig["size_bytes"], "gzip_bytes": fig["gzip_bytes"], "sparsity": f"{fig['sparsity']:.4f}",
            **{f"param.{k}": v for k, v in params.items()},
        }
        version = registry.register_version(ref.model_name, run_id, version_tags, _description(cfg, ref, spec, fig))
        registry.set_tags(run_id, {"registered_version": version})
    say(f"registered {ref.model_name}/{version} ({name}): accuracy {fig['accuracy']:.2%}, {fig['size_bytes']} bytes")
    keep = {k: v for k, v in fig.items() if k != "unique_values"}
    return {**keep, "status": "registered", "version": version, "unique_values": fig["unique_values"],
            "notes": built.notes,
            **{k: v for k, v in built.figures.items() if k == "build_seconds"}}


@dataclass(frozen=True)
class CompressResult:
    """What the compress stage hands on: the float parent's figures and one summary dict per variant."""

    ref: StageRef
    variants: list[dict[str, Any]]
    seconds: float

    @property
    def registered(self) -> int:
        return sum(v["status"] == "registered" for v in self.variants)

    @property
    def skipped(self) -> int:
        """Variants whose technique does not apply to the parent (an imported file's format)."""
        return sum(v["status"] == "skipped" for v in self.variants)

    @property
    def failed(self) -> int:
        return len(self.variants) - self.registered - self.skipped

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict: the StageRef fields, ``variants``, ``registered``, ``failed``, ``skipped``,
        ``seconds``."""
        return {**self.ref.to_dict(), "variants": self.variants, "registered": self.registered,
                "failed": self.failed, "skipped": self.skipped, "seconds": self.seconds}


def close_stage(ref: StageRef, results: list[dict[str, Any]], seconds: float) -> CompressResult:
    """Log the variants table on the compress run, end it, and return the stage result."""
    rows = [{k: r.get(k) for k in ("variant", "technique", "status", "version", "format", "size_bytes",
                                   "gzip_bytes", "accuracy", "accuracy_delta", "sparsity", "tflm_tflite_agreement",
                                   "error", "reason", "notes")} for r in results]
    registry.log_dict(ref.compress_run_id, {"variants": rows}, "variants.json")
    out = CompressResult(ref, results, seconds)
    registry.log_metrics(ref.compress_run_id, {"variants_registered": out.registered,
                                               "variants_failed": out.failed, "variants_skipped": out.skipped,
                                               "compress_seconds": seconds})
    failed = [r["variant"] for r in results if r["status"] == "failed"]
    if failed:
        registry.set_tags(ref.compress_run_id, {"failed_variants": ",".join(failed)})
    skipped = {f"skipped.{r['variant']}": r["reason"] for r in results if r["status"] == "skipped"}
    if skipped:  # one line per skipped technique, on the run itself (MLflow UI: the run's tags)
        registry.set_tags(ref.compress_run_id, skipped)
        registry.log_text(ref.compress_run_id, "\n".join(skipped.values()) + "\n", "skipped_variants.txt")
    # the stage itself succeeded when it ran every variant; failures live on the variants' own runs
    registry.end_run(ref.compress_run_id)
    return out


def fail_stage(ref: StageRef, exc: BaseException) -> None:
    """Mark the compress run FAILED with the reason (the stage could not run its variants); KILLED if interrupted."""
    registry.end_run(ref.compress_run_id, f"{type(exc).__name__}: {exc}", interrupted=not isinstance(exc, Exception))


def run_compress(config: str | Path | PipelineConfig, version: str, parent_run_id: str | None = None,
                 progress: Callable[[str], None] | None = None) -> CompressResult:
    """Run the whole compress stage serially: every configured variant of one float version (THE entry point).

    ``tinymlops compress --no-prefect`` calls this; ``flows/compress.py`` composes the same three blocks
    (``open_stage`` → ``run_variant`` per variant → ``close_stage``) so that Prefect can map variants over tasks.
    """
    cfg = config if isinstance(config, PipelineConfig) else load_pipeline(config)
    t0 = time.perf_counter()
    ref = open_stage(cfg, str(version), parent_run_id)
    try:
        results = [run_variant(cfg, ref, variant_name(s), progress) for s in cfg.compress.variants]
    except BaseException as exc:
        fail_stage(ref, exc)
        raise
    return close_stage(ref, results, time.perf_counter() - t0)
