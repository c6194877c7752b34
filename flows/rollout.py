"""Rollout flow: the library driver :func:`tinymlops.rollout.run.run_rollout` once per target, in parallel tasks.

Each target's task starts (or resumes) and drives its rollout (state in the fleet DB) and publishes a table
artifact for every stage decision; a retried or re-run task resumes the same rollout instead of starting a new
one. The flow ends with a summary table artifact.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows import retry_transient
from tinymlops.rollout.controller import TickResult
from tinymlops.rollout.run import run_rollout, summary


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


# retries are safe: starting again finds the target's active rollout and resumes it from its persisted stage
@task(name="rollout-target", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_transient, task_run_name="rollout-{target}")
def rollout_target_task(model_name: str, target: str, config_path: str, fleet_url: str | None,
                        operator_token: str | None, db_url: str | None, version: str | None, override: bool,
                        targets_dir: str | None, max_s: float | None, wait: bool = True) -> dict[str, Any]:
    """Start (or resume) one target's rollout and drive it to its end; an artifact per stage decision."""
    logger = get_run_logger()

    def on_tick(res: TickResult) -> None:
        if res.action in ("advance", "complete", "rollback", "stop") and res.decision is not None:
            create_table_artifact(
                key=_key(f"rollout-{res.rollout_id}-stage-{res.stage_index + 1}-{res.action}"),
                table=stage_table(res),
                description=f"{res.rollout_id}: gate {res.decision.outcome} -> {res.action}: "
                            + "; ".join(res.decision.reasons[:3]))
            logger.info("%s: %s (%s)", res.rollout_id, res.action, "; ".join(res.decision.reasons[:2]))

    out = run_rollout(model_name, [target], config_path, fleet_url, operator_token, db_url=db_url,
                      versions={target: version} if version else None, override=override, max_s=max_s,
                      targets_dir=Path(targets_dir) if targets_dir else None, on_tick=on_tick, wait=wait)
    return out.rollouts[0]


@flow(name="rollout", log_prints=True)
def rollout_flow(model_name: str, targets: list[str], config_path: str = "configs/rollout.yaml",
                 fleet_url: str | None = None, operator_token: str | None = None, db_url: str | None = None,
                 versions: dict[str, str] | None = None, override: bool = False, targets_dir: str | None = None,
                 max_s: float | None = None, wait: bool = True) -> dict[str, Any]:
    """Roll each target's candidate out in stages, all targets in parallel; return the summary with a table.

    ``operator_token`` may be left out (it is recorded with the flow run's parameters): the driver then reads
    ``$TINYMLOPS_OPERATOR_TOKEN``.
    """
    t0 = time.monotonic()
    futures = [rollout_target_task.submit(model_name, t, config_path, fleet_url, operator_token, db_url,
                                          (versions or {}).get(t), override, targets_dir, max_s, wait)
               for t in targets]
    out = summary(model_name, [f.result() for f in futures], time.monotonic() - t0)
    tbl = out["table"]
    create_table_artifact(key=_key(f"rollout-summary-{model_name}"),
                          table=[dict(zip(tbl["columns"], r, strict=True)) for r in tbl["rows"]],
                          description=f"staged rollout of {model_name}")
    for r in tbl["rows"]:
        print(" | ".join(str(v) for v in r))
    from tinymlops import report

    report.refresh_version_pages(model_name)  # version pages list the boards each version is canary/production for
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
