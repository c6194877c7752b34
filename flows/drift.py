"""Drift flow: check a model version's fleet telemetry per target x cohort, log the verdicts, close the loop.

Thin wrapper around :func:`tinymlops.monitor.check.run_drift_check`; a ``retrain`` verdict starts the pipeline
through Prefect (its deployment when one exists, else a local flow run in a subprocess) at most once per cooldown.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows import retry_transient
from tinymlops import registry, settings
from tinymlops.monitor import retrain
from tinymlops.monitor.check import CheckResult, load_drift_config, run_drift_check
from tinymlops.monitor.config import RetrainSection, parse_duration_s

REPO = Path(__file__).resolve().parents[1]


# one retry: a check only reads telemetry and logs new runs (a retried check logs its verdicts again)
@task(name="drift-check", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_transient,
      cache_policy=NO_CACHE)
def check_task(model: str, config_path: str, version: str | None, target: str | None, cohort: str | None,
               window: str | None, until: float | None, store_url: str | None = None,
               log: bool = True, parent_run_id: str | None = None, experiment: str | None = None) -> CheckResult:
    """Merge sketches, measure, judge and log every target x cohort of one version."""
    return run_drift_check(model, config_path, version=version, target=target, cohort=cohort, until=until,
                           window_s=parse_duration_s(window) if window else None, store_url=store_url, log=log,
                           parent_run_id=parent_run_id, experiment=experiment)


def start_pipeline(section: RetrainSection, model: str, plan: retrain.RetrainPlan | None = None) -> dict[str, Any]:
    """Start a retrain plan (default: the pipeline): its Prefect deployment if registered, else a flow run in a
    subprocess (or inline)."""
    plan = plan or retrain.RetrainPlan("central", section.entrypoint, {"config_path": section.pipeline_config},
                                       section.deployment)
    params = plan.params
    if section.mode in ("auto", "deployment") and plan.deployment:
        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound

        try:
            fr = cast("FlowRun", run_deployment(name=plan.deployment, parameters=params, timeout=0,
                                              tags=["tinymlops", "retrain", f"model:{model}"]))
            return {"how": "deployment", "strategy": plan.strategy, "deployment": plan.deployment,
                    "flow_run_id": str(fr.id)}
        except ObjectNotFound:
            if section.mode == "deployment":
                raise
    module, func = plan.entrypoint.split(":")
    # personalise only flips cohort switches in the fleet DB (a second at most): auto runs it here, as a subflow
    # of the drift run, so the switch is on when the check returns; the subprocess is for retrains taking minutes
    if section.mode == "inline" or (section.mode == "auto" and plan.strategy == "personalise"):
        out = getattr(importlib.import_module(module), func)(**params)
        return {"how": "inline", "strategy": plan.strategy, "entrypoint": plan.entrypoint, "result": str(out)[:500]}
    logs = settings.home() / "retrain"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = (logs / f"{model.replace('/', '_')}-pipeline.log").open("ab")
    code = f"from {module} import {func} as f; f(**{params!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)  # outlives this flow run: retraining takes minutes
    return {"how": "subprocess", "strategy": plan.strategy, "entrypoint": plan.entrypoint, "pid": proc.pid,
            "log": str(log_file.name)}


# no retries: a retried trigger could start the pipeline twice (the cooldown claim is the guard)
@task(name="retrain-trigger", cache_policy=NO_CACHE)
def retrain_task(model: str, level: str, config_path: str, details: dict[str, Any],
                 store_url: str | None = None) -> dict[str, Any]:
    """Start one retrain (the config's ``retrain.strategy``) for a retrain verdict unless in the cooldown."""
    cfg = load_drift_config(config_path)
    # a strategy that cannot run fails before the claim (no cooldown spent on it)
    cohorts = [str(g[2]) for g in details.get("groups", []) if g[2]]
    plan = retrain.plan(cfg.retrain, model, config_path, store_url, cohorts) if cfg.retrain.enabled else None
    decision = retrain.claim(model, level, cfg.retrain.cooldown_s, cfg.retrain.enabled, details=details)
    out: dict[str, Any] = {"decision": retrain.decision_dict(decision), "strategy": cfg.retrain.strategy}
    if decision.start and plan is not None:
        started = start_pipeline(cfg.retrain, model, plan)
        retrain.record_started(model, started)
        out["started"] = started
    return out


def _table(result: CheckResult) -> list[dict[str, Any]]:
    return [{"version": g.verdict.version, "target": g.target or "", "cohort": g.cohort or "", "verdict": g.verdict.level,
             "inferences": g.verdict.n_inferences, "devices": g.verdict.n_devices,
             "drifted_features": len(g.verdict.drifted_features),
             "evidently_drifted": len((g.evidently or {}).get("data_drift", {}).get("drifted", [])),
             "reasons": "; ".join(g.verdict.reasons)[:300], "mlflow_run_id": g.run_id or ""} for g in result.groups]


@flow(name="drift", log_prints=True)
def drift_flow(model: str, config_path: str = "configs/drift.yaml", version: str | None = None,
               target: str | None = None, cohort: str | None = None, window: str | None = None,
               until: float | None = None, tracking_uri: str | None = None,
               store_url: str | None = None, log: bool = True, allow_retrain: bool = True,
               parent_run_id: str | None = None, experiment: str | None = None) -> dict[str, Any]:
    """Check drift of a model version per target x cohort; a retrain verdict starts the pipeline (cooldown).

    The verdict runs nest under ``parent_run_id`` in ``experiment`` (the pipeline run), else under the day's
    ``drift checks <date>`` run of the drift config's experiment.
    """
    logger = get_run_logger()
    tracking_uri, store_url = tracking_uri or None, store_url or None  # "" from an unset deployment placeholder
    registry.connect(tracking_uri)
    # cast: mypy picks Task.__call__'s coroutine overload for this sync task
    result = cast("CheckResult", check_task(model, config_path, version, target, cohort, window, until, store_url,
                                            log, parent_run_id, experiment))
    for g in result.groups:
        logger.info("%s v%s %s/%s: %s (%s)", model, g.verdict.version, g.target, g.cohort, g.verdict.level,
                    "; ".join(g.verdict.reasons[:2]))
    key = f"drift-{model}".lower().replace("_", "-").replace("/", "-").replace(".", "-")
    create_table_artifact(key=key, table=_table(result), description=f"drift verdicts of {model} v{result.version}")
    create_markdown_artifact(key=f"{key}-report", markdown="\n\n---\n\n".join(g.markdown for g in result.groups),
                             description=f"drift report of {model} v{result.version}")
    summary = result.to_dict()
    if result.level == "retrain" and allow_retrain:
        details = {"groups": [(g.verdict.version, g.target, g.cohort) for g in result.groups
                              if g.verdict.level == "retrain"]}
        summary["retrain"] = retrain_task(model, "retrain", config_path, details, store_url)
        logger.info("retrain: %s", summary["retrain"]["decision"]["reason"])
    return summary


def pipeline_drift_stage(pipeline_config: str, until: float | None = None, store_url: str | None = None,
                         parent_run_id: str | None = None, target: str | None = None, window: str | None = None,
                         allow_retrain: bool = True) -> dict[str, Any]:
    """Run the drift check of a pipeline config's model with the drift config it names (the demo's stage).

    With ``parent_run_id`` (the pipeline run) the verdict runs nest under it in the pipeline's experiment.
    ``target``/``window`` narrow the check (the demo's follow-up: the monitored target since the switch).
    """
    from tinymlops.config import load_pipeline, resolve_relative

    cfg = load_pipeline(pipeline_config)
    drift_path = resolve_relative(pipeline_config, cfg.drift) if cfg.drift else REPO / "configs" / "drift.yaml"
    return drift_flow(cfg.mlflow.registered_model, str(drift_path), target=target, window=window, until=until,
                      tracking_uri=cfg.mlflow.tracking_uri, store_url=store_url, allow_retrain=allow_retrain,
                      parent_run_id=parent_run_id, experiment=cfg.mlflow.experiment if parent_run_id else None)
