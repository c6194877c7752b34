"""Extraction-attack detection without raw data: a PRADA-style statistic computed on the device.

PRADA (Juuti et al. 2019) observes that a model-extraction attacker's synthetic queries (Jacobian augmentation,
boundary probing, random probing) are spaced unlike natural inputs: for each new query, the distance to the closest
earlier query of the same predicted class follows a roughly normal law for natural data and a skewed, multi-modal
one for synthetic probing. The device keeps a bounded memory of recent inputs per predicted class (never sent), and
reports only numbers per telemetry window: the Shapiro-Francia normality statistic W of the recent log
min-distances (natural inputs: close to log-normal), the fraction of exact repeats, their quantiles, the median
min-distance relative to the spread of the remembered inputs (``dist_rel_p50``), and the fraction of low-margin
answers. :func:`assess` turns one device's figures into a ``suspected-extraction`` decision with the evidence (pure:
figures + thresholds + the model's natural baseline in, decision out).

Why uncertainty alone is not evidence. Drift (a sensor's gain or offset, more noise, another machine speed) moves
natural inputs towards the decision boundaries, so an honest drifted device gives more low-margin answers, and so
does a weaker model on its own data; an absolute "low-margin > x %" rule called field drift an attack. Probing, in
contrast, changes the *geometry* of the queries, which drift leaves alone:

* exact repeats and a non-normal log min-distance law (W) are probing signs on their own (synthetic augmentation,
  bisection converging on a boundary);
* low-margin answers count only when they exceed the model's OWN natural share (measured on the validation split
  at training time and stored in the reference profile, :class:`QueryBaseline`) several-fold AND the query geometry
  departs from the natural one: the median min-distance relative to the inputs' spread is far above the model's
  natural value (random probing fills the input space, where natural data lies on a thin manifold) or far below it
  (queries crowding a boundary). That relative figure is scale- and offset-free, so gain or offset drift leaves it
  unchanged; added sensor noise raises it only a little.

Without a baseline (a reference profile written before it existed) low-margin answers are reported as corroboration
only and never flag a device alone.
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
    dist_rel_p50: float | None = Field(None, ge=0, le=1e9)  # absent from agents older than the field


class QueryBaseline(BaseModel):
    """The model's figures on natural data, measured at training time (kept in the reference profile)."""

    model_config = ConfigDict(extra="forbid")

    low_margin_fraction: float = Field(ge=0, le=1)  # on the validation split: the model's own uncertainty
    dist_rel_p50: float = Field(gt=0, le=1e9)  # on the reference inputs, in a seeded random order
    n: int = Field(ge=0)


