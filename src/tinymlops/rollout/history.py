"""History: alias moves (``canary-<target>``, ``production-<target>``) and gate decisions, in MLflow and the DB.

Alias moves go through :func:`tinymlops.registry.set_alias`, which records every move as a run (time, version,
previous version, reason, figures). Gate decisions are rows in the fleet DB and runs of the experiment
``<model>/rollouts``. :func:`model_history` merges both into "which version ran where, when, and why".
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from sqlalchemy import select

from tinymlops import registry
from tinymlops.fleet.store import Store
from tinymlops.rollout.state import Rollout, RolloutDecision

ALIAS_PREFIXES = ("canary-", "production-", "candidate-")


def decisions_experiment(model_name: str) -> str:
    return f"{model_name}/rollouts"


def move_alias(model_name: str, alias: str, version: str | None, reason: str,
               figures: dict[str, float] | None = None) -> bool:
    """Point an alias at a version (None removes it) unless it already is there; return whether it moved.

    The check makes the move idempotent: a controller that crashed after moving but before recording its state
    does not record a second move when it repeats the step.
    """
    current = registry.get_alias(model_name, alias)
    if (str(current.version) if current else None) == (str(version) if version is not None else None):
        return False
    clean = {k: float(v) for k, v in (figures or {}).items() if isinstance(v, int | float)}
    registry.set_alias(model_name, alias, version, reason, clean, actor="tinymlops.rollout")
    return True


def record_decision(model_name: str, target: str, version: str, rollout_id: str, stage_label: str, outcome: str,
                    action: str, reasons: list[str], figures: dict[str, float]) -> str:
    """Record a gate decision as an MLflow run (tags: target, version, stage, outcome, action, reasons)."""
    tags = {"rollout_id": rollout_id, "target": target, "version": str(version), "stage": stage_label,
            "outcome": outcome, "action": action, "reason": "; ".join(reasons)[:4900], "model": model_name}
    with registry.run(decisions_experiment(model_name), f"{target} v{version} {stage_label}: {outcome} -> {action}",
                      tags=tags) as r:
        registry.log_metrics(r.run_id, {k: float(v) for k, v in figures.items()})
        registry.log_dict(r.run_id, {"reasons": reasons, "figures": figures}, "decision.json")
        return r.run_id


def model_history(model_name: str, store: Store | None = None, include_holds: bool = False) -> dict[str, Any]:
    """Return alias moves (from MLflow) and gate decisions (from the fleet DB), oldest first."""
    moves = [asdict(m) for m in registry.alias_history(model_name) if m.alias.startswith(ALIAS_PREFIXES)]
    for m in moves:
        alias = m["alias"]
        m["target"] = alias.split("-", 1)[1] if "-" in alias else ""
        m["role"] = alias.split("-", 1)[0]
        m["time_unix_s"] = m["time_ms"] / 1000.0
    decisions: list[dict[str, Any]] = []
    if store is not None:
        q = (select(RolloutDecision, Rollout).join(Rollout, Rollout.id == RolloutDecision.rollout_id)
             .where(Rollout.model_name == model_name).order_by(RolloutDecision.at_unix_s, RolloutDecision.id))
        with store.session() as s:
            for d, r in s.execute(q).all():
                if d.action == "hold" and not include_holds:
                    continue
                decisions.append({"time_unix_s": d.at_unix_s, "rollout_id": r.id, "target": r.target,
                                  "version": r.version, "stage": d.stage_label, "outcome": d.outcome,
                                  "action": d.action, "reasons": json.loads(d.reasons_json),
                                  "figures": json.loads(d.figures_json), "mlflow_run_id": d.mlflow_run_id})
    return {"model": model_name, "alias_moves": moves, "decisions": decisions}
