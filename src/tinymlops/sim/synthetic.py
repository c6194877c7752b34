"""Vibration-task device telemetry without a fleet: for the drift benchmark, tests and calibration.

A small softmax classifier (scikit-learn) stands in for the deployed model; devices draw sensor windows from
:func:`tinymlops.data.vibration.stream` (with covariate-shift knobs), run the same pre-processing and sketch
their inferences on the reference bins exactly as the edge agent does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinymlops import preprocessing
from tinymlops.config import PreprocessingSection
from tinymlops.data import vibration
from tinymlops.data.config import VibrationParams
from tinymlops.monitor.drift import DeviceReport
from tinymlops.monitor.reference import ReferenceProfile, compute_reference
from tinymlops.monitor.sketches import SketchBuilder


def draw(p: VibrationParams, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` consecutive (window, label) pairs of one device's sensor stream."""
    it = vibration.stream(p, seed)
    pairs = [next(it) for _ in range(n)]
    return np.stack([w for w, _ in pairs]), np.asarray([lbl for _, lbl in pairs], dtype=np.int64)


@dataclass
class Scenario:
    """A trained stand-in model with its pre-processing, reference profile and reference sample."""

    spec: preprocessing.FittedPreprocessing
    model: object
    reference: ReferenceProfile
    reference_features: np.ndarray
    reference_labels: np.ndarray

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Return class probabilities (N, C) for model-input features."""
        return np.asarray(self.model.predict_proba(features), dtype=np.float64)  # type: ignore[attr-defined]

    def device_report(self, device: str, version: str, p: VibrationParams, seed: int, n: int,
                      latency_ms: float = 2.0, memory_bytes: int = 20_000, energy_uj: float = 50.0,
                      cohort: str | None = None, target: str | None = None, keep_samples: bool = False,
                      feedback: int = 0, t0: float = 0.0) -> DeviceReport:
        """Simulate ``n`` inferences on one device and return its report (sketch, opt-in samples, feedback)."""
        X, y = draw(p, seed, n)
        F = preprocessing.transform(self.spec, X)
        P = self.predict_proba(F)
        b = SketchBuilder(self.reference)
        rng = np.random.default_rng(seed)
        for i in range(n):
            b.add(F[i], P[i], latency_ms=float(latency_ms * rng.uniform(0.9, 1.1)), timestamp=t0 + i,
                  energy_uj=energy_uj, memory_bytes=memory_bytes)
        pred = P.argmax(axis=1)
        k = min(feedback, n)
        return DeviceReport(device=device, sketch=b.flush(), version=version, target=target, cohort=cohort,
                            samples=F if keep_samples else None,
                            feedback_true=y[:k] if k else None, feedback_pred=pred[:k] if k else None)


def build_scenario(n_reference: int = 2000, seed: int = 1, bins: int = 10,
                   params: VibrationParams | None = None) -> Scenario:
    """Fit spectral pre-processing and a logistic-regression model on a device-like stream; profile it."""
    from sklearn.linear_model import LogisticRegression

    p = params or VibrationParams()
    X, y = draw(p, seed, n_reference)
    spec = preprocessing.fit(PreprocessingSection(features="spectral", bands=8), X, p.sample_rate_hz)
    F = preprocessing.transform(spec, X)
    model = LogisticRegression(max_iter=500).fit(F, y)
    # held-out figures: the reference metrics drift checks compare feedback against, and the confidence calibration
    Xh, yh = draw(p, seed + 10_000, 500)
    Fh = preprocessing.transform(spec, Xh)
    pred = model.predict(Fh)
    from tinymlops.monitor.drift import performance_figures

    perf = performance_figures(yh, pred, len(vibration.CLASSES))
    probs = np.asarray(model.predict_proba(F))
    ref = compute_reference(F, probs, spec.feature_names, list(vibration.CLASSES), bins=bins,
                            metrics={"accuracy": perf.accuracy, "macro_f1": perf.macro_f1},
                            calibration=(np.asarray(model.predict_proba(Fh)), yh), prior_labels=y)
    return Scenario(spec=spec, model=model, reference=ref, reference_features=F, reference_labels=y)
