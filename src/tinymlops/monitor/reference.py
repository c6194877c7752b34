"""Reference profile computed at training time and shipped in every model package.

Per feature: quantile bin edges, histogram and moments; plus the prediction-class and confidence distributions.
Devices sketch their live inputs on exactly these bins, so drift can be measured without raw data leaving them.
Bins are open-ended at both sides: ``inner_edges`` has ``bins - 1`` cut points and a value falls in bin
``searchsorted(inner_edges, value, side="right")``.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from tinymlops.ip.extraction import QueryBaseline, natural_baseline
from tinymlops.monitor.cbpe import Calibration, fit_calibration

CONFIDENCE_EDGES: list[float] = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


class FeatureReference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    inner_edges: list[float]
    counts: list[int]
    mean: float
    std: float
    min: float
    max: float


class ReferenceProfile(BaseModel):
    """What "normal" looked like on the reference (training) data."""

    model_config = ConfigDict(extra="forbid")

    n: int
    bins: int
    features: list[FeatureReference]
    class_names: list[str]
    prediction_counts: list[int]
    confidence_inner_edges: list[float]
    confidence_counts: list[int]
    metrics: dict[str, float] = {}
    calibration: Calibration | None = None  # validation-split confidence calibration (label-free estimates)
    queries: QueryBaseline | None = None  # natural query figures: extraction detection's baseline (tinymlops.ip)


def bin_counts(inner_edges: np.ndarray | list[float], values: np.ndarray) -> np.ndarray:
    """Count finite values into the open-ended bins defined by ``inner_edges`` (len(inner_edges)+1 counts)."""
    edges = np.asarray(inner_edges, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    idx = np.searchsorted(edges, v, side="right")
    return np.bincount(idx, minlength=len(edges) + 1)


def quantile_edges(values: np.ndarray, bins: int) -> list[float]:
    """Return up to ``bins - 1`` distinct quantile cut points of the values."""
    q = np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, bins + 1)[1:-1])
    return sorted(set(np.round(q, 9).tolist()))


def compute_reference(features: np.ndarray, probabilities: np.ndarray, feature_names: list[str],
                      class_names: list[str], bins: int = 10,
                      metrics: dict[str, float] | None = None,
                      calibration: tuple[np.ndarray, np.ndarray] | None = None,
                      prior_labels: np.ndarray | None = None) -> ReferenceProfile:
    """Compute the reference profile from model inputs (N, F) and model outputs (N, C).

    ``calibration``: (probabilities, labels) of a held-out split (the validation split) to calibrate the model's
    confidence on, for label-free performance estimates (:mod:`tinymlops.monitor.cbpe`); ``prior_labels``: the
    training labels (the class mix a cohort is assumed to keep; default the calibration split's).
    """
    feats = []
    for j, name in enumerate(feature_names):
        col = features[:, j].astype(np.float64)
        edges = quantile_edges(col, bins)
        feats.append(FeatureReference(name=name, inner_edges=edges, counts=bin_counts(edges, col).tolist(),
                                      mean=float(col.mean()), std=float(col.std()), min=float(col.min()),
                                      max=float(col.max())))
    pred = probabilities.argmax(axis=1)
    conf = probabilities.max(axis=1)
    return ReferenceProfile(
        n=len(features), bins=bins, features=feats, class_names=list(class_names),
        prediction_counts=np.bincount(pred, minlength=len(class_names)).tolist(),
        confidence_inner_edges=CONFIDENCE_EDGES, confidence_counts=bin_counts(CONFIDENCE_EDGES, conf).tolist(),
        metrics=metrics or {},
        calibration=fit_calibration(calibration[0], calibration[1], CONFIDENCE_EDGES, prior_labels)
        if calibration is not None and len(calibration[1]) else None,
        queries=natural_baseline(features, probabilities, calibration[0] if calibration is not None else None),
    )
