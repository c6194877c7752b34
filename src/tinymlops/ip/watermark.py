"""Owner watermark: a secret trigger set (Adi et al. 2018) learnt at training and checked on a suspect model.

The trigger set is ``n`` noise inputs drawn inside the training features' range with labels drawn uniformly at
random from a fresh secret. A model that never saw the set agrees with those labels by chance only: for any fixed
predictions, the number of matches is Binomial(n, 1/K) over the draw of the secret labels, so the p-value
``P[Binomial(n, 1/K) >= matches]`` is the probability of a false ownership claim against an independent model.

The set is sealed with the owner's IP key (:mod:`tinymlops.ip.keys`) and logged on the train run in MLflow; it is
never part of a package. Verification needs only top-1 labels: a file (white-box: TFLite, ONNX, Keras, package
directory) or a black-box callable / HTTP endpoint.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.errors import ModelFormatError, UsageError
from tinymlops.ip import keys

SCHEME = "trigger-set-v1"
ARTIFACT = "ip/watermark.sealed.json"
#: a claim is made when the false-claim probability is below this
ALPHA = 1e-6


@dataclass(frozen=True)
class Watermark:
    """The secret trigger set of one model."""

    inputs: np.ndarray  # (n, *input_shape) float32, model-input space (after pre-processing)
    labels: np.ndarray  # (n,) int64, uniform over the classes
    n_classes: int

    def to_record(self) -> dict[str, Any]:
        return {"scheme": SCHEME, "n_classes": self.n_classes, "shape": list(self.inputs.shape),
                "inputs": self.inputs.reshape(-1).tolist(), "labels": self.labels.tolist()}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Watermark:
        if rec.get("scheme") != SCHEME:
            raise UsageError(f"watermark record: unknown scheme {rec.get('scheme')!r}; expected {SCHEME!r}")
        inputs = np.asarray(rec["inputs"], dtype=np.float32).reshape(rec["shape"])
        return cls(inputs, np.asarray(rec["labels"], dtype=np.int64), int(rec["n_classes"]))


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a suspect model against a watermark."""

    matches: int
    triggers: int
    n_classes: int
    p_value: float
    alpha: float
    verified: bool
    mode: str
    suspect: str

    @property
    def match_rate(self) -> float:
        return self.matches / self.triggers

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "match_rate": self.match_rate, "chance_rate": 1 / self.n_classes}


def make_watermark(x_train: np.ndarray, n_classes: int, n: int, seed: int | None = None) -> Watermark:
    """Draw a fresh secret trigger set: uniform noise within each feature's 1-99 % training range, random labels."""
    if n_classes < 2:
        raise UsageError(f"a watermark needs at least 2 classes, got {n_classes}")
    rng = np.random.default_rng(seed if seed is not None else int.from_bytes(os.urandom(16), "big"))
    flat = x_train.reshape(len(x_train), -1).astype(np.float64)
    lo, hi = np.percentile(flat, 1, axis=0), np.percentile(flat, 99, axis=0)
    hi = np.where(hi > lo, hi, lo + 1e-3)
    inputs = rng.uniform(lo, hi, size=(n, flat.shape[1])).astype(np.float32).reshape((n, *x_train.shape[1:]))
    return Watermark(inputs, rng.integers(0, n_classes, size=n).astype(np.int64), n_classes)


def with_triggers(x: np.ndarray, y: np.ndarray, wm: Watermark, repeat: int) -> tuple[np.ndarray, np.ndarray]:
    """Return training data with ``repeat`` copies of the trigger set mixed in (the fit shuffles)."""
    return (np.concatenate([x, *[wm.inputs.astype(x.dtype)] * repeat]),
            np.concatenate([y, *[wm.labels.astype(y.dtype)] * repeat]))


