"""Drift figures from sketches: binned divergences per feature, prediction/confidence shift, device metrics.

Everything here works on counts in the reference's open-ended bins (what devices report), never on raw data:
PSI, Jensen-Shannon distance, a chi-square homogeneity p-value and a Wasserstein approximation. NumPy + SciPy.
Decisions are not made here (see :mod:`tinymlops.monitor.verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.special import chdtrc

from tinymlops.monitor.cbpe import PerformanceEstimate, estimate
from tinymlops.monitor.config import EstimateSection
from tinymlops.monitor.reference import ReferenceProfile
from tinymlops.monitor.sketches import IncompatibleSketch, Sketch, edges_digest

#: additive smoothing per bin before taking logs: an empty bin must not make PSI infinite.
SMOOTHING = 0.5


class _Figures(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeatureFigures(_Figures):
    """Drift figures of one input feature in one window."""

    name: str
    n: int
    nonfinite: int
    psi: float
    js_distance: float
    wasserstein_norm: float
    p_value: float


class DistributionFigures(_Figures):
    """Drift figures of a categorical histogram (predicted class or confidence bins)."""

    n: int
    psi: float
    js_distance: float
    p_value: float
    reference_share: list[float]
    current_share: list[float]


class PerformanceFigures(_Figures):
    """Accuracy on labelled feedback against the reference figures."""

    n: int
    accuracy: float
    macro_f1: float
    reference_accuracy: float | None = None
    reference_macro_f1: float | None = None


class DeviceExpectation(_Figures):
    """What profiling predicted for a model on a target (None: not known)."""

    target: str = ""
    latency_ms: float | None = None
    peak_ram_bytes: int | None = None
    energy_uj: float | None = None


class DeviceFigures(_Figures):
    """Measured device metrics of a window (one device or merged) next to the expectation."""

    device: str
    n: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_max_ms: float
    peak_memory_bytes: int
    energy_uj_per_inference: float | None
    error_rate: float
    expected: DeviceExpectation


class RejectedSketch(_Figures):
    """A device report left out of the merge, and why."""

    device: str
    reason: str


class DriftFigures(_Figures):
    """Everything measured for one model version x target x cohort x window (input of the verdict)."""

    model: str
    version: str
    target: str | None = None
    cohort: str | None = None
    window_start: float | None = None
    window_end: float | None = None
    n_inferences: int
    n_devices: int
    features: list[FeatureFigures]
    predictions: DistributionFigures | None
    confidence: DistributionFigures | None
    performance: PerformanceFigures | None = None
    estimated: PerformanceEstimate | None = None  # label-free (CBPE) from the sketches, when calibrated
    devices: list[DeviceFigures] = []
    fleet_device: DeviceFigures | None = None
    rejected: list[RejectedSketch] = []


# ---------------------------------------------------------------------------------------------------------------
# divergences on binned counts
# ---------------------------------------------------------------------------------------------------------------


def _shares(counts: Sequence[float] | np.ndarray, smoothing: float = SMOOTHING) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64) + smoothing
    return c / c.sum()


def psi(reference_counts: Sequence[float] | np.ndarray, current_counts: Sequence[float] | np.ndarray) -> float:
    """Return the population stability index between two histograms on the same bins."""
    p, q = _shares(reference_counts), _shares(current_counts)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference_counts: Sequence[float] | np.ndarray,
                current_counts: Sequence[float] | np.ndarray) -> float:
    """Return the Jensen-Shannon distance (base 2, in [0, 1]) between two histograms on the same bins."""
    p, q = _shares(reference_counts, 0.0), _shares(current_counts, 0.0)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return math.sqrt(max(0.0, 0.5 * kl(p) + 0.5 * kl(q)))


def chi2_p_value(reference_counts: Sequence[float] | np.ndarray,
                 current_counts: Sequence[float] | np.ndarray) -> float:
    """Return the p-value of a chi-square test that two histograms come from the same distribution."""
    table = np.vstack([np.asarray(reference_counts, np.float64), np.asarray(current_counts, np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] < 2 or (rows == 0).any():
        return 1.0
    expected = rows[:, None] * table.sum(axis=0)[None, :] / rows.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    return float(chdtrc(table.shape[1] - 1, stat))


def wasserstein_norm(inner_edges: Sequence[float], reference_counts: Sequence[float] | np.ndarray,
                     current_counts: Sequence[float] | np.ndarray, reference_std: float,
                     reference_min: float, reference_max: float) -> float:
    """Approximate the 1-Wasserstein distance / reference std from histograms on open-ended bins.

    The CDFs are known exactly at the inner edges; between edges mass is taken as uniform (trapezoid on
    |F_ref - F_cur|). The open outer bins get a finite width: out to the reference min/max, capped at two mean
    inner-bin widths so that one extreme training value does not dominate. Location shifts come out within
    ~25 % of the raw-sample distance; scale changes are underestimated (the open bins hide how far tail mass
    moved), so this is a conservative figure there.
    """
    edges = np.asarray(inner_edges, dtype=np.float64)
    r, c = np.asarray(reference_counts, np.float64), np.asarray(current_counts, np.float64)
    if len(edges) == 0 or r.sum() == 0 or c.sum() == 0:
        return 0.0
    inner_w = float(np.mean(np.diff(edges))) if len(edges) > 1 else max(reference_std, 1e-12)
    lo = edges[0] - min(max(edges[0] - reference_min, 0.0), 2 * inner_w)
    hi = edges[-1] + min(max(reference_max - edges[-1], 0.0), 2 * inner_w)
    x = np.concatenate([[lo], edges, [hi]])
    diff = np.abs(np.cumsum(r)[:-1] / r.sum() - np.cumsum(c)[:-1] / c.sum())
    d = np.concatenate([[0.0], diff, [0.0]])
    w1 = float(np.sum(np.diff(x) * (d[:-1] + d[1:]) / 2))
    return w1 / max(reference_std, 1e-12)


def _distribution(reference_counts: Sequence[int], current_counts: Sequence[int]) -> DistributionFigures:
    r, c = np.asarray(reference_counts, np.float64), np.asarray(current_counts, np.float64)
    return DistributionFigures(
        n=int(c.sum()), psi=psi(r, c), js_distance=js_distance(r, c), p_value=chi2_p_value(r, c),
        reference_share=(r / max(r.sum(), 1)).round(4).tolist(), current_share=(c / max(c.sum(), 1)).round(4).tolist())


# ---------------------------------------------------------------------------------------------------------------
# sketches: compatibility, merge, figures
# ---------------------------------------------------------------------------------------------------------------


def incompatibility(reference: ReferenceProfile, sketch: Sketch) -> str | None:
    """Return why a sketch cannot be compared with a reference, or None when it can."""
    if sketch.edges_digest != edges_digest(reference):
        return f"bin edges {sketch.edges_digest} differ from the model's {edges_digest(reference)}"
    if len(sketch.feature_counts) != len(reference.features):
        return f"{len(sketch.feature_counts)} features, model has {len(reference.features)}"
    for f, counts in zip(reference.features, sketch.feature_counts, strict=True):
        if len(counts) != len(f.inner_edges) + 1:
            return f"feature {f.name}: {len(counts)} bins, model has {len(f.inner_edges) + 1}"
    if len(sketch.prediction_counts) != len(reference.class_names):
        return f"{len(sketch.prediction_counts)} classes, model has {len(reference.class_names)}"
    if len(sketch.confidence_counts) != len(reference.confidence_inner_edges) + 1:
        return "confidence histogram has the wrong number of bins"
    joint = sketch.class_confidence_counts
    if joint and (len(joint) != len(reference.class_names)
                  or any(len(row) != len(reference.confidence_inner_edges) + 1 for row in joint)):
        return "class x confidence histogram has the wrong shape"
    if len(sketch.nonfinite_counts) != len(reference.features):
        return "non-finite counters do not match the features"
    negative = any(v < 0 for row in [*sketch.feature_counts, *joint] for v in row) or sketch.n_inferences < 0
    if negative:
        return "negative counts"
    return None


@dataclass
class DeviceReport:
    """One device's telemetry for a window, as the drift check consumes it (the fleet store adapts to this)."""

    device: str
    sketch: Sketch | None
    version: str
    target: str | None = None
    cohort: str | None = None
    samples: np.ndarray | None = None  # opt-in model-input features (n, F)
    feedback_true: np.ndarray | None = None  # labelled feedback: true classes
    feedback_pred: np.ndarray | None = None  # ... and the model's predicted classes
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class MergeResult:
    """Merged sketch of the compatible reports, plus the reports left out and why."""

    merged: Sketch | None
    accepted: list[int]  # indices into the reports
    rejected: list[RejectedSketch]


