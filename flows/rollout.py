"""Rollout flow: one staged rollout per target in parallel, a table artifact per stage decision, a summary table.

Each target's task drives its rollout (state in the fleet DB) with bake time between stages; a retried or
re-run task resumes the same rollout instead of starting a new one.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tinymlops import registry
from tinymlops.fleet.store import Store, open_store
from tinymlops.rollout.controller import TickResult, list_rollouts
from tinymlops.rollout.run import drive, load_config, start_all, summary

_stores: dict[str | None, Store] = {}
_stores_lock = threading.Lock()


def _store(db_url: str | None) -> Store:
    """Open a fleet DB once per process: alembic's migration context is global, so parallel tasks must not race."""
    with _stores_lock:
        if db_url not in _stores:
            _stores[db_url] = open_store(db_url)
        return _stores[db_url]


def _key(text: str) -> str:
    """Return a Prefect artifact key (lowercase letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100]


def stage_table(res: TickResult) -> list[dict[str, Any]]:
    """Return the rows of a stage decision's table artifact: every check and the figures behind it."""
    assert res.decision is not None
    rows: list[dict[str, Any]] = [{"item": f"check {c.name}", "value": c.outcome, "detail": c.reason}
                                  for c in res.decision.checks]
    rows += [{"item": k, "value": f"{v:.6g}", "detail": ""} for k, v in res.decision.figures.items()]
    return rows


@task(name="start-rollouts", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def start_task(model_name: str, targets: list[str], config_path: str, fleet_url: str | None,
               operator_token: str | None, db_url: str | None, versions: dict[str, str] | None,
               override: bool, targets_dir: str | None) -> dict[str, str]:
    """Start (or find the active) rollout of each target's candidate; return target -> rollout id."""
    registry.client()
    client = None
    if fleet_url:
        from tinymlops.fleet.client import OperatorClient

        client = OperatorClient(fleet_url, operator_token or "")
    try:
        return start_all(_store(db_url), model_name, targets, load_config(config_path), client, versions,
                         override, Path(targets_dir) if targets_dir else None)
    finally:
        if client is not None:
            client.close()


@task(name="drive-rollout", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def drive_task(rollout_id: str, db_url: str | None, targets_dir: str | None,
               max_s: float | None = None) -> dict[str, Any]:
    """Drive one target's rollout to its end; publish a table artifact for every stage decision."""
    logger = get_run_logger()
    st = _store(db_url)

    def on_tick(res: TickResult) -> None:
        if res.action in ("advance", "complete", "rollback", "stop") and res.decision is not None:
            create_table_artifact(
                key=_key(f"rollout-{res.rollout_id}-stage-{res.stage_index + 1}-{res.action}"),
                table=stage_table(res),
                description=f"{res.rollout_id}: gate {res.decision.outcome} -> {res.action}: "
                            + "; ".join(res.decision.reasons[:3]))
            logger.info("%s: %s (%s)", res.rollout_id, res.action, "; ".join(res.decision.reasons[:2]))

    last = drive(st, rollout_id, on_tick, max_s, Path(targets_dir) if targets_dir else None)
    return {"id": rollout_id, "status": last.status, "stage_index": last.stage_index}


@flow(name="rollout", log_prints=True)
def rollout_flow(model_name: str, targets: list[str], config_path: str = "configs/rollout.yaml",
                 fleet_url: str | None = None, operator_token: str | None = None, db_url: str | None = None,
                 versions: dict[str, str] | None = None, override: bool = False, targets_dir: str | None = None,
                 max_s: float | None = None) -> dict[str, Any]:
    """Roll each target's candidate out in stages, all targets in parallel; return the summary with a table."""
    import time

    t0 = time.monotonic()
    ids = start_task(model_name, targets, config_path, fleet_url, operator_token, db_url, versions, override,
                     targets_dir)
    futures = [drive_task.submit(rid, db_url, targets_dir, max_s) for rid in ids.values()]
    for f in futures:
        f.result()
    rows = {r["id"]: r for r in list_rollouts(_store(db_url), model_name)}
    out = summary(model_name, [rows[i] for i in ids.values()], time.monotonic() - t0)
    tbl = out["table"]
    create_table_artifact(key=_key(f"rollout-summary-{model_name}"),
                          table=[dict(zip(tbl["columns"], r, strict=True)) for r in tbl["rows"]],
                          description=f"staged rollout of {model_name}")
    for r in tbl["rows"]:
        print(" | ".join(str(v) for v in r))
    return out


@flow(name="rollout-demo", log_prints=True)
def rollout_demo_flow(model_name: str, healthy_target: str = "raspberry-pi-4",
                      faulty_target: str = "raspberry-pi-zero-2-w", config_path: str = "configs/rollout.yaml",
                      devices_per_target: int = 20, fault: str = "latency",
                      targets_dir: str | None = None, monitor_target: str | None = None,
                      monitor_devices: int = 5, monitor_drift: dict[str, float] | None = None) -> dict[str, Any]:
    """Run the rollout demo (fresh simulated fleet, one healthy and one faulty candidate) through the flow."""
    from tinymlops.sim.demo import run_demo
    from tinymlops.sim.simulator import DriftSpec

    return run_demo(model_name, healthy_target, faulty_target, config_path, devices_per_target, fault,
                    Path(targets_dir) if targets_dir else None, runner=rollout_flow,
                    monitor_target=monitor_target, monitor_devices=monitor_devices,
                    monitor_drift=DriftSpec(**monitor_drift) if monitor_drift else None)
