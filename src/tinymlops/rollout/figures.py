"""Stage figures from the fleet database: one pass over the window's telemetry, merged per arm with NumPy.

The gate of a 10,000-device stage reads tens of thousands of telemetry rows; only the columns the gate needs are
selected and sketches are parsed with pydantic-core's JSON parser (no model validation: the service validated
every sketch before storing it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic_core import from_json
from sqlalchemy import func, select

from tinymlops.fleet.store import DeploymentEvent, DeviceInfo, Package, Store, Telemetry
from tinymlops.monitor.sketches import LATENCY_EDGES_MS
from tinymlops.rollout.gates import ArmFigures

_EDGES = np.asarray(LATENCY_EDGES_MS)


def latency_quantile_ms(counts: np.ndarray, latency_max_ms: float, q: float) -> float | None:
    """Approximate a latency quantile from a merged latency histogram (as :meth:`Sketch.latency_quantile_ms`)."""
    total = counts.sum()
    if total == 0:
        return None
    i = int(np.searchsorted(np.cumsum(counts), q * total))
    upper = float(_EDGES[min(i, len(_EDGES) - 1)])
    return float(min(upper, latency_max_ms)) if latency_max_ms else upper


def confidence_midpoints(inner_edges: list[float], n_classes: int) -> np.ndarray:
    """Return a representative top-class confidence per confidence bin (its midpoint; bounds 1/C and 1)."""
    lo = 1.0 / max(n_classes, 1)
    bounds = [min(lo, inner_edges[0]) if inner_edges else lo, *inner_edges, 1.0]
    return np.asarray([(a + b) / 2 for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


@dataclass
class _Arm:
    devices: set[str] = field(default_factory=set)
    inferences: int = 0
    errors: int = 0
    rejections: int = 0
    latency: np.ndarray = field(default_factory=lambda: np.zeros(len(LATENCY_EDGES_MS) + 1, np.int64))
    latency_max_ms: float = 0.0
    predictions: np.ndarray | None = None
    confidence_sum: float = 0.0
    confidence_n: int = 0
    feedback_n: int = 0
    feedback_correct: int = 0

    def add(self, device_id: str, sk: dict[str, Any], mids: np.ndarray | None, feedback: Any) -> None:
        n = int(sk.get("n_inferences", 0))
        self.devices.add(device_id)
        self.inferences += n
        self.errors += int(sk.get("errors", 0))
        self.rejections += int(sk.get("rejections", 0))
        lat = sk.get("latency_counts")
        if lat and len(lat) == len(self.latency):
            self.latency += np.asarray(lat, np.int64)
        self.latency_max_ms = max(self.latency_max_ms, float(sk.get("latency_max_ms", 0.0)))
        pred = np.asarray(sk.get("prediction_counts") or [], np.int64)
        if self.predictions is None:
            self.predictions = pred
        elif len(pred) == len(self.predictions):
            self.predictions = self.predictions + pred
        conf = sk.get("confidence_counts")
        if mids is not None and conf and len(conf) == len(mids) and n:
            self.confidence_sum += float(np.dot(np.asarray(conf, np.float64), mids))
            self.confidence_n += n
        if feedback:
            for fb in feedback:
                self.feedback_n += 1
                self.feedback_correct += int(fb.get("prediction") == fb.get("label"))

    def figures(self) -> ArmFigures:
        return ArmFigures(
            devices=len(self.devices), inferences=self.inferences, errors=self.errors, rejections=self.rejections,
            latency_p95_ms=latency_quantile_ms(self.latency, self.latency_max_ms, 0.95),
            prediction_counts=[] if self.predictions is None else [int(v) for v in self.predictions],
            confidence_mean=self.confidence_sum / self.confidence_n if self.confidence_n else None,
            feedback_n=self.feedback_n, feedback_correct=self.feedback_correct)


class PackageInfoCache:
    """Reference facts of packages (confidence bin midpoints, reference counts) read once per package."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._mids: dict[str, np.ndarray | None] = {}
        self._manifests: dict[str, dict[str, Any]] = {}

    def manifest(self, package_id: str) -> dict[str, Any]:
        if package_id not in self._manifests:
            with self.store.session() as s:
                p = s.get(Package, package_id)
                self._manifests[package_id] = json.loads(p.manifest_json) if p is not None else {}
        return self._manifests[package_id]

    def midpoints(self, package_id: str | None) -> np.ndarray | None:
        if package_id is None:
            return None
        if package_id not in self._mids:
            ref = self.manifest(package_id).get("reference")
            self._mids[package_id] = (confidence_midpoints(ref["confidence_inner_edges"], len(ref["class_names"]))
                                      if ref else None)
        return self._mids[package_id]