def merge_reports(reference: ReferenceProfile, version: str, reports: Sequence[DeviceReport]) -> MergeResult:
    """Merge the sketches of reports for ``version`` on the reference's bins; reject (never merge) the others."""
    merged: Sketch | None = None
    accepted: list[int] = []
    rejected: list[RejectedSketch] = []
    for i, rep in enumerate(reports):
        if str(rep.version) != str(version):
            rejected.append(RejectedSketch(device=rep.device,
                                           reason=f"incompatible sketch: reported for unknown version {rep.version}"))
            continue
        if rep.sketch is None:
            continue
        why = incompatibility(reference, rep.sketch)
        if why is not None:
            rejected.append(RejectedSketch(device=rep.device, reason=f"incompatible sketch: {why}"))
            continue
        try:
            merged = rep.sketch if merged is None else merged.merge(rep.sketch)
        except IncompatibleSketch as exc:
            rejected.append(RejectedSketch(device=rep.device, reason=f"incompatible sketch: {exc}"))
            continue
        accepted.append(i)
    return MergeResult(merged, accepted, rejected)


def feature_figures(reference: ReferenceProfile, sketch: Sketch) -> list[FeatureFigures]:
    """Return per-feature drift figures of a (compatible) sketch against the reference."""
    out = []
    for j, f in enumerate(reference.features):
        cur = sketch.feature_counts[j]
        out.append(FeatureFigures(
            name=f.name, n=int(sum(cur)), nonfinite=int(sketch.nonfinite_counts[j]),
            psi=psi(f.counts, cur), js_distance=js_distance(f.counts, cur),
            wasserstein_norm=wasserstein_norm(f.inner_edges, f.counts, cur, f.std, f.min, f.max),
            p_value=chi2_p_value(f.counts, cur)))
    return out


