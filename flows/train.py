"""Train flow: a thin Prefect wrapper around :func:`tinymlops.train.run_train` plus a summary artifact."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tinymlops.train import run_train


# no retries: a failed fit is deterministic (same seed, same data) and each attempt would leave a FAILED run
@task(name="train-and-register", cache_policy=NO_CACHE)
def train_task(config_path: str, parent_run_id: str | None = None) -> dict[str, Any]:
    """Train, evaluate, export and register the float model the config describes."""
    return run_train(config_path, parent_run_id, progress=get_run_logger().info).to_dict()


@flow(name="train", log_prints=True)
def train_flow(config_path: str = "configs/pipeline.yaml") -> dict[str, Any]:
    """Train and register a new float model version."""
    out = train_task(config_path)
    m = out["metrics"]
    create_markdown_artifact(
        key="train-summary",
        markdown=(f"### Trained `{out['model_uri']}`\n\n| metric | value |\n|---|---|\n"
                  f"| test accuracy | {m['test_accuracy']:.2%} |\n| test macro-F1 | {m['test_macro_f1']:.3f} |\n"
                  f"| training time | {m['train_seconds']:.1f} s |\n| MLflow run | `{out['run_id']}` |\n"),
        description="float model trained and registered",
    )
    return out
