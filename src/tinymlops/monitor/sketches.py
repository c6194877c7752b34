"""Mergeable telemetry sketches: what a device reports instead of raw data.

A sketch holds only counts on the model package's reference bins, class counts, a confidence histogram (also
per predicted class, for label-free performance estimates),
a log-spaced latency histogram (p50/p95 recoverable, max exact), peak memory, energy and error counters.
Sketches from many devices and windows merge exactly (counts add, maxima take the max), so fleet-level drift is
computed from the same figures any subset of devices would give. NumPy + pydantic only.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tinymlops.ip.extraction import ExtractionFigures, QueryDistanceMonitor
from tinymlops.monitor.reference import ReferenceProfile
from tinymlops.personalise import PersonalFigures

#: latency histogram: 0.001 ms .. ~100 s, 8 bins per decade; bin 0 is below the first edge.
LATENCY_EDGES_MS: list[float] = [float(x) for x in np.logspace(-3, 5, 65)]


class IncompatibleSketch(ValueError):
    """Two sketches (or a sketch and a reference) were made on different bins and cannot be merged."""


def edges_digest(reference: ReferenceProfile) -> str:
    """Return a short hash of a reference's bin edges; sketches carry it so mismatches are detected."""
    blob = json.dumps([f.inner_edges for f in reference.features] + [reference.confidence_inner_edges])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Sketch(BaseModel):
    """Privacy-preserving summary of a window of inferences on one or more devices."""

    model_config = ConfigDict(extra="forbid")

    edges_digest: str
    n_inferences: int = 0
    feature_counts: list[list[int]]
    nonfinite_counts: list[int]
    prediction_counts: list[int]
    confidence_counts: list[int]
    #: [predicted class][confidence bin]; empty when an older agent did not report it (label-free estimates)
    class_confidence_counts: list[list[int]] = Field(default_factory=list)
    latency_counts: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))
    latency_max_ms: float = 0.0
    peak_memory_bytes: int = 0
    energy_uj_total: float = 0.0
    errors: int = 0
    rejections: int = 0
    window_start: float | None = None
    window_end: float | None = None
    #: the device's query-distance statistic (extraction detection, tinymlops.ip); per device, not merged
    extraction: ExtractionFigures | None = None
    #: the device's on-device personalisation: base vs personalised hits on later labelled inferences; per device
    personal: PersonalFigures | None = None

    @classmethod
    def empty(cls, reference: ReferenceProfile) -> Sketch:
        """Return an empty sketch on a reference's bins."""
        return cls(
            edges_digest=edges_digest(reference),
            feature_counts=[[0] * (len(f.inner_edges) + 1) for f in reference.features],
            nonfinite_counts=[0] * len(reference.features),
            prediction_counts=[0] * len(reference.class_names),
            confidence_counts=[0] * (len(reference.confidence_inner_edges) + 1),
            class_confidence_counts=[[0] * (len(reference.confidence_inner_edges) + 1)
                                     for _ in reference.class_names],
        )

    def merge(self, other: Sketch) -> Sketch:
        """Return the exact merge of two sketches on the same bins (IncompatibleSketch otherwise)."""
        if other.edges_digest != self.edges_digest or len(other.feature_counts) != len(self.feature_counts):
            raise IncompatibleSketch(f"sketch bins {other.edges_digest} differ from {self.edges_digest}")

        def add(a: list[int], b: list[int]) -> list[int]:
            if len(a) != len(b):
                raise IncompatibleSketch("histogram lengths differ")
            return [x + y for x, y in zip(a, b, strict=True)]

        # the class x confidence histogram survives a merge only if every non-empty part has it
        if self.class_confidence_counts and other.class_confidence_counts:
            joint = [add(a, b) for a, b in zip(self.class_confidence_counts, other.class_confidence_counts,
                                               strict=True)]
        elif not other.n_inferences or not self.n_inferences:
            joint = self.class_confidence_counts or other.class_confidence_counts
        else:
            joint = []
        starts = [t for t in (self.window_start, other.window_start) if t is not None]
        ends = [t for t in (self.window_end, other.window_end) if t is not None]
        return Sketch(
            edges_digest=self.edges_digest,
            n_inferences=self.n_inferences + other.n_inferences,
            feature_counts=[add(a, b) for a, b in zip(self.feature_counts, other.feature_counts, strict=True)],
            nonfinite_counts=add(self.nonfinite_counts, other.nonfinite_counts),
            prediction_counts=add(self.prediction_counts, other.prediction_counts),
            confidence_counts=add(self.confidence_counts, other.confidence_counts),
            class_confidence_counts=joint,
            latency_counts=add(self.latency_counts, other.latency_counts),
            latency_max_ms=max(self.latency_max_ms, other.latency_max_ms),
            peak_memory_bytes=max(self.peak_memory_bytes, other.peak_memory_bytes),
            energy_uj_total=self.energy_uj_total + other.energy_uj_total,
            errors=self.errors + other.errors,
            rejections=self.rejections + other.rejections,
            window_start=min(starts) if starts else None,
            window_end=max(ends) if ends else None,
        )

    def latency_quantile_ms(self, q: float) -> float | None:
        """Approximate a latency quantile from the histogram (upper edge of the bin holding it)."""
        counts = np.asarray(self.latency_counts)
        total = counts.sum()
        if total == 0:
            return None
        i = int(np.searchsorted(np.cumsum(counts), q * total))
        upper = LATENCY_EDGES_MS[min(i, len(LATENCY_EDGES_MS) - 1)]
        return float(min(upper, self.latency_max_ms)) if self.latency_max_ms else float(upper)