def prediction_figures(reference: ReferenceProfile, sketch: Sketch) -> DistributionFigures:
    """Return the shift of the predicted-class histogram."""
    return _distribution(reference.prediction_counts, sketch.prediction_counts)


def confidence_figures(reference: ReferenceProfile, sketch: Sketch) -> DistributionFigures:
    """Return the shift of the top-class confidence histogram."""
    return _distribution(reference.confidence_counts, sketch.confidence_counts)


def device_figures(device: str, sketch: Sketch, expected: DeviceExpectation) -> DeviceFigures:
    """Return a sketch's measured latency, memory, energy and error rate next to the profiled expectation."""
    n = sketch.n_inferences
    return DeviceFigures(
        device=device, n=n, latency_p50_ms=sketch.latency_quantile_ms(0.5),
        latency_p95_ms=sketch.latency_quantile_ms(0.95), latency_max_ms=sketch.latency_max_ms,
        peak_memory_bytes=sketch.peak_memory_bytes,
        energy_uj_per_inference=(sketch.energy_uj_total / n) if n and sketch.energy_uj_total > 0 else None,
        error_rate=(sketch.errors + sketch.rejections) / max(n + sketch.errors + sketch.rejections, 1),
        expected=expected)


def performance_figures(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int,
                        reference_metrics: dict[str, float] | None = None) -> PerformanceFigures:
    """Return accuracy and macro-F1 of labelled feedback (classes absent from both count as undefined, skipped)."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    ok = (t >= 0) & (t < n_classes) & (p >= 0) & (p < n_classes)
    t, p = t[ok], p[ok]
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    f1 = np.where(present, 2 * tp / np.maximum(support + predicted, 1), 0.0)
    ref = reference_metrics or {}
    return PerformanceFigures(
        n=int(len(t)), accuracy=float(tp.sum() / max(len(t), 1)),
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        reference_accuracy=ref.get("accuracy"), reference_macro_f1=ref.get("macro_f1"))


def estimated_performance(reference: ReferenceProfile, sketch: Sketch,
                          options: EstimateSection | None = None) -> PerformanceEstimate | None:
    """Return the label-free accuracy/macro-F1 estimate of a sketch (None: not calibrated, or turned off)."""
    cal = reference.calibration
    opt = options or EstimateSection()
    if not opt.enabled or cal is None or cal.confidence_inner_edges != reference.confidence_inner_edges:
        return None
    return estimate(cal, sketch.class_confidence_counts, sketch.prediction_counts, sketch.confidence_counts,
                    level=opt.interval, reference=reference.metrics, class_prior=opt.class_prior)


def compute_figures(reference: ReferenceProfile, model: str, version: str, reports: Sequence[DeviceReport],
                    expected: DeviceExpectation | None = None, target: str | None = None,
                    cohort: str | None = None, estimate_options: EstimateSection | None = None) -> DriftFigures:
    """Merge the reports' sketches and measure every drift figure of the window."""
    expected = expected or DeviceExpectation(target=target or "")
    result = merge_reports(reference, version, reports)
    s = result.merged
    good = [reports[i] for i in result.accepted]
    per_device: dict[str, Sketch] = {}
    for r in good:
        assert r.sketch is not None
        per_device[r.device] = r.sketch if r.device not in per_device else per_device[r.device].merge(r.sketch)
    devices = [device_figures(d, sk, expected) for d, sk in sorted(per_device.items()) if sk.n_inferences > 0]
    labelled = [r for r in good if r.feedback_true is not None and r.feedback_pred is not None]
    perf = None
    if labelled:
        perf = performance_figures(np.concatenate([np.asarray(r.feedback_true) for r in labelled]),
                                   np.concatenate([np.asarray(r.feedback_pred) for r in labelled]),
                                   len(reference.class_names), reference.metrics)
    has_data = s is not None and s.n_inferences > 0
    return DriftFigures(
        model=model, version=str(version), target=target, cohort=cohort,
        window_start=s.window_start if s else None, window_end=s.window_end if s else None,
        n_inferences=s.n_inferences if s else 0, n_devices=len(per_device),
        features=feature_figures(reference, s) if has_data and s else [],
        predictions=prediction_figures(reference, s) if has_data and s else None,
        confidence=confidence_figures(reference, s) if has_data and s else None,
        performance=perf, estimated=estimated_performance(reference, s, estimate_options) if has_data and s else None,
        devices=devices,
        fleet_device=device_figures("fleet", s, expected) if has_data and s else None,
        rejected=result.rejected)