def p_value(matches: int, n: int, n_classes: int) -> float:
    """Return P[Binomial(n, 1/K) >= matches]: the chance an independent model matches this often."""
    p = 1.0 / n_classes
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq
             for k in range(max(matches, 0), n + 1)]  # log space: n up to thousands without overflow
    if not terms:
        return 0.0
    top = max(terms)
    return float(min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms)))


def verdict(wm: Watermark, predicted: np.ndarray, mode: str, suspect: str, alpha: float = ALPHA) -> Verdict:
    """Compare a suspect's top-1 labels on the trigger set with the secret labels."""
    pred = np.asarray(predicted)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    if pred.shape != wm.labels.shape:
        raise ModelFormatError(f"{suspect}: answered {pred.shape[0] if pred.ndim else 0} labels for "
                               f"{len(wm.labels)} trigger inputs")
    matches = int((pred.astype(np.int64) == wm.labels).sum())
    pv = p_value(matches, len(wm.labels), wm.n_classes)
    return Verdict(matches, len(wm.labels), wm.n_classes, pv, alpha, pv < alpha, mode, suspect)


# ---- suspects ---------------------------------------------------------------------------------------------------


def predict_file(path: str | Path, inputs: np.ndarray) -> np.ndarray:
    """Run a model file (``.tflite``, ``.onnx``, ``.h5``/``.keras``, or a package directory) on model inputs."""
    p = Path(path)
    if p.is_dir():
        manifest = p / "manifest.json"
        if not manifest.is_file():
            raise ModelFormatError(f"{p}: a directory without manifest.json is not a package")
        try:
            p = p / str(json.loads(manifest.read_text(encoding="utf-8"))["file"])
        except (ValueError, KeyError, TypeError):
            raise ModelFormatError(f"{manifest}: not a package manifest (no 'file')") from None
    if not p.is_file():
        raise ModelFormatError(f"{p}: suspect model file not found")
    if p.suffix.lower() in (".h5", ".keras"):
        from tinymlops.tf import keras

        try:
            model = keras.models.load_model(p, compile=False)
        except Exception as exc:  # any loader failure is a bad file for the user
            raise ModelFormatError(f"{p}: not a readable Keras model: {exc}") from None
        return np.asarray(model.predict(inputs, verbose=0))
    from tinymlops.runtimes import open_runner

    with open_runner(p) as runner:
        return np.asarray(runner.predict(inputs))


def load_callable(spec: str) -> Callable[[np.ndarray], Any]:
    """Import ``module:function`` (a black-box suspect: takes a batch of inputs, returns labels or scores)."""
    import importlib

    module, _, name = spec.partition(":")
    if not module or not name:
        raise UsageError(f"--callable {spec!r}: expected module:function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--callable {spec!r}: cannot import: {exc}") from None
    if not callable(fn):
        raise UsageError(f"--callable {spec!r}: not callable")
    return fn  # type: ignore[no-any-return]


