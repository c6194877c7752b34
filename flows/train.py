"""Train flow: dataset → pre-processing → model → fit → evaluate → exports → registered float version."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tinymlops.config import load_pipeline
from tinymlops.train import run_training


@task(name="train-and-register", cache_policy=NO_CACHE)
def train_task(config_path: str, parent_run_id: str | None = None) -> dict[str, Any]:
    """Train, evaluate, export and register the float model the config describes."""
    logger = get_run_logger()
    cfg = load_pipeline(config_path)
    res = run_training(cfg, progress=logger.info, parent_run_id=parent_run_id)
    return {"run_id": res.run_id, "model_name": res.model_name, "version": res.version,
            "model_uri": res.model_uri, "metrics": res.metrics, "dataset_digests": res.dataset_digests,
            "duration_s": res.duration_s, "experiment": cfg.mlflow.experiment}


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
