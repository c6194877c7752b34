"""Pure selection: per target, the recommended variant and the accuracy/latency Pareto front."""

from __future__ import annotations

import math
from typing import Any

ACCURACY_TIE = 1e-4  # accuracies closer than this are a tie, decided by lower energy


def _acc(row: dict[str, Any]) -> float:
    a = row.get("accuracy")
    return float(a) if isinstance(a, int | float) and not math.isnan(a) else float("-inf")


def recommend(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the feasible row with the highest accuracy (ties within 1e-4 go to lower energy), or None."""
    feasible = [r for r in rows if r.get("fits")]
    if not feasible:
        return None
    best_acc = max(_acc(r) for r in feasible)
    tied = [r for r in feasible if _acc(r) >= best_acc - ACCURACY_TIE or _acc(r) == best_acc]
    return min(tied, key=lambda r: (r["energy_uj"], r["latency_ms"], str(r.get("version", ""))))


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the feasible rows no other feasible row beats on both accuracy (higher) and latency (lower)."""
    feasible = [r for r in rows if r.get("fits")]
    front = []
    for r in feasible:
        dominated = any(
            _acc(o) >= _acc(r) and o["latency_ms"] <= r["latency_ms"]
            and (_acc(o) > _acc(r) or o["latency_ms"] < r["latency_ms"])
            for o in feasible if o is not r)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r["latency_ms"])
