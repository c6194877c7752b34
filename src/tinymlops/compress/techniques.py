"""Compression techniques: Keras float model → one exported artifact per variant (TensorFlow/TFMOT boundary).

Every builder takes the float Keras model (never modified: techniques work on clones), the training data and the
variant's spec, and writes one model file. Heavy imports stay inside the functions; only heavy code imports this.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.config import (
    Cluster,
    Fp16,
    OnnxFp32,
    OnnxInt8,
    Prune,
    PruneClusterQat,
    PtqDynamic,
    PtqInt8,
    QatInt8,
)


class TechniqueUnsupported(ValueError):
    """A technique cannot handle the model (a layer TFMOT does not support): one line naming layer and technique."""


#: default fine-tuning learning rate as a fraction of the training one: pruning must move weights to recover
#: from removed connections; clustering and QAT only nudge a converged model
LR_FACTOR = {"prune": 1.0, "cluster": 0.3, "qat": 0.3}


@dataclass
class FloatSource:
    """What every technique starts from: the float model, its exports and the training data.

    An imported parent has no Keras model (``keras_path`` None) and, if it is a TFLite file, no ONNX model either:
    tinymlops.compress.applicable skips the techniques that would need them.
    """

    keras_path: Path | None
    onnx_path: Path | None
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    batch_size: int = 32
    learning_rate: float = 0.003
    seed: int = 0
    #: rows fine-tuning replays on top of the training data, never used for calibration: the owner's watermark
    #: trigger set (tinymlops.ip.watermark.replay_rows), so fine-tuning keeps the watermark training embedded
    replay: tuple[np.ndarray, np.ndarray] | None = None

    def fit_data(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the fine-tuning data: the training split plus the replayed rows."""
        if self.replay is None:
            return self.x_train, self.y_train
        return (np.concatenate([self.x_train, self.replay[0].astype(self.x_train.dtype)]),
                np.concatenate([self.y_train, self.replay[1].astype(self.y_train.dtype)]))

    def load_model(self) -> Any:
        """Load a fresh copy of the float Keras model."""
        from tinymlops.tf import keras

        if self.keras_path is None:
            raise ValueError("this technique needs the Keras model; the parent is an imported file")
        return keras.models.load_model(self.keras_path, compile=False)


@dataclass
class Built:
    """An exported variant artifact and what building it measured."""

    path: Path
    fmt: str
    #: full-integer int8 TFLite: the artifact microcontroller runtimes run (evaluated in TFLM too)
    mcu_int8: bool
    params: dict[str, Any]
    figures: dict[str, float] = field(default_factory=dict)
    #: one line per layer the technique left as it was, or op TFLite Micro cannot run (the variant still registers)
    notes: list[str] = field(default_factory=list)


