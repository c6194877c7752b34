"""Pipeline flow: train → compress → profile → rollout → drift, handing identifiers (never objects) on.

In the demo a drift verdict whose config says ``retrain: {strategy: personalise}`` switches the drifted monitored
cohorts' personalisation on; the pipeline then runs those cohorts again and checks them once more
(``flows.personalise.demo_follow_up_flow``): the ``personalise`` table shows fleet-model vs personalised accuracy.

Each stage runs its own flow (a subflow run) around its library entry point. ``stages:`` in the config picks the
stages; without ``train`` the pipeline starts from the latest registered float32 version (a clear error when the
model has none).
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tinymlops import registry
from tinymlops.config import PipelineConfig, load_pipeline, resolve_relative
from tinymlops.errors import TinyMLOpsError


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config_path: str = "configs/pipeline.yaml", tracking_uri: str | None = None) -> dict[str, Any]:
    """Run the configured stages on one config file, in this order: train → compress → profile → rollout → drift.

    ``tracking_uri`` (a deployment parameter) overrides the config's MLflow store for this run's process.
    """
    logger = get_run_logger()
    if tracking_uri:  # every stage resolves its store through settings.tracking_uri: environment first
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    cfg = load_pipeline(config_path)
    registry.connect(cfg.mlflow.tracking_uri)
    summary: dict[str, Any] = {"config": config_path, "project": cfg.project}
    with registry.run(cfg.mlflow.experiment, "pipeline", tags={"tinymlops.stage": "pipeline",
                                                               "config_hash": cfg.config_hash()}) as parent:
        summary["pipeline_run_id"] = parent.run_id
        if "train" in cfg.stages:
            from flows.train import train_task

            train = train_task(config_path, parent.run_id)
            logger.info("registered %s (test accuracy %.2f%%)", train["model_uri"],
                        100 * train["metrics"]["test_accuracy"])
        else:
            from tinymlops.train import latest_trained

            train = {**latest_trained(cfg).to_dict(), "skipped": True}
            logger.info("train not in stages: starting from %s", train["model_uri"])
        summary["train"] = train

        if "compress" in cfg.stages and cfg.compress.variants:
            from flows.compress import compress_flow

            summary["compress"] = compress_flow(config_path, train["version"], parent.run_id)

        targets_dir = (str(resolve_relative(config_path, cfg.profile.targets_dir)) if cfg.profile.targets_dir
                       else None)
        if "profile" in cfg.stages:
            from flows.profile import profile_flow

            summary["profile"] = profile_flow(cfg.mlflow.registered_model, targets_dir, cfg.profile.targets,
                                              cfg.mlflow.experiment, parent.run_id,
                                              execution=cfg.execution.model_dump())

        fleet_db = None
        if "rollout" in cfg.stages and cfg.rollout:
            summary["rollout"] = _rollout_stage(config_path, cfg, targets_dir, monitor="drift" in cfg.stages,
                                                parent_run_id=parent.run_id)
            fleet_db = summary["rollout"].get("fleet_db")

        if "drift" in cfg.stages and cfg.drift:
            from flows.drift import pipeline_drift_stage

            drift = pipeline_drift_stage(config_path, store_url=fleet_db, parent_run_id=parent.run_id)
            summary["drift"] = {**drift, "table": _drift_table(drift)}
            monitored = summary.get("rollout", {}).get("monitored")
            started = drift.get("retrain", {}).get("started") or {}
            if monitored and fleet_db and started.get("strategy") == "personalise":
                from flows.personalise import demo_follow_up_flow

                after = demo_follow_up_flow(config_path, fleet_db, monitored, parent.run_id, targets_dir=targets_dir)
                summary["personalise"] = {**after, "table": _personalise_table(after)}
        _review_pages(summary, cfg, parent, targets_dir)
    create_markdown_artifact(key="pipeline-summary", markdown=_summary_markdown(summary),
                             description=f"pipeline run for {cfg.project}")
    return summary


def _review_pages(summary: dict[str, Any], cfg: PipelineConfig, parent: registry.RunRef,
                  targets_dir: str | None) -> None:
    """Refresh the versions' alias sections and log the release report on the pipeline run (MLflow UI review)."""
    from tinymlops import report

    report.refresh_version_pages(cfg.mlflow.registered_model)
    started_ms = registry.get_run(parent.run_id).start_ms
    size = report.log_release_report(summary, parent.run_id, parent.experiment_id, started_ms, targets_dir)
    get_run_logger().info("release report: release_report.html on run %s (%d bytes)", parent.run_id, size)


