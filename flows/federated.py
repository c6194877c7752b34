"""Federated flow: Flower rounds across simulated devices → a registered float32 version → compress → profile.

A thin wrapper around :func:`tinymlops.learn.federated.run_federated` (what ``--no-prefect`` calls). The version
it registers is a parent like a centrally trained one; with ``downstream`` the config's compress variants and the
profile stage follow, exactly as in the pipeline flow, so the rollout can pick the federated model per target.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tinymlops.config import load_pipeline, resolve_relative
from tinymlops.learn.federated import run_federated


# no retries: a run is deterministic (seeded rounds) and each attempt would leave a FAILED run
@task(name="federate-and-register", cache_policy=NO_CACHE)
def federate_task(config_path: str, options: dict[str, Any], parent_run_id: str | None = None) -> dict[str, Any]:
    """Train the configured model federated and register the global model."""
    return run_federated(config_path, options, parent_run_id, progress=get_run_logger().info).to_dict()


@flow(name="federated", log_prints=True)
def federated_flow(config_path: str = "configs/pipeline.yaml", options: dict[str, Any] | None = None,
                   downstream: bool = True, parent_run_id: str | None = None) -> dict[str, Any]:
    """Train federated, register the global model, then (downstream) compress and profile it like any version."""
    out = federate_task(config_path, options or {}, parent_run_id)
    cfg = load_pipeline(config_path)
    if downstream and "compress" in cfg.stages and cfg.compress.variants:
        from flows.compress import compress_flow

        out["compress"] = compress_flow(config_path, out["version"], parent_run_id)
    if downstream and "profile" in cfg.stages:
        from flows.profile import profile_flow

        targets_dir = (str(resolve_relative(config_path, cfg.profile.targets_dir)) if cfg.profile.targets_dir
                       else None)
        out["profile"] = profile_flow(cfg.mlflow.registered_model, targets_dir, cfg.profile.targets,
                                      cfg.mlflow.experiment, parent_run_id, execution=cfg.execution.model_dump())
    lin, m = out["lineage"], out["metrics"]
    dp = (f"epsilon {lin['dp_epsilon']:.2f} (delta {lin['dp_delta']:g}, noise {lin['dp_noise_multiplier']:.3f}, "
          f"clip {lin['dp_clip']})" if lin["dp"] else "off")
    create_markdown_artifact(
        key="federated-summary",
        markdown=(f"### Federated `{out['model_uri']}` ({lin['strategy']})\n\n| figure | value |\n|---|---|\n"
                  f"| rounds | {lin['rounds']} |\n| clients (per round) | {lin['clients']} "
                  f"({lin['clients_per_round']}) |\n| samples on devices | {lin['samples']} |\n"
                  f"| test accuracy | {m['accuracy']:.2%} |\n| differential privacy | {dp} |\n"
                  f"| MLflow run | `{out['run_id']}` |\n"),
        description="federated global model registered")
    return out