@dataclass
class WindowFigures:
    """What one pass over the telemetry of a target gives the controller."""

    candidate: ArmFigures
    control: ArmFigures
    reporting: set[str]
    last_candidate_report_unix_s: dict[str, float]


def window_figures(store: Store, target: str, candidate_package_id: str, assigned: set[str], since_unix_s: float,
                   recent_since_unix_s: float, cache: PackageInfoCache) -> WindowFigures:
    """Merge a target's telemetry since ``since`` into candidate and control arms (control: devices not assigned).

    Also returns, per assigned device, when it last reported on the candidate (looking back to
    ``recent_since_unix_s``, which may be before ``since``), for the silent-device check.
    """
    start = min(since_unix_s, recent_since_unix_s)
    q = (select(Telemetry.device_id, Telemetry.package_id, Telemetry.window_end_unix_s, Telemetry.received_unix_s,
                Telemetry.sketch_json, Telemetry.feedback_json)
         .where(Telemetry.target == target, Telemetry.window_end_unix_s >= start))
    cand, ctl = _Arm(), _Arm()
    last: dict[str, float] = {}
    with store.session() as s:
        rows = s.execute(q).all()
    for device_id, package_id, window_end, received, sketch_json, feedback_json in rows:
        is_candidate = package_id == candidate_package_id
        if is_candidate and device_id in assigned:
            last[device_id] = max(received, last.get(device_id, 0.0))
        if window_end < since_unix_s:
            continue
        if is_candidate:
            if device_id not in assigned:
                continue  # not ours (an earlier rollout of the same package): neither arm
            arm = cand
        elif device_id in assigned:
            continue  # a stage device still reporting on its old version (before the switch): neither arm
        else:
            arm = ctl
        arm.add(device_id, from_json(sketch_json), cache.midpoints(package_id),
                from_json(feedback_json) if feedback_json else None)
    return WindowFigures(cand.figures(), ctl.figures(), set(cand.devices), last)


def rejected_devices(store: Store, package_id: str, device_ids: set[str], since_unix_s: float) -> set[str]:
    """Return the devices that reported rejecting a package since a time."""
    q = (select(DeploymentEvent.device_id).where(DeploymentEvent.package_id == package_id,
                                                DeploymentEvent.kind == "rejected",
                                                DeploymentEvent.at_unix_s >= since_unix_s).distinct())
    with store.session() as s:
        return {d for d in s.scalars(q) if d in device_ids}


def install_times(store: Store, package_id: str, device_ids: set[str], since_unix_s: float) -> dict[str, float]:
    """Return when each device last reported installing a package since a time (device id -> unix seconds)."""
    q = (select(DeploymentEvent.device_id, func.max(DeploymentEvent.at_unix_s))
         .where(DeploymentEvent.package_id == package_id, DeploymentEvent.kind == "installed",
                DeploymentEvent.at_unix_s >= since_unix_s).group_by(DeploymentEvent.device_id))
    with store.session() as s:
        return {d: float(t) for d, t in s.execute(q) if d in device_ids}


def device_states(devices: list[DeviceInfo], assigned: set[str], candidate: str, now_unix_s: float,
                  offline_after_s: float) -> tuple[set[str], set[str]]:
    """Return (installed, offline) among assigned devices: running the candidate; not seen recently."""
    installed, offline = set(), set()
    for d in devices:
        if d.id not in assigned:
            continue
        if d.current_package_id == candidate:
            installed.add(d.id)
        if d.last_seen_unix_s is None or d.last_seen_unix_s < now_unix_s - offline_after_s:
            offline.add(d.id)
    return installed, offline