def representative_rows(x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Pick ``n`` rows of the training split (seeded) for calibration."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(n, len(x)), replace=False)
    return np.asarray(x[np.sort(idx)], dtype=np.float32)


def _rep_dataset(rows: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def gen() -> Iterator[list[np.ndarray]]:
        for r in rows:
            yield [r[None]]

    return gen


def convert_int8(model: Any, rows: np.ndarray) -> bytes:
    """Convert to a full-integer TFLite model (int8 weights, activations, inputs and outputs)."""
    from tinymlops.compress.export import tflite_converter
    from tinymlops.tf import tf

    conv = tflite_converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = _rep_dataset(rows)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    # Dense layers per-tensor (as QAT produces and as TFLM/CMSIS-NN fully-connected kernels long required);
    # per-channel would add a float scale + int64 zero point per output unit to weights and biases alike,
    # ~25 % of a small MLP's int8 file. Convolutions stay per-channel, where it matters for accuracy.
    conv._experimental_disable_per_channel_quantization_for_dense_layers = True
    return conv.convert()


def convert_dynamic(model: Any) -> bytes:
    """Convert with dynamic-range quantisation (int8 weights, float activations)."""
    from tinymlops.compress.export import tflite_converter
    from tinymlops.tf import tf

    conv = tflite_converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    return conv.convert()


def convert_fp16(model: Any) -> bytes:
    """Convert with float16 weights."""
    from tinymlops.compress.export import tflite_converter
    from tinymlops.tf import tf

    conv = tflite_converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    return conv.convert()


def _fine_tune(model: Any, src: FloatSource, epochs: int, learning_rate: float,
               callbacks: list[Any] | None = None, select_from_epoch: int = 0) -> dict[str, float]:
    """Compile and fit a wrapped model on the training split, keeping the epoch with the best validation loss.

    Epochs before ``select_from_epoch`` are never kept (pruning has not reached its target sparsity yet).
    Returns the kept epoch's figures.
    """
    from tinymlops.tf import keras

    keras.utils.set_random_seed(src.seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = min(select_from_epoch, epochs - 1)
    # small fine-tunes are noisy epoch to epoch: keep the best epoch on the validation split (never the test split)
    best = keras.callbacks.EarlyStopping(monitor="val_loss", patience=epochs, restore_best_weights=True,
                                         start_from_epoch=start)
    t0 = time.perf_counter()
    x_fit, y_fit = src.fit_data()
    hist = model.fit(x_fit, y_fit, validation_data=(src.x_val, src.y_val), epochs=epochs, shuffle=True,
                     batch_size=src.batch_size, callbacks=[*(callbacks or []), best], verbose=0)
    kept = best.best_epoch if best.best_weights is not None else epochs - 1
    figs = {f"fine_tune_{k}": float(v[kept]) for k, v in hist.history.items()}
    figs["fine_tune_kept_epoch"] = float(kept + 1)
    figs["fine_tune_seconds"] = time.perf_counter() - t0
    figs["fine_tune_learning_rate"] = learning_rate
    return figs


def _steps_per_epoch(src: FloatSource) -> int:
    return int(np.ceil(len(src.fit_data()[0]) / src.batch_size))


def _lr(src: FloatSource, kind: str, learning_rate: float | None) -> float:
    return learning_rate if learning_rate is not None else src.learning_rate * LR_FACTOR[kind]


def pruned_model(model: Any, src: FloatSource, target_sparsity: float, epochs: int,
                 learning_rate: float | None = None, min_layer_weights: int = 0) -> tuple[Any, dict[str, float]]:
    """Prune weights by magnitude to the target sparsity (polynomial decay), fine-tune and strip the wrappers."""
    import tensorflow_model_optimization as tfmot

    # reach the target after ~2/3 of the fine-tuning steps, leaving the rest to recover accuracy at full sparsity
    end_step = max(1, int(_steps_per_epoch(src) * epochs * 2 / 3))
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target_sparsity,
                                                    begin_step=0, end_step=end_step, frequency=max(1, end_step // 20))
    from tinymlops.tf import keras

    def wrap(layer: Any) -> Any:
        # tiny layers (first conv, classifier head) carry few weights but much of the accuracy: keep them dense
        if layer.count_params() >= min_layer_weights and isinstance(layer, keras.layers.Dense | keras.layers.Conv2D):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    wrapped = keras.models.clone_model(model, clone_function=wrap)
    reached = int(np.ceil(end_step / _steps_per_epoch(src)))  # first epoch that ends at the target sparsity
    figs = _fine_tune(wrapped, src, epochs, _lr(src, "prune", learning_rate),
                      [tfmot.sparsity.keras.UpdatePruningStep()], select_from_epoch=reached)
    return tfmot.sparsity.keras.strip_pruning(wrapped), figs


def left_dense(model: Any, min_layer_weights: int, technique: str = "prune") -> list[str]:
    """Return one line per layer with at least ``min_layer_weights`` weights that pruning leaves dense (its kind)."""
    from tinymlops.tf import keras

    return [f"{technique}: layer {layer.name!r} ({type(layer).__name__}, {layer.count_params()} weights) is left "
            "dense: pruning handles Dense and Conv2D layers"
            for layer in model.layers
            if layer.count_params() >= max(min_layer_weights, 1) and layer.trainable_weights
            and not isinstance(layer, keras.layers.Dense | keras.layers.Conv2D)]


def clustered_model(model: Any, src: FloatSource, clusters: int, epochs: int, preserve_sparsity: bool = False,
                    learning_rate: float | None = None) -> tuple[Any, dict[str, float]]:
    """Cluster each layer's weights to ``clusters`` centroids (k-means++), fine-tune and strip the wrappers."""
    import tensorflow_model_optimization as tfmot

    ck = tfmot.clustering.keras
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and int(np.prod(kernel.shape)) < clusters:
            raise ValueError(f"cluster: {clusters} clusters but layer {layer.name!r} has only "
                             f"{int(np.prod(kernel.shape))} weights; use clusters <= {int(np.prod(kernel.shape))}")
    params: dict[str, Any] = {"number_of_clusters": clusters,
                              "cluster_centroids_init": ck.CentroidInitialization.KMEANS_PLUS_PLUS}
    if preserve_sparsity:
        params["preserve_sparsity"] = True
    wrapped = ck.cluster_weights(model, **params)
    figs = _fine_tune(wrapped, src, epochs, _lr(src, "cluster", learning_rate))
    return ck.strip_clustering(wrapped), figs


def qat_model(model: Any, src: FloatSource, epochs: int, scheme: str = "default",
              learning_rate: float | None = None, technique: str = "qat-int8") -> tuple[Any, dict[str, float]]:
    """Quantisation-aware training (8-bit); ``scheme`` preserves clusters (and sparsity) of an optimised model.

    Raises:
        TechniqueUnsupported: a layer TFMOT cannot quantise (named, with its kind), or a nested model.
    """
    import tensorflow_model_optimization as tfmot

    from tinymlops.tf import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise TechniqueUnsupported(f"{technique}: layer {layer.name!r} is a nested model; quantisation-aware "
                                       "training (TFMOT) needs its layers in one functional or Sequential model")
    q = tfmot.quantization.keras
    try:
        if scheme == "default":
            wrapped = q.quantize_model(model)
        else:
            from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
                default_8bit_cluster_preserve_quantize_scheme as cqat,
            )

            annotated = q.quantize_annotate_model(model)
            wrapped = q.quantize_apply(annotated,
                                       cqat.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True))
    except (RuntimeError, ValueError) as exc:
        # TFMOT says "Layer c1d:<class '...Conv1D'> is not supported", or fails earlier cloning the model (a Lambda
        # in safe mode): name the first layer its 8-bit registry does not know, else its own message's layer
        layer = _first_unquantizable(model)
        m = re.search(r"Layer (\S+?):<class '([\w.]+)'> is not supported", str(exc))
        if layer is None and m is None:
            raise
        name, kind = (m[1], m[2].rsplit(".", 1)[-1]) if m is not None else (layer.name, type(layer).__name__)
        raise TechniqueUnsupported(f"{technique}: layer {name!r} ({kind}) is not supported by quantisation-aware "
                                   "training (TFMOT)") from None
    figs = _fine_tune(wrapped, src, epochs, _lr(src, "qat", learning_rate))
    return wrapped, figs


def _first_unquantizable(model: Any) -> Any:
    """Return the first layer TFMOT's default 8-bit quantisation registry does not support, or None."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as reg,
    )

    from tinymlops.tf import keras

    registry = reg.Default8BitQuantizeRegistry()
    # batch normalisation is folded into the preceding convolution by TFMOT's transforms, not quantised itself
    folded = keras.layers.InputLayer | keras.layers.BatchNormalization
    return next((layer for layer in model.layers if not isinstance(layer, folded) and not registry.supports(layer)),
                None)


def _write(dst: Path, data: bytes) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    return dst


def build(spec: Any, src: FloatSource, out_dir: Path) -> Built:
    """Build the variant the spec describes from the float source; write its artifact under ``out_dir``."""
    name = spec.name or spec.technique
    params = spec.model_dump(exclude={"name", "technique"})
    tfl = out_dir / f"{name}.tflite"
    t0 = time.perf_counter()
    figs: dict[str, float] = {}
    if isinstance(spec, OnnxFp32 | OnnxInt8):
        if src.onnx_path is None:
            raise ValueError(f"{spec.technique} needs an ONNX parent model")
        if isinstance(spec, OnnxFp32):
            path = Path(shutil.copyfile(src.onnx_path, out_dir / f"{name}.onnx"))
        else:
            path = quantize_onnx_int8(src.onnx_path, out_dir / f"{name}.onnx",
                                      representative_rows(src.x_train, spec.calibration_samples, src.seed))
        return Built(path, "onnx", False, params, {"build_seconds": time.perf_counter() - t0})

    model = src.load_model()
    mcu = True
    notes: list[str] = []
    if isinstance(spec, Prune | PruneClusterQat):
        notes = left_dense(model, spec.min_layer_weights, spec.technique)
    if isinstance(spec, PtqInt8):
        data = convert_int8(model, representative_rows(src.x_train, spec.representative_samples, src.seed))
    elif isinstance(spec, PtqDynamic):
        data, mcu = convert_dynamic(model), False
    elif isinstance(spec, Fp16):
        data, mcu = convert_fp16(model), False
    elif isinstance(spec, Prune):
        pruned, figs = pruned_model(model, src, spec.target_sparsity, spec.epochs, spec.learning_rate,
                                    spec.min_layer_weights)
        data = convert_int8(pruned, representative_rows(src.x_train, spec.representative_samples, src.seed))
    elif isinstance(spec, Cluster):
        clustered, figs = clustered_model(model, src, spec.clusters, spec.epochs, learning_rate=spec.learning_rate)
        data = convert_int8(clustered, representative_rows(src.x_train, spec.representative_samples, src.seed))
    elif isinstance(spec, QatInt8):
        qat, figs = qat_model(model, src, spec.epochs, learning_rate=spec.learning_rate)
        data = convert_int8(qat, representative_rows(src.x_train, spec.representative_samples, src.seed))
    elif isinstance(spec, PruneClusterQat):
        # collaborative optimisation: each step preserves what the previous one achieved
        lr = spec.learning_rate
        pruned, f1 = pruned_model(model, src, spec.target_sparsity, spec.epochs, lr, spec.min_layer_weights)
        clustered, f2 = clustered_model(pruned, src, spec.clusters, spec.epochs, True, lr)
        pcqat, f3 = qat_model(clustered, src, spec.epochs, "cluster-preserve", lr, spec.technique)
        figs = {**{f"prune_{k}": v for k, v in f1.items()}, **{f"cluster_{k}": v for k, v in f2.items()},
                **{f"qat_{k}": v for k, v in f3.items()}}
        data = convert_int8(pcqat, representative_rows(src.x_train, spec.representative_samples, src.seed))
    else:  # the config's discriminated union makes this unreachable for validated specs
        raise ValueError(f"unknown technique {getattr(spec, 'technique', spec)!r}")
    figs["build_seconds"] = time.perf_counter() - t0
    path = _write(tfl, data)
    if mcu:
        tflm = tflm_unsupported(path, {layer.name for layer in model.layers}, spec.technique)
        mcu, notes = not tflm, notes + tflm
    return Built(path, "tflite", mcu, params, figs, notes)


def tflm_unsupported(path: Path, layer_names: set[str], technique: str) -> list[str]:
    """Return one line per op kind of a TFLite model that TFLite Micro lacks, naming the Keras layer it comes from.

    The layer is read from the op's output tensor name (``model/<layer>/...``), as the converter writes it.
    """
    from tinymlops.profile.graph import load_graph
    from tinymlops.profile.profiler import TFLM_OPS

    graph = load_graph(path)
    lines: dict[str, str] = {}
    for op in graph.ops:
        if op.op_type in TFLM_OPS or op.op_type in lines:
            continue
        names = [graph.tensors[i].name for i in op.outputs]
        # QAT wraps layers as quant_<name>
        layer = next((part.removeprefix("quant_") for n in names for part in re.split(r"[/;:]", n)
                      if part.removeprefix("quant_") in layer_names), None)
        where = f"layer {layer!r}" if layer else f"tensor {names[0]!r}" if names else "the graph"
        lines[op.op_type] = (f"{technique}: op {op.op_type} ({where}) is not supported by TFLite Micro; the variant "
                             "is registered for Linux-class runtimes and will not fit microcontrollers")
    return list(lines.values())


def quantize_onnx_int8(src: Path, dst: Path, rows: np.ndarray) -> Path:
    """Quantise an ONNX model statically (QDQ, int8 weights and activations) calibrated on training rows."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    input_name = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(rows[i:i + 1] for i in range(len(rows)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    return dst
