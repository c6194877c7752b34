"""Library entry point: roll a model out to several targets in parallel and summarise the outcome.

``run_rollout`` is the one rollout driver: it starts (or resumes) one rollout per target — each target receives
its own candidate, alias ``candidate-<target>`` from profiling — and drives them concurrently until each one is
promoted, rolled back or stopped. The Prefect flow (``flows/rollout.py``) runs it once per target in parallel
tasks (a task per target, a table artifact per stage decision); ``tinymlops rollout start`` starts that flow, or
calls ``run_rollout`` itself with ``--no-prefect``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


_stores: dict[str | None, Store] = {}
_stores_lock = threading.Lock()


def shared_store(db_url: str | None) -> Store:
    """Open a fleet DB once per process: alembic's migration context is global, so parallel callers must not race."""
    with _stores_lock:
        if db_url not in _stores:
            _stores[db_url] = open_store(db_url)
        return _stores[db_url]


@dataclass(frozen=True)
class RolloutResult:
    """The outcome of rolling one model out to some targets: one row per rollout (see :func:`list_rollouts`)."""

    model: str
    rollouts: list[dict[str, Any]]
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict with a ready-to-print ``table`` (title, columns, rows)."""
        return summary(self.model, self.rollouts, self.elapsed_s)


def run_rollout(model_name: str, targets: list[str], rollout_config_path: str | Path,
                fleet_url: str | None = None, operator_token: str | None = None, store: Store | None = None,
                db_url: str | None = None, versions: dict[str, str] | None = None, override: bool = False,
                max_s: float | None = None, targets_dir: Any = None,
                on_tick: Callable[[TickResult], None] | None = None, wait: bool = True) -> RolloutResult:
    """Roll ``model_name`` out to every target in parallel: THE rollout driver (the flow runs it per target).

    Starts (or resumes: an active rollout of the same target is picked up where it was, e.g. after a crash) one
    rollout per target and drives them concurrently, one controller per thread, until each is promoted, rolled
    back or stopped.

    Args:
        fleet_url, operator_token: the fleet service packages are uploaded to (without them packages are written
            to the fleet DB directly); the token defaults to ``$TINYMLOPS_OPERATOR_TOKEN`` so that it need not be
            passed (and recorded) as a flow parameter. The controller reads telemetry and writes desired state
            in the fleet DB (``store`` or ``db_url``; default: the service's default SQLite file in the home).
        versions: per-target version overrides (default: alias ``candidate-<target>``).
        override: allow rolling out a version that was rolled back on a target before.
        max_s: stop driving after this long (rollouts stay resumable in the DB).
        on_tick: called (serialised) with every controller step of every target.
        wait: drive the rollouts to their end (False: only create or find them).
    """
    cfg = load_config(rollout_config_path)
    registry.client()
    st = store or shared_store(db_url)
    client = None
    if fleet_url:
        from tinymlops.fleet.client import OperatorClient

        client = OperatorClient(fleet_url, operator_token or os.environ.get("TINYMLOPS_OPERATOR_TOKEN", ""))
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

    if wait:
        with ThreadPoolExecutor(max_workers=max(1, len(ids)), thread_name_prefix="rollout") as pool:
            futures = [pool.submit(drive, st, rid, tick_cb, max_s, targets_dir) for rid in ids.values()]
            for f in futures:
                f.result()
    rows = {r["id"]: r for r in list_rollouts(st, model_name)}
    return RolloutResult(model_name, [rows[i] for i in ids.values()], round(time.monotonic() - t0, 1))
