"""On-device personalisation (issue 16): adapt the fleet's model to one device without its data leaving it.

Two adaptations, both small enough for a Linux-class device and computed with numpy only:

- **Feature calibration** (needs no labels): the device's running per-feature mean and standard deviation are
  mapped back onto the reference profile's (``x' = (x - mean_dev) * std_ref / std_dev + mean_ref``). A sensor gain
  or offset change moves exactly these moments, so this undoes it. It is also what survives on a microcontroller:
  the same per-feature scale and shift fold into the pre-processing's standardisation constants.
- **Personal head** (needs labels): a softmax layer over the model's log-probabilities, started at the identity
  (it changes nothing until trained) and fitted on the device's own labelled samples with an L2 pull back to the
  identity, so a handful of samples cannot run away with it. It corrects what calibration cannot, e.g. a device
  whose class mix differs from the fleet's.

Neither is trusted blindly: :func:`fit` scores the base model, the calibration, and a head on either, by K-fold
cross-validated log-loss on the labelled samples (at most ``max_labelled``), and keeps the best only if it beats the
base model. A class-mix change, for instance, moves the feature moments too; the labelled samples then show that
calibrating makes things worse, and it is not used.

The base model and its package stay the fleet's; the device keeps its personalisation (a few hundred numbers)
locally and reports only counts (:class:`PersonalFigures`: how many later labelled inferences the base model and
the personalised one got right), never the samples or the head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["none", "calibration", "head", "calibration+head"]
KINDS: tuple[Kind, ...] = ("none", "calibration", "head", "calibration+head")
#: what a microcontroller keeps: the calibration folds into its C pre-processing (:func:`fold_calibration`)
MCU_KINDS: tuple[Kind, ...] = ("none", "calibration")
#: bounds on the calibration's per-feature scale: a device whose moments are that far off is broken, not drifted
SCALE_BOUNDS = (0.2, 5.0)


class PersonalFigures(BaseModel):
    """What a device reports about its personalisation in a telemetry window: counts only, never data."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind
    labelled: int = Field(ge=0, le=100_000, description="labelled samples the active personalisation was fitted on")
    evaluated: int = Field(0, ge=0, le=10_000_000, description="labelled inferences scored since (out of sample)")
    correct_base: int = Field(0, ge=0, le=10_000_000, description="of those, right by the fleet's model")
    correct_personal: int = Field(0, ge=0, le=10_000_000, description="of those, right after personalisation")

    def model_post_init(self, _: Any) -> None:
        if self.correct_base > self.evaluated or self.correct_personal > self.evaluated:
            raise ValueError("personal figures: more correct answers than evaluated inferences")


@dataclass
class Moments:
    """Running per-feature mean and variance (Welford), over every input the device has served."""

    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(x)):
            return
        if self.mean is None or self.m2 is None or self.mean.shape != x.shape:
            self.n, self.mean, self.m2 = 0, np.zeros_like(x), np.zeros_like(x)
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    @property
    def std(self) -> np.ndarray | None:
        return None if self.m2 is None or self.n < 2 else np.sqrt(self.m2 / (self.n - 1))


@dataclass
class Personalisation:
    """A fitted personalisation: feature scale/shift and/or a head over log-probabilities (identity = none)."""

    kind: Kind = "none"
    scale: np.ndarray | None = None
    shift: np.ndarray | None = None
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    labelled: int = 0
    cv_loss: dict[str, float] = field(default_factory=dict)
    cv_accuracy: dict[str, float] = field(default_factory=dict)

    def features(self, x: np.ndarray) -> np.ndarray:
        """Map model-input features (one sample or a batch) through the calibration, if any."""
        if self.scale is None or self.shift is None:
            return x
        return (np.asarray(x, dtype=np.float64) * self.scale + self.shift).astype(np.float32)

    def outputs(self, probabilities: np.ndarray) -> np.ndarray:
        """Map the model's class probabilities (one sample or a batch) through the head, if any."""
        if self.weight is None or self.bias is None:
            return probabilities
        return _softmax(_log(probabilities) @ self.weight.T + self.bias)

    def to_json(self) -> dict[str, Any]:
        def arr(a: np.ndarray | None) -> list[Any] | None:
            return None if a is None else a.tolist()

        return {"kind": self.kind, "scale": arr(self.scale), "shift": arr(self.shift), "weight": arr(self.weight),
                "bias": arr(self.bias), "labelled": self.labelled, "cv_loss": self.cv_loss,
                "cv_accuracy": self.cv_accuracy}

    @classmethod
    def from_json(cls, d: dict[str, Any], n_features: int, n_classes: int) -> Personalisation:
        """Rebuild a saved personalisation; ValueError if it does not fit a model of these shapes."""
        if d.get("kind") not in KINDS:
            raise ValueError(f"unknown personalisation kind {d.get('kind')!r}")

        def arr(key: str, shape: tuple[int, ...]) -> np.ndarray | None:
            if d.get(key) is None:
                return None
            a = np.asarray(d[key], dtype=np.float64)
            if a.shape != shape or not np.all(np.isfinite(a)):
                raise ValueError(f"personalisation {key}: shape {a.shape}, expected {shape}")
            return a

        return cls(kind=d["kind"], scale=arr("scale", (n_features,)), shift=arr("shift", (n_features,)),
                   weight=arr("weight", (n_classes, n_classes)), bias=arr("bias", (n_classes,)),
                   labelled=int(d.get("labelled", 0)))


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1.0))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(_log(p[np.arange(len(y)), y])))