def _rollout_stage(config_path: str, cfg: PipelineConfig, targets_dir: str | None, monitor: bool,
                   parent_run_id: str | None = None) -> dict[str, Any]:
    """Roll out on the simulated demo fleet (fresh service + agents); real fleets: `tinymlops rollout start`.

    A ``rollout`` run nested under the pipeline run records the outcome per board (renamed e.g.
    ``rollout raspberry-pi-4 v9, raspberry-pi-zero-2-w v8``) with the summary table as ``rollout/summary.json``.
    """
    assert cfg.rollout is not None
    with registry.run(cfg.mlflow.experiment, "rollout", parent_run_id, tags={"tinymlops.stage": "rollout"}) as r:
        out = _rollout_demo(config_path, cfg, targets_dir, monitor)
        rollouts = out.get("rollouts") or []
        if rollouts:
            name = "rollout " + ", ".join(f"{x['target']} v{x['version']}" for x in rollouts)
            registry.set_tags(r.run_id, {"mlflow.runName": name[:250]})
            registry.log_metrics(r.run_id, {f"{x['target']}.promoted": float(x.get("status") == "succeeded")
                                            for x in rollouts})
        registry.log_dict(r.run_id, {k: out[k] for k in ("table", "skipped") if k in out}, "rollout/summary.json")
    return out


def _rollout_demo(config_path: str, cfg: PipelineConfig, targets_dir: str | None, monitor: bool) -> dict[str, Any]:
    from flows.rollout import rollout_demo_flow

    assert cfg.rollout is not None
    d = cfg.demo_fleet
    try:
        return rollout_demo_flow(
            cfg.mlflow.registered_model, d.healthy_target, d.faulty_target,
            str(resolve_relative(config_path, cfg.rollout)), d.devices_per_target, d.fault,
            targets_dir, monitor_target=d.monitor_target if monitor else None,
            monitor_devices=d.monitor_devices, monitor_drift={str(k): v for k, v in d.monitor_drift.items()})
    except TinyMLOpsError as exc:  # e.g. a single version: nothing to roll out over a baseline
        get_run_logger().warning("rollout stage skipped: %s", exc)
        return {"skipped": str(exc)}


def _drift_table(drift: dict[str, Any]) -> dict[str, Any]:
    from tinymlops.monitor.verdict import accuracy_line

    rows = [[g["target"] or "", g["cohort"] or "", g["version"], g["level"],
             accuracy_line(g.get("summary") or {}, short=True), "; ".join(g["reasons"][:2])[:160]]
            for g in drift.get("groups", [])]
    retrain = drift.get("retrain", {}).get("decision", {}).get("reason")
    title = "drift verdicts per target x cohort" + (f" (retrain: {retrain})" if retrain else "")
    return {"title": title, "columns": ["target", "cohort", "version", "verdict",
                                           "accuracy (estimated without labels / feedback)", "reasons"], "rows": rows}


def _personalise_table(after: dict[str, Any]) -> dict[str, Any]:
    """Each monitored cohort after the verdict: fleet-model vs personalised accuracy on the same later labels."""
    rows, head = [], []
    for g in sorted(after["check"].get("groups", []), key=lambda g: g["cohort"] or ""):
        s, cohort = g.get("summary") or {}, g["cohort"] or ""
        if s.get("personal_accuracy") is not None:  # scored on the device: both models on the same inferences
            base, personal, n = s["personal_base_accuracy"], s["personal_accuracy"], s["personal_labelled_n"]
            kinds = [f"{k.removeprefix('personal_devices_').replace('_head', '+head')} {v}"
                     for k, v in sorted(s.items()) if k.startswith("personal_devices_")]
            how = f"on: {s['personalised_devices']} device(s) ({', '.join(kinds) or 'none yet'})"
            head.append(f"{cohort} fleet model {base:.3f} -> personalised {personal:.3f} (n={n})")
            rows.append([g["target"] or "", cohort, how, f"{base:.3f}", f"{personal:.3f}", f"{n} scored on device",
                         g["level"]])
        elif s.get("feedback_accuracy") is not None:
            acc, n = s["feedback_accuracy"], s["feedback_n"]
            how = "on, not yet scored" if cohort in after.get("personalising", []) else "off"
            head.append(f"{cohort} {acc:.3f}")
            rows.append([g["target"] or "", cohort, how, f"{acc:.3f}", "", f"{n} feedback", g["level"]])
    title = (f"after the personalise verdict ({after['seconds']:.0f} s of the monitored cohorts, window "
             f"{after['window']}): " + ("; ".join(head) or "no labelled inferences"))
    return {"title": title, "columns": ["target", "cohort", "personalisation", "accuracy: fleet model",
                                        "personalised", "labelled inferences", "verdict"], "rows": rows}


def _markdown_table(tbl: dict[str, Any]) -> list[str]:
    return ["", f"**{tbl['title']}**", "", "| " + " | ".join(tbl["columns"]) + " |",
            "|" + "---|" * len(tbl["columns"]), *("| " + " | ".join(str(c) for c in r) + " |" for r in tbl["rows"])]


def _summary_markdown(summary: dict[str, Any]) -> str:
    t = summary["train"]
    lines = [f"## Pipeline `{summary['project']}`", "", f"- {'started from' if t.get('skipped') else 'trained and registered'}"
             f" `{t['model_uri']}` (test accuracy {t['metrics']['test_accuracy']:.2%})"]
    for stage in ("compress", "profile", "rollout", "drift"):
        if stage in summary:
            lines.append(f"- {stage}: done")
    for key in ("drift", "personalise"):  # the verdicts, then what the personalise strategy changed
        if summary.get(key, {}).get("table"):
            lines += _markdown_table(summary[key]["table"])
    return "\n".join(lines) + "\n"
