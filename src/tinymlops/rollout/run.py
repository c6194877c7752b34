"""Library entry point: roll a model out to several targets in parallel and summarise the outcome.

``run_rollout`` starts (or resumes) one rollout per target — each target receives its own candidate, alias
``candidate-<target>`` from profiling — and drives them concurrently until each one is promoted, rolled back or
stopped. The Prefect flow (``flows/rollout.py``) does the same with one task per target.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tinymlops import registry
from tinymlops.config import load
from tinymlops.fleet.store import Store, open_store
from tinymlops.rollout.config import RolloutConfig
from tinymlops.rollout.controller import Controller, TickResult, list_rollouts, stages_reached

TABLE_COLUMNS = ["target", "version", "stages reached", "decision", "reason"]
DECISIONS = {"succeeded": "promoted to production", "rolled_back": "rolled back", "aborted": "aborted",
             "stopped": "stopped (timeout)", "running": "running", "rolling_back": "rolling back"}


def load_config(path: str | Path) -> RolloutConfig:
    """Load a ``kind: rollout`` file."""
    cfg = load(path, "rollout")
    assert isinstance(cfg, RolloutConfig)
    return cfg


def summary_row(r: dict[str, Any]) -> list[Any]:
    """Return one row of the summary table for a rollout (see :func:`list_rollouts`)."""
    reason = r["reason"] or (r["last_decision"]["reasons"][0] if r["last_decision"] and
                             r["last_decision"]["reasons"] else "")
    return [r["target"], f"v{r['version']} ({r['variant']})" if r["variant"] else f"v{r['version']}",
            stages_reached(r), DECISIONS.get(r["status"], r["status"]), reason]


def summary(model_name: str, rollouts: list[dict[str, Any]], elapsed_s: float) -> dict[str, Any]:
    """Return the summary dict of a set of rollouts, with a ready-to-print ``table``."""
    return {"model": model_name, "elapsed_s": round(elapsed_s, 1), "rollouts": rollouts,
            "table": {"title": f"staged rollout of {model_name}", "columns": TABLE_COLUMNS,
                      "rows": [summary_row(r) for r in rollouts]}}


def start_all(st: Store, model_name: str, targets: list[str], cfg: RolloutConfig, client: Any = None,
              versions: dict[str, str] | None = None, override: bool = False,
              targets_dir: Any = None) -> dict[str, str]:
    """Start (or find the active) rollout per target; return target -> rollout id."""
    ctl = Controller(st, targets_dir=targets_dir)
    return {t: ctl.start(model_name, t, cfg, version=(versions or {}).get(t), override=override, client=client)
            for t in targets}


def drive(st: Store, rollout_id: str, on_tick: Callable[[TickResult], None] | None = None,
          max_s: float | None = None, targets_dir: Any = None) -> TickResult:
    """Drive one rollout to its end with a fresh controller (one per thread: leases are per controller)."""
    return Controller(st, targets_dir=targets_dir).run(rollout_id, on_tick=on_tick, max_s=max_s)


def run_rollout(model_name: str, targets: list[str], rollout_config_path: str | Path,
                fleet_url: str | None = None, operator_token: str | None = None, store: Store | None = None,
                db_url: str | None = None, versions: dict[str, str] | None = None, override: bool = False,
                max_s: float | None = None, targets_dir: Any = None,
                on_tick: Callable[[TickResult], None] | None = None) -> dict[str, Any]:
    """Roll ``model_name`` out to every target in parallel and return a summary with a ``table`` key.

    Args:
        fleet_url, operator_token: the fleet service packages are uploaded to (without them packages are written
            to the fleet DB directly). The controller reads telemetry and writes desired state in the fleet DB
            (``store`` or ``db_url``; default: the service's default SQLite file in the project home).
        versions: per-target version overrides (default: alias ``candidate-<target>``).
        override: allow rolling out a version that was rolled back on a target before.
        max_s: stop driving after this long (rollouts stay resumable in the DB).
    """
    cfg = load_config(rollout_config_path)
    registry.client()
    st = store or open_store(db_url)
    client = None
    if fleet_url:
        from tinymlops.fleet.client import OperatorClient

        client = OperatorClient(fleet_url, operator_token or "")
    t0 = time.monotonic()
    try:
        ids = start_all(st, model_name, targets, cfg, client, versions, override, targets_dir)
    finally:
        if client is not None:
            client.close()
    lock = threading.Lock()

    def tick_cb(res: TickResult) -> None:
        if on_tick is not None:
            with lock:
                on_tick(res)

    with ThreadPoolExecutor(max_workers=max(1, len(ids)), thread_name_prefix="rollout") as pool:
        futures = [pool.submit(drive, st, rid, tick_cb, max_s, targets_dir) for rid in ids.values()]
        for f in futures:
            f.result()
    rows = {r["id"]: r for r in list_rollouts(st, model_name)}
    return summary(model_name, [rows[i] for i in ids.values()], time.monotonic() - t0)