def calibration(moments: Moments, ref_mean: np.ndarray, ref_std: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Return (scale, shift) mapping the device's feature moments onto the reference's, or None if unusable."""
    dev_std = moments.std
    if dev_std is None or moments.mean is None or dev_std.shape != ref_mean.shape:
        return None
    ok = (dev_std > 1e-9) & (ref_std > 1e-9)
    scale = np.where(ok, ref_std / np.where(ok, dev_std, 1.0), 1.0)
    scale = np.clip(scale, *SCALE_BOUNDS)
    shift = np.where(ok, ref_mean - moments.mean * scale, 0.0)
    return scale, shift


def fit_head(log_p: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1.0, steps: int = 300,
             lr: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Fit a softmax head over log-probabilities by gradient descent, pulled towards the identity (L2)."""
    eye = np.eye(n_classes)
    w, b = eye.copy(), np.zeros(n_classes)
    onehot = eye[y]
    n = max(len(y), 1)
    for _ in range(steps):
        g = (_softmax(log_p @ w.T + b) - onehot) / n
        w -= lr * (g.T @ log_p + l2 * (w - eye) / n)
        b -= lr * (g.sum(axis=0) + l2 * b / n)
    return w, b


def _cv_head(log_p: np.ndarray, y: np.ndarray, n_classes: int, folds: int) -> np.ndarray:
    """Return out-of-fold probabilities of a head fitted on the other folds."""
    out = np.zeros((len(y), n_classes))
    for k in range(folds):
        test = np.arange(len(y)) % folds == k
        w, b = fit_head(log_p[~test], y[~test], n_classes)
        out[test] = _softmax(log_p[test] @ w.T + b)
    return out


def kinds_for_runtime(family: str) -> tuple[Kind, ...]:
    """Return the personalisations a runtime family can carry: calibration only on TFLM (microcontrollers)."""
    return MCU_KINDS if family == "tflm" else KINDS


def fit(x: np.ndarray, y: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], moments: Moments,
        ref_mean: np.ndarray, ref_std: np.ndarray, min_gain: float = 0.02, folds: int = 5,
        kinds: tuple[Kind, ...] = KINDS) -> Personalisation:
    """Choose and fit the personalisation that best explains a device's labelled samples.

    ``x`` holds the samples' model-input features (uncalibrated), ``y`` their labels, ``predict`` runs the fleet's
    model on a batch and returns probabilities. Candidates (those in ``kinds``) are scored by cross-validated
    log-loss; one is kept only if it beats the base model by ``min_gain`` nats and is not less accurate.
    """
    y = np.asarray(y, dtype=np.int64)
    base = np.asarray(predict(np.asarray(x, dtype=np.float32)), dtype=np.float64)
    n_classes = base.shape[1]
    probs: dict[Kind, np.ndarray] = {"none": base}
    cal = calibration(moments, ref_mean, ref_std) if {"calibration", "calibration+head"} & set(kinds) else None
    if cal is not None:
        calibrated = Personalisation(scale=cal[0], shift=cal[1])
        probs["calibration"] = np.asarray(predict(calibrated.features(x)), dtype=np.float64)
    if len(y) >= 2 * folds:
        if "head" in kinds:
            probs["head"] = _cv_head(_log(base), y, n_classes, folds)
        if "calibration+head" in kinds and "calibration" in probs:
            probs["calibration+head"] = _cv_head(_log(probs["calibration"]), y, n_classes, folds)
    loss: dict[str, float] = {k: log_loss(p, y) for k, p in probs.items()}
    accuracy: dict[str, float] = {k: float((p.argmax(axis=1) == y).mean()) for k, p in probs.items()}
    best: Kind = min((k for k in probs if k == "none" or k in kinds), key=lambda k: loss[k])
    if best != "none" and (loss[best] > loss["none"] - min_gain or accuracy[best] < accuracy["none"]):
        best = "none"
    chosen = Personalisation(kind=best, labelled=len(y), cv_loss=loss, cv_accuracy=accuracy)
    if best.startswith("calibration") and cal is not None:
        chosen.scale, chosen.shift = cal
    if best.endswith("head"):
        chosen.weight, chosen.bias = fit_head(_log(probs["calibration" if best != "head" else "none"]), y,
                                              n_classes)
    return chosen


def fold_calibration(spec: Any, scale: np.ndarray, shift: np.ndarray) -> Any:
    """Return a copy of a fitted pre-processing that also applies a device's feature calibration.

    What survives on a microcontroller: the map ``x * scale + shift`` folds into a final ``standardize`` block's
    constants (``mean - shift * std / scale``, ``std / scale``), or becomes one appended ``standardize`` block, so
    a per-device export (``tinymlops export``) carries it in its C pre-processing with no new code on the device.
    """
    from tinymlops.preprocessing.pipeline import FittedPreprocessing
    from tinymlops.preprocessing.standardize import Standardize

    if not isinstance(spec, FittedPreprocessing):
        spec = FittedPreprocessing.model_validate(spec)
    scale, shift = np.asarray(scale, dtype=np.float64), np.asarray(shift, dtype=np.float64)
    if scale.shape != (spec.n_features,) or shift.shape != scale.shape or np.any(scale <= 0):
        raise ValueError(f"calibration for {scale.shape} features does not fit a pre-processing with "
                         f"{spec.n_features} (scales must be positive)")
    blocks = list(spec.blocks)
    last = blocks[-1] if blocks else None
    if isinstance(last, Standardize) and last.mode == "feature" and last.mean and len(last.mean) == len(scale):
        mean, std = np.asarray(last.mean), np.asarray(last.std)
        blocks[-1] = last.model_copy(update={"mean": (mean - shift * std / scale).tolist(),
                                             "std": (std / scale).tolist()})
    else:
        blocks.append(Standardize(mean=(-shift / scale).tolist(), std=(1.0 / scale).tolist()))
    return spec.model_copy(update={"blocks": blocks})
