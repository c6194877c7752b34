"""Compress flow: one float version → every configured variant (mapped tasks), each evaluated and registered.

The library's entry point is :func:`tinymlops.compress.stage.run_compress` (what ``--no-prefect`` calls): it
chains ``open_stage`` → ``run_variant`` per variant → ``close_stage`` serially. This flow composes exactly those
three blocks instead of wrapping ``run_compress`` in one task, because mapping ``run_variant`` over tasks is what
lets Prefect run variants in parallel threads, retry/observe each one and show one task run per variant. With
``execution: {task_runner: dask}`` in the config the variant tasks run in a subflow on a Dask cluster instead.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runners import dask_runner
from tinymlops.compress import stage
from tinymlops.config import load_pipeline

#: variants run in this many threads: fine-tuning tiny models is dispatch-bound, so 2 threads on 2 cores overlap
#: one variant's training with another's conversion/evaluation; benchmarks/compress.py measured the vibration
#: demo's stage at 0.77-0.96x the serial time (never slower). TINYMLOPS_COMPRESS_WORKERS=1 runs them serially.
WORKERS = int(os.environ.get("TINYMLOPS_COMPRESS_WORKERS", "2"))


# no retries on these tasks: each attempt opens a new MLflow run; a variant's failure is returned, never raised
@task(name="compress-open", cache_policy=NO_CACHE)
def open_task(config_path: str, version: str, parent_run_id: str | None) -> dict[str, Any]:
    """Check the parent version, open the compress run and measure the float reference."""
    return stage.open_stage(load_pipeline(config_path), version, parent_run_id).to_dict()


@task(name="compress-variant", cache_policy=NO_CACHE, task_run_name="variant-{name}")
def variant_task(config_path: str, ref: dict[str, Any], name: str) -> dict[str, Any]:
    """Build, evaluate in its runtime and register one variant (a failure is returned, not raised)."""
    logger = get_run_logger()
    return stage.run_variant(load_pipeline(config_path), stage.StageRef(**ref), name, progress=logger.info)


@flow(name="compress-variants")
def variants_flow(config_path: str, ref: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """Run the variant tasks on this flow's task runner (a DaskTaskRunner: see flows/runners.py)."""
    return [f.result() for f in variant_task.map(config_path, unmapped(ref), names)]


@flow(name="compress", log_prints=True,
      task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))  # type: ignore[arg-type]
def compress_flow(config_path: str = "configs/pipeline.yaml", version: str = "1",
                  parent_run_id: str | None = None) -> dict[str, Any]:
    """Produce, evaluate and register every configured variant of a registered float model version."""
    t0 = time.perf_counter()
    cfg = load_pipeline(config_path)
    ref = open_task(config_path, str(version), parent_run_id)
    names = [stage.variant_name(s) for s in cfg.compress.variants]
    dask = dask_runner(cfg.execution)
    try:
        if dask is None:
            results = [f.result() for f in variant_task.map(config_path, unmapped(ref), names)]
        else:  # execution: {task_runner: dask}: the same tasks in a subflow on the Dask cluster
            results = variants_flow.with_options(task_runner=dask)(config_path, ref, names)
    except BaseException as exc:
        stage.fail_stage(stage.StageRef(**ref), exc)
        raise
    summary = stage.close_stage(stage.StageRef(**ref), results, time.perf_counter() - t0).to_dict()
    create_table_artifact(key="compress-variants", table=_table(summary),
                          description=f"variants of {ref['model_name']}/{version} evaluated in their runtimes")
    return summary


def _table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    def pct(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.2f}"

    rows = [{"variant": "float32 (parent)", "version": summary["parent_version"], "format": "onnx / tflite",
             "size_bytes": f"{summary['float_onnx_bytes']} / {summary['float_tflite_bytes']}",
             "gzip_bytes": f"{summary['float_onnx_gzip_bytes']} / {summary['float_tflite_gzip_bytes']}",
             "accuracy_pct": pct(summary["float_accuracy"]), "delta_pts": "", "status": "parent", "error": ""}]
    for v in summary["variants"]:
        rows.append({"variant": v["variant"], "version": v.get("version") or "", "format": v.get("format") or "",
                     "size_bytes": v.get("size_bytes") or "", "gzip_bytes": v.get("gzip_bytes") or "",
                     "accuracy_pct": pct(v.get("accuracy")), "delta_pts": pct(v.get("accuracy_delta")),
                     "status": v["status"], "error": v.get("error") or ""})
    return rows
