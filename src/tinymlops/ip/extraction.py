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


class QueryDistanceMonitor:
    """On-device PRADA state: recent inputs per predicted class (kept local) and the recent min-distances."""

    def __init__(self, memory_per_class: int = 256, distances: int = 1000) -> None:
        self.memory_per_class = memory_per_class
        self._seen: dict[int, deque[np.ndarray]] = {}
        self._dist: deque[float] = deque(maxlen=distances)
        self._low_margin: deque[bool] = deque(maxlen=distances)
        self.queries = 0

    def add(self, features: np.ndarray, probs: np.ndarray) -> None:
        """Account one query: its distance to the closest earlier query of the same predicted class, its margin."""
        v = np.asarray(features, dtype=np.float32).reshape(-1)
        p = np.sort(np.asarray(probs, dtype=np.float64).reshape(-1))
        c = int(np.argmax(probs))
        seen = self._seen.setdefault(c, deque(maxlen=self.memory_per_class))
        if seen:
            d = np.sqrt(((np.stack(seen) - v) ** 2).mean(axis=1)).min()
            self._dist.append(float(d))
        seen.append(v)
        self._low_margin.append(bool(len(p) > 1 and p[-1] - p[-2] < LOW_MARGIN))
        self.queries += 1

    def figures(self) -> dict[str, float]:
        """Return the numbers a telemetry report carries (no inputs): W, min-distance quantiles, margins."""
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
    w_below: float = 0.965
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