class SketchBuilder:
    """Accumulates one device's inferences into a sketch (runs on the device; raw inputs stay local)."""

    def __init__(self, reference: ReferenceProfile) -> None:
        self.reference = reference
        self._edges = [np.asarray(f.inner_edges) for f in reference.features]
        self._confidence_edges = np.asarray(reference.confidence_inner_edges, dtype=np.float64)
        self.sketch = Sketch.empty(reference)
        self.queries = QueryDistanceMonitor()  # spans windows: raw inputs stay on the device

    def add(self, features: np.ndarray, probabilities: np.ndarray, latency_ms: float, timestamp: float,
            energy_uj: float = 0.0, memory_bytes: int = 0) -> None:
        """Add one inference: its model input features, output probabilities and measured cost."""
        s = self.sketch
        f = np.asarray(features, dtype=np.float64).reshape(-1)
        for j, edges in enumerate(self._edges):
            v = f[j]
            if np.isfinite(v):
                s.feature_counts[j][int(np.searchsorted(edges, v, side="right"))] += 1
            else:
                s.nonfinite_counts[j] += 1
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        cls = int(p.argmax())
        top = p.max()
        conf_bin = int(np.searchsorted(self._confidence_edges, top, side="right")) if np.isfinite(top) else 0
        s.prediction_counts[cls] += 1
        s.confidence_counts[conf_bin] += 1
        s.class_confidence_counts[cls][conf_bin] += 1
        s.latency_counts[int(np.searchsorted(LATENCY_EDGES_MS, latency_ms, side="right"))] += 1
        s.latency_max_ms = max(s.latency_max_ms, float(latency_ms))
        s.peak_memory_bytes = max(s.peak_memory_bytes, int(memory_bytes))
        s.energy_uj_total += float(energy_uj)
        s.n_inferences += 1
        s.window_start = timestamp if s.window_start is None else min(s.window_start, timestamp)
        s.window_end = timestamp if s.window_end is None else max(s.window_end, timestamp)
        self.queries.add(f, p)

    def flush(self) -> Sketch:
        """Return the accumulated sketch and start a new window."""
        out, self.sketch = self.sketch, Sketch.empty(self.reference)
        if out.n_inferences:
            out.extraction = ExtractionFigures(**self.queries.figures())
        return out


def merge_all(sketches: list[Sketch]) -> Sketch | None:
    """Merge a list of sketches (None for an empty list)."""
    if not sketches:
        return None
    total = sketches[0]
    for s in sketches[1:]:
        total = total.merge(s)
    return total