def low_margin_share(probabilities: np.ndarray) -> float:
    """Return the share of answers whose top-1 minus top-2 probability is below :data:`LOW_MARGIN`."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or not len(p):
        return 0.0
    top2 = np.sort(p, axis=1)[:, -2:]
    return float(np.mean(top2[:, 1] - top2[:, 0] < LOW_MARGIN))


def natural_baseline(features: np.ndarray, probabilities: np.ndarray,
                     held_out_probabilities: np.ndarray | None = None, max_rows: int = 500,
                     seed: int = 0) -> QueryBaseline | None:
    """Measure the model's natural query figures: a device's monitor run over the reference inputs.

    ``held_out_probabilities`` (the validation split's outputs) give the natural low-margin share; without them the
    reference outputs do (optimistic on training data). None when there are too few rows to measure.
    ``max_rows``: the stream length measured; the relative min-distance shrinks slowly as a device's per-class
    memory fills, and 500 sits between the verdict's minimum (200 distances) and a full memory.
    """
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.random.default_rng(seed).permutation(len(x))[:max_rows]
    mon = QueryDistanceMonitor()
    for i in order:
        mon.add(x[i], p[i])
    figs = mon.figures()
    rel = figs["dist_rel_p50"]
    if rel is None or rel <= 0 or (figs["distances"] or 0) < 20:
        return None
    held = held_out_probabilities if held_out_probabilities is not None and len(held_out_probabilities) else p
    return QueryBaseline(low_margin_fraction=low_margin_share(held), dist_rel_p50=rel, n=len(order))


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

    def _spread(self) -> float | None:
        """Return the RMS distance between two remembered inputs drawn at random (sqrt of 2 x mean variance)."""
        rings = [r[:min(self._filled[c], len(r))] for c, r in self._seen.items()]
        width = {r.shape[1] for r in rings}
        if len(width) != 1:
            return None
        x = np.concatenate(rings).astype(np.float64)
        return float(np.sqrt(2 * x.var(axis=0).mean())) if len(x) > 1 else None

    def figures(self) -> dict[str, float | None]:
        """Return the numbers a telemetry report carries (no inputs): W, repeats, min-distance quantiles, margins."""
        d = np.asarray(self._dist, dtype=np.float64)
        q = np.quantile(d, [0.1, 0.5, 0.9]) if len(d) else np.zeros(3)
        pos = d[d > 1e-9]
        spread = self._spread() if len(d) else None
        return {"queries": float(self.queries), "distances": float(len(d)),
                "w": shapiro_francia(np.log(pos)) if len(pos) else 0.0,
                "repeat_fraction": float(np.mean(d <= 1e-9)) if len(d) else 0.0,
                "dist_p10": float(q[0]), "dist_p50": float(q[1]), "dist_p90": float(q[2]),
                "low_margin_fraction": float(np.mean(self._low_margin)) if self._low_margin else 0.0,
                "dist_rel_p50": float(q[1] / spread) if spread else None}


@dataclass(frozen=True)
class ExtractionThresholds:
    """When a device's query pattern counts as synthetic probing (defaults calibrated in benchmarks/ip.py).

    ``low_margin_above`` is a floor; the bar is ``low_margin_factor`` times the model's natural share when higher
    (at most halfway from that share to 100 %, so a very unsure model can still show an excess).
    ``geometry_factor``: how far (either way) the relative min-distance must sit from the natural value for
    low-margin answers to count.
    """

    min_distances: int = 200
    w_below: float = 0.93
    repeat_above: float = 0.02
    low_margin_above: float = 0.12
    low_margin_factor: float = 3.0
    geometry_factor: float = 1.3


@dataclass
class ExtractionVerdict:
    """Whether one device looks like it is extracting the model, and why."""

    device_id: str
    suspected: bool
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, float | None] = field(default_factory=dict)

    @property
    def decision(self) -> str:
        return "suspected-extraction" if self.suspected else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decision": self.decision}


def _geometry(figures: dict[str, float | None], baseline: QueryBaseline, factor: float) -> str | None:
    """Say how the query geometry departs from the model's natural one (None: it does not, or is unknown)."""
    rel = figures.get("dist_rel_p50")
    if rel is None:
        return None
    ratio = rel / baseline.dist_rel_p50
    if ratio > factor:
        return f"queries spread {ratio:.2f}x wider than natural inputs (filling the input space)"
    if ratio < 1 / factor:
        return f"queries crowd together, {ratio:.2f}x the natural spacing"
    return None


def assess(device_id: str, figures: dict[str, float | None], th: ExtractionThresholds | None = None,
           baseline: QueryBaseline | None = None) -> ExtractionVerdict:
    """Decide from one device's latest figures whether its queries look like an extraction attack.

    ``baseline``: the model's natural figures from its reference profile; without it low-margin answers never
    flag a device on their own (drift and weak models raise them too).
    """
    th = th or ExtractionThresholds()
    n = int(figures.get("distances") or 0)
    if n < th.min_distances:
        return ExtractionVerdict(device_id, False, [f"only {n} query distances (< {th.min_distances})"], figures)
    reasons = []
    w, repeats = figures.get("w"), figures.get("repeat_fraction") or 0.0
    if w is not None and w < th.w_below:
        reasons.append(f"query-distance normality W {w:.3f} < {th.w_below} over {n} queries "
                       "(PRADA: synthetic probing)")
    if repeats > th.repeat_above:
        reasons.append(f"{100 * repeats:.1f} % of queries repeat an earlier one exactly > "
                       f"{100 * th.repeat_above:.0f} % (synthetic augmentation)")
    low = figures.get("low_margin_fraction") or 0.0
    natural = baseline.low_margin_fraction if baseline is not None else None
    bar = th.low_margin_above if natural is None else max(
        th.low_margin_above, min(th.low_margin_factor * natural, (1 + natural) / 2))
    if low > bar:
        what = (f"{100 * low:.0f} % low-margin answers > {100 * bar:.0f} % ("
                + (f"the model's natural share is {100 * natural:.1f} %)" if natural is not None
                   else "no natural baseline in the reference profile)"))
        geometry = _geometry(figures, baseline, th.geometry_factor) if baseline is not None else None
        if geometry:
            reasons.append(f"{what} and {geometry}: boundary or random probing")
        elif reasons:  # corroborates a geometric sign; uncertainty alone is what drift looks like
            reasons.append(what)
    return ExtractionVerdict(device_id, bool(reasons), reasons, figures)


def judge_reports(verdict: Any, reports: Any, th: ExtractionThresholds | None = None,
                  baseline: QueryBaseline | None = None) -> Any:
    """Return a drift verdict turned ``suspected-extraction`` if a device's latest figures look like an attack.

    ``baseline``: the model's natural figures (``ReferenceProfile.queries``), None for an older reference.

    The evidence (device, reasons, figures) goes into the verdict's checks and reasons. It outranks ``retrain``:
    a pipeline must not retrain on an attacker's probing queries.
    """
    from tinymlops.monitor.verdict import Check

    latest: dict[str, ExtractionFigures] = {}
    for r in reports:  # oldest first: the last report of a device wins
        figs = getattr(r.sketch, "extraction", None) if r.sketch is not None else None
        if figs is not None:
            latest[r.device] = figs
    suspects = [v for v in (assess(d, f.model_dump(), th, baseline) for d, f in sorted(latest.items())) if v.suspected]
    if not suspects:
        return verdict
    checks = [Check(kind="extraction", name=v.device_id, level="suspected-extraction", reasons=v.reasons,
                    figures=dict(v.figures)) for v in suspects]
    reasons = [f"device {v.device_id}: {'; '.join(v.reasons)}" for v in suspects]
    return verdict.model_copy(update={
        "level": "suspected-extraction", "reasons": reasons + list(verdict.reasons),
        "checks": list(verdict.checks) + checks,
        "summary": {**verdict.summary, "devices_suspected_extraction": len(suspects)}})
