"""Field-data retrain flow: a thin Prefect wrapper around :func:`tinymlops.monitor.field_retrain.run_field_retrain`.

What a ``retrain`` verdict starts under ``retrain.strategy: central`` with ``retrain.field_data.enabled``
(:func:`tinymlops.monitor.retrain.plan`): train on the configured dataset plus consented field data, compare old
and new on the held-out field test split, move the candidate alias only if the new version is better. With too few
consented samples it runs the configured pipeline instead (what ``central`` does without field data).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tinymlops.monitor.field_retrain import run_field_retrain


# no retries: a retried retrain would register a second version
@task(name="field-retrain", cache_policy=NO_CACHE)
def field_retrain_task(model: str, drift_config: str, store_url: str | None = None) -> dict[str, Any]:
    """Train on configured + consented field data, register, compare on the field test split."""
    return run_field_retrain(model, drift_config, store_url, progress=get_run_logger().info).to_dict()


@flow(name="field-retrain", log_prints=True)
def field_retrain_flow(model: str, drift_config: str = "configs/drift.yaml",
                       store_url: str | None = None) -> dict[str, Any]:
    """Retrain a model on its configured dataset plus consented field data (drift verdict ``retrain``)."""
    out = field_retrain_task(model, drift_config, store_url or None)
    if out["new_version"] is None:  # too few consented samples: the configured pipeline, as without field data
        from flows.pipeline import pipeline_flow
        from tinymlops.config import resolve_relative
        from tinymlops.monitor.check import load_drift_config

        get_run_logger().info("%s; running the configured pipeline", out["reason"])
        section = load_drift_config(drift_config).retrain
        out["pipeline"] = pipeline_flow(str(resolve_relative(drift_config, section.pipeline_config)))
        return out
    create_markdown_artifact(
        key="field-retrain-summary",
        markdown=(f"### Field-data retrain of `{model}`\n\n- new version: v{out['new_version']}\n"
                  f"- field dataset: {out['field_version']} ({out['field_train_samples']} train / "
                  f"{out['field_test_samples']} held out)\n- {out['reason']}\n"
                  f"- `{out['candidate_alias']}` moved: {out['candidate_set']}\n"),
        description="retrain on consented field data")
    return out
