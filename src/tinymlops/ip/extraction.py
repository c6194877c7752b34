"""Extraction-attack detection without raw data: a PRADA-style statistic computed on the device.

PRADA (Juuti et al. 2019) observes that a model-extraction attacker's synthetic queries (Jacobian augmentation,
boundary probing, random probing) are spaced unlike natural inputs: for each new query, the distance to the closest
earlier query of the same predicted class follows a roughly normal law for natural data and a skewed, multi-modal
one for synthetic probing. The device keeps a bounded memory of recent inputs per predicted class (never sent), and
reports only numbers per telemetry window: the Shapiro-Francia normality statistic W of the recent log
min-distances (natural inputs: close to log-normal), the fraction of exact repeats,
their quantiles, and the fraction of low-margin answers (boundary probing). :func:`assess` turns one device's
figures into a ``suspected-extraction`` decision with the evidence (pure: figures + thresholds in, decision out).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

#: answers whose top-1 minus top-2 probability is below this count as low-margin
LOW_MARGIN = 0.5


def shapiro_francia(x: np.ndarray) -> float:
    """Return the Shapiro-Francia W' (squared correlation of the sorted sample with normal scores; 1 = normal)."""
    n = len(x)
    if n < 5:
        return 1.0
    s = np.sort(np.asarray(x, dtype=np.float64))
    if s[-1] - s[0] <= 0:
        return 0.0  # all equal: as far from a continuous normal law as a sample gets
    inv = NormalDist().inv_cdf
    m = np.array([inv((i - 0.375) / (n + 0.25)) for i in range(1, n + 1)])
    r = np.corrcoef(s, m)[0, 1]
    return float(r * r)


class ExtractionFigures(BaseModel):
    """What a device reports about its query pattern (numbers only; bounded, so a hostile report cannot bloat)."""

    model_config = ConfigDict(extra="forbid")

    queries: float = Field(ge=0, le=1e15)
    distances: float = Field(ge=0, le=1e9)
    w: float = Field(ge=0, le=1)
    repeat_fraction: float = Field(ge=0, le=1)
    dist_p10: float = Field(ge=0, le=1e30)
    dist_p50: float = Field(ge=0, le=1e30)
    dist_p90: float = Field(ge=0, le=1e30)
    low_margin_fraction: float = Field(ge=0, le=1)


class QueryDistanceMonitor:
    """On-device PRADA state: recent inputs per predicted class (kept local) and the recent min-distances."""

    def __init__(self, memory_per_class: int = 256, distances: int = 1000) -> None:
        self.memory_per_class = memory_per_class
        self._seen: dict[int, np.ndarray] = {}  # class -> ring buffer of recent inputs
        self._filled: dict[int, int] = {}
        self._dist: deque[float] = deque(maxlen=distances)
        self._low_margin: deque[bool] = deque(maxlen=distances)
        self.queries = 0

    def add(self, features: np.ndarray, probs: np.ndarray) -> None:
        """Account one query: its distance to the closest earlier query of the same predicted class, its margin."""
        v = np.asarray(features, dtype=np.float32).reshape(-1)
        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        if not (np.all(np.isfinite(v)) and np.all(np.isfinite(p))) or p.size == 0:
            return
        c = int(np.argmax(p))
        ring = self._seen.get(c)
        if ring is None or ring.shape[1] != v.size:
            ring = self._seen[c] = np.empty((self.memory_per_class, v.size), np.float32)
            self._filled[c] = 0
        n = self._filled[c]
        if n:
            self._dist.append(float(np.sqrt(((ring[:min(n, len(ring))] - v) ** 2).mean(axis=1)).min()))
        ring[n % len(ring)] = v
        self._filled[c] = n + 1
        top2 = np.partition(p, -2)[-2:] if p.size > 1 else np.array([0.0, 1.0])
        self._low_margin.append(bool(top2[1] - top2[0] < LOW_MARGIN))
        self.queries += 1

    def figures(self) -> dict[str, float]:
        """Return the numbers a telemetry report carries (no inputs): W, repeats, min-distance quantiles, margins."""
        d = np.asarray(self._dist, dtype=np.float64)
        q = np.quantile(d, [0.1, 0.5, 0.9]) if len(d) else np.zeros(3)
        pos = d[d > 1e-9]
        return {"queries": float(self.queries), "distances": float(len(d)),
                "w": shapiro_francia(np.log(pos)) if len(pos) else 0.0,
                "repeat_fraction": float(np.mean(d <= 1e-9)) if len(d) else 0.0,
                "dist_p10": float(q[0]), "dist_p50": float(q[1]), "dist_p90": float(q[2]),
                "low_margin_fraction": float(np.mean(self._low_margin)) if self._low_margin else 0.0}