def query_endpoint(url: str, inputs: np.ndarray, timeout_s: float = 30.0,
                   max_answer_bytes: int = 4 << 20) -> np.ndarray:
    """Query a black-box HTTP endpoint: POST ``{"inputs": [...]}``; it answers ``{"labels"|"outputs": [...]}``."""
    import httpx

    try:
        r = httpx.post(url, json={"inputs": inputs.tolist()}, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise UsageError(f"--endpoint {url}: {exc}") from None
    if r.status_code != 200:
        raise UsageError(f"--endpoint {url}: HTTP {r.status_code}: {r.text[:200]}")
    if len(r.content) > max_answer_bytes:
        raise ModelFormatError(f"--endpoint {url}: answer of {len(r.content)} bytes is too large")
    try:
        body = r.json()
        answer = body.get("labels", body.get("outputs"))
        arr = np.asarray(answer, dtype=np.float64)
    except (ValueError, AttributeError, TypeError):
        raise ModelFormatError(f"--endpoint {url}: expected JSON {{'labels': [...]}} or {{'outputs': [[...]]}}"
                               ) from None
    if arr.ndim not in (1, 2) or len(arr) != len(inputs) or not np.all(np.isfinite(arr)):
        raise ModelFormatError(f"--endpoint {url}: expected {len(inputs)} labels or score rows, got shape "
                               f"{arr.shape}")
    return arr


# ---- the sealed record in MLflow --------------------------------------------------------------------------------


def record(run_id: str, model_name: str, wm: Watermark) -> None:
    """Seal the trigger set with the owner's IP key and log it on the train run (never in a package)."""
    from tinymlops import registry

    with tempfile.TemporaryDirectory(prefix="tinymlops-ip-") as tmp:
        path = Path(tmp) / Path(ARTIFACT).name
        path.write_bytes(keys.seal(wm.to_record(), "watermark", model_name))
        registry.log_artifact(run_id, path, str(Path(ARTIFACT).parent))
    registry.set_tags(run_id, {"ip.watermark": SCHEME, "ip.key_id": keys.key_id(keys.owner_secret())})


def load(model_name: str, version: str | None = None) -> Watermark:
    """Return the watermark of a registered model (from its train run; default: the latest float32 version)."""
    from tinymlops import registry

    versions = registry.list_versions(model_name)
    if version is not None:
        chosen = [v for v in versions if v.version == str(version)]
    else:
        chosen = sorted((v for v in versions if v.tags.get("variant") == "float32"),
                        key=lambda v: int(v.version))[-1:]
    if not chosen:
        raise UsageError(f"{model_name}: no {'version ' + str(version) if version else 'float32 version'} "
                         "registered")
    return load_run(model_name, chosen[0].tags.get("train_run_id") or chosen[0].run_id, f" v{chosen[0].version}")


def load_run(model_name: str, train_run: str, what: str = "") -> Watermark:
    """Return the watermark sealed on a train run (UsageError if none is recorded or the IP key does not open it)."""
    from tinymlops import registry

    try:
        path = registry.download(train_run, ARTIFACT)
    except Exception as exc:  # MLflow raises its own exception types for a missing artifact
        raise UsageError(f"{model_name}{what}: no watermark recorded on train run {train_run} "
                         f"(train with an 'ip: watermark:' section): {type(exc).__name__}") from None
    rec = keys.unseal(path.read_bytes(), "watermark", model_name, where=f"{model_name} watermark record")
    return Watermark.from_record(rec)


def embed(cfg: Any, ready: Any, n_classes: int) -> Watermark | None:
    """Mix a fresh secret trigger set into a train stage's data if the config asks for a watermark (else None).

    ``ready`` is the train stage's :class:`tinymlops.train.Ready`; its training arrays are replaced.
    """
    section = getattr(cfg, "ip", None)
    if section is None or section.watermark is None:
        return None
    from tinymlops.errors import ConfigError

    if cfg.train.epochs == 0:
        raise ConfigError("ip.watermark: a watermark is learnt while training; train.epochs is 0")
    wm = make_watermark(ready.x_train, n_classes, section.watermark.triggers)
    ready.x_train, ready.y_train = with_triggers(ready.x_train, ready.y_train, wm, section.watermark.repeat)
    return wm


def replay_rows(cfg: Any, train_run: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Return the trigger set as ``repeat`` copies for the compress stage's fine-tuning (None: no ``ip.watermark``).

    The owner compressing their own model replays the secret set exactly as training mixed it in; fine-tuning on
    clean data alone (pruning above all) erodes the watermark. The rows join fine-tuning only, never int8
    calibration, and never leave the owner's process. UsageError if the parent's train run recorded no watermark.
    """
    section = getattr(cfg, "ip", None)
    if section is None or section.watermark is None:
        return None
    wm = load_run(cfg.mlflow.registered_model, train_run, " (ip.watermark is on; compress a version trained with it)")
    repeat = section.watermark.repeat
    return np.concatenate([wm.inputs] * repeat), np.concatenate([wm.labels] * repeat)
