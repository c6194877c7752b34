"""Pipeline flow: train → compress → profile → drift → rollout, handing identifiers (never objects) on."""

from __future__ import annotations

import importlib.util
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.train import train_task
from tinymlops import registry
from tinymlops.config import load_pipeline, resolve_relative


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config_path: str = "configs/pipeline.yaml") -> dict[str, Any]:
    """Run every configured stage of the pipeline on one config file."""
    logger = get_run_logger()
    cfg = load_pipeline(config_path)
    registry.connect(cfg.mlflow.tracking_uri)
    summary: dict[str, Any] = {"config": config_path, "project": cfg.project}
    with registry.run(cfg.mlflow.experiment, "pipeline", tags={"tinymlops.stage": "pipeline",
                                                               "config_hash": cfg.config_hash()}) as parent:
        summary["pipeline_run_id"] = parent.run_id
        train = train_task(config_path, parent.run_id)
        summary["train"] = train
        logger.info("registered %s (test accuracy %.2f%%)", train["model_uri"],
                    100 * train["metrics"]["test_accuracy"])

        if "compress" in cfg.stages and cfg.compress.variants and _has("flows.compress"):
            from flows.compress import compress_flow

            summary["compress"] = compress_flow(config_path, train["version"], parent.run_id)

        if "profile" in cfg.stages and _has("flows.profile"):
            from flows.profile import profile_flow

            targets_dir = str(resolve_relative(config_path, cfg.profile.targets_dir))
            summary["profile"] = profile_flow(cfg.mlflow.registered_model, targets_dir, cfg.profile.targets,
                                              cfg.mlflow.experiment)

        if "rollout" in cfg.stages and cfg.rollout and _has("flows.rollout"):
            # the demo fleet is simulated (fresh service + agents); real fleets: `tinymlops rollout start`
            from flows.rollout import rollout_demo_flow
            from tinymlops.errors import TinyMLOpsError

            try:
                summary["rollout"] = rollout_demo_flow(
                    cfg.mlflow.registered_model, config_path=str(resolve_relative(config_path, cfg.rollout)),
                    targets_dir=str(resolve_relative(config_path, cfg.profile.targets_dir)))
            except TinyMLOpsError as exc:  # e.g. a single version: nothing to roll out over a baseline
                logger.warning("rollout stage skipped: %s", exc)
                summary["rollout"] = {"skipped": str(exc)}
    create_markdown_artifact(key="pipeline-summary", markdown=_summary_markdown(summary),
                             description=f"pipeline run for {cfg.project}")
    return summary


def _summary_markdown(summary: dict[str, Any]) -> str:
    t = summary["train"]
    lines = [f"## Pipeline `{summary['project']}`", "", f"- trained and registered `{t['model_uri']}` "
             f"(test accuracy {t['metrics']['test_accuracy']:.2%})"]
    for stage in ("compress", "profile", "drift", "rollout"):
        if stage in summary:
            lines.append(f"- {stage}: done")
    return "\n".join(lines) + "\n"