@dataclass(frozen=True)
class ExtractionThresholds:
    """When a device's query pattern counts as synthetic probing (defaults calibrated in benchmarks/ip.py)."""

    min_distances: int = 200
    w_below: float = 0.93
    repeat_above: float = 0.02
    low_margin_above: float = 0.12


@dataclass
class ExtractionVerdict:
    """Whether one device looks like it is extracting the model, and why."""

    device_id: str
    suspected: bool
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def decision(self) -> str:
        return "suspected-extraction" if self.suspected else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decision": self.decision}


def assess(device_id: str, figures: dict[str, float], th: ExtractionThresholds | None = None) -> ExtractionVerdict:
    """Decide from one device's latest figures whether its queries look like an extraction attack."""
    th = th or ExtractionThresholds()
    n = int(figures.get("distances", 0))
    if n < th.min_distances:
        return ExtractionVerdict(device_id, False, [f"only {n} query distances (< {th.min_distances})"], figures)
    reasons = []
    if figures.get("w", 1.0) < th.w_below:
        reasons.append(f"query-distance normality W {figures['w']:.3f} < {th.w_below} over {n} queries "
                       "(PRADA: synthetic probing)")
    if figures.get("repeat_fraction", 0.0) > th.repeat_above:
        reasons.append(f"{100 * figures['repeat_fraction']:.1f} % of queries repeat an earlier one exactly > "
                       f"{100 * th.repeat_above:.0f} % (synthetic augmentation)")
    if figures.get("low_margin_fraction", 0.0) > th.low_margin_above:
        reasons.append(f"{100 * figures['low_margin_fraction']:.0f} % low-margin answers > "
                       f"{100 * th.low_margin_above:.0f} % (boundary or random probing)")
    return ExtractionVerdict(device_id, bool(reasons), reasons, figures)


def judge_reports(verdict: Any, reports: Any, th: ExtractionThresholds | None = None) -> Any:
    """Return a drift verdict turned ``suspected-extraction`` if a device's latest figures look like an attack.

    The evidence (device, reasons, figures) goes into the verdict's checks and reasons. It outranks ``retrain``:
    a pipeline must not retrain on an attacker's probing queries.
    """
    from tinymlops.monitor.verdict import Check

    latest: dict[str, ExtractionFigures] = {}
    for r in reports:  # oldest first: the last report of a device wins
        figs = getattr(r.sketch, "extraction", None) if r.sketch is not None else None
        if figs is not None:
            latest[r.device] = figs
    suspects = [v for v in (assess(d, f.model_dump(), th) for d, f in sorted(latest.items())) if v.suspected]
    if not suspects:
        return verdict
    checks = [Check(kind="extraction", name=v.device_id, level="suspected-extraction", reasons=v.reasons,
                    figures=dict(v.figures)) for v in suspects]
    reasons = [f"device {v.device_id}: {'; '.join(v.reasons)}" for v in suspects]
    return verdict.model_copy(update={
        "level": "suspected-extraction", "reasons": reasons + list(verdict.reasons),
        "checks": list(verdict.checks) + checks,
        "summary": {**verdict.summary, "devices_suspected_extraction": len(suspects)}})
