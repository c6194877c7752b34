"""What the routes share besides the store: device/package contexts, the sketch check, operator-token bootstrap."""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import chain

from sqlalchemy import func, select

from tinymlops.fleet import auth
from tinymlops.fleet.store import OperatorToken, Store
from tinymlops.monitor.sketches import LATENCY_EDGES_MS, Sketch


def create_operator_token(st: Store, name: str = "operator", role: str = "admin",
                          ttl_s: float | None = None) -> str:
    """Create an operator token (role read | deploy | admin; expiring after ``ttl_s`` if given) and return it.

    Only its hash is stored.
    """
    if role not in auth.ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(auth.ROLES)}")
    if ttl_s is not None and not 0 < ttl_s < 10 * 365 * 86400:
        raise ValueError(f"ttl {ttl_s} s: expected a positive duration under 10 years")
    token = auth.new_token(auth.OPERATOR_PREFIX)
    now = time.time()
    with st.session() as s:
        s.add(OperatorToken(token_hash=auth.hash_token(token), name=name, created_unix_s=now, revoked=False,
                            role=role, expires_unix_s=now + ttl_s if ttl_s is not None else None))
    return token


def has_operator_token(st: Store) -> bool:
    """Return whether any live (not revoked, not expired) admin operator token exists."""
    with st.session() as s:
        return bool(s.scalar(select(func.count()).select_from(OperatorToken).where(
            OperatorToken.revoked.is_(False), OperatorToken.role == "admin",
            OperatorToken.expires_unix_s.is_(None) | (OperatorToken.expires_unix_s > time.time()))))


@dataclass(frozen=True)
class DeviceCtx:
    id: str
    target: str
    cohort: str
    samples_opt_in: bool
    feedback_opt_in: bool


@dataclass(frozen=True)
class PackageCtx:
    id: str
    model_name: str
    model_version: str
    target: str
    digest: str
    feature_bins: tuple[int, ...]
    n_classes: int
    confidence_bins: int
    n_features: int


def check_sketch(sk: Sketch, pkg: PackageCtx) -> str | None:
    """Return why a sketch cannot be accepted for a package (None if it is consistent)."""
    n = sk.n_inferences
    if sk.edges_digest != pkg.digest:
        return f"sketch bins {sk.edges_digest!r} differ from the package's reference bins {pkg.digest!r}"
    if len(sk.feature_counts) != pkg.n_features or len(sk.nonfinite_counts) != pkg.n_features:
        return f"sketch has {len(sk.feature_counts)} features, the package has {pkg.n_features}"
    if tuple(map(len, sk.feature_counts)) != pkg.feature_bins:
        return "feature histograms do not have the reference's number of bins"
    if len(sk.prediction_counts) != pkg.n_classes or len(sk.confidence_counts) != pkg.confidence_bins:
        return "prediction or confidence histogram has the wrong length"
    if len(sk.latency_counts) != len(LATENCY_EDGES_MS) + 1:
        return "latency histogram has the wrong length"
    joint = sk.class_confidence_counts  # empty from agents that predate label-free estimates
    if joint and (len(joint) != pkg.n_classes or any(len(row) != pkg.confidence_bins for row in joint)):
        return "class x confidence histogram has the wrong shape"
    lists = [*sk.feature_counts, sk.nonfinite_counts, sk.prediction_counts, sk.confidence_counts,
             sk.latency_counts, *joint]
    # one flat pass in C (chain, min, max): this check runs on every report
    flat = [n, sk.errors, sk.rejections, sk.peak_memory_bytes, *chain.from_iterable(lists)]
    if min(flat) < 0:
        return "counts must not be negative"
    if max(flat) > 2**53:
        return "counts out of range"
    if list(map(sum, sk.feature_counts)) != [n - nf for nf in sk.nonfinite_counts]:
        return "each feature histogram (plus non-finite count) must sum to n_inferences"
    if sum(sk.prediction_counts) != n or sum(sk.confidence_counts) != n or sum(sk.latency_counts) != n:
        return "prediction, confidence and latency histograms must sum to n_inferences"
    if joint and (list(map(sum, joint)) != sk.prediction_counts
                  or [sum(col) for col in zip(*joint, strict=True)] != sk.confidence_counts):
        return "class x confidence histogram must add up to the prediction and confidence histograms"
    floats = [sk.latency_max_ms, sk.energy_uj_total, sk.window_start or 0.0, sk.window_end or 0.0]
    if any(not (abs(f) < 1e15) for f in floats) or sk.latency_max_ms < 0 or sk.energy_uj_total < 0:
        return "latency, energy and window times must be finite and non-negative"
    if (sk.window_start is None) != (sk.window_end is None):
        return "window_start and window_end go together"
    if sk.window_start is not None and sk.window_end is not None and sk.window_start > sk.window_end:
        return "window_start is after window_end"
    return None
