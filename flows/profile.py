"""Profile flow: a thin Prefect wrapper around :func:`tinymlops.profile.matrix.run_profile` plus a table artifact.

On a Dask cluster (``execution`` with ``task_runner: dask``) it composes the same stage from its steps instead:
``open_profile`` → one ``profile_cell`` task per (version, target) → ``close_profile``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows import retry_transient
from flows.runners import dask_runner
from tinymlops.profile import matrix
from tinymlops.profile.matrix import run_profile


# retries are safe: metrics/tags are overwritten, an alias only moves to the same recommendation
@task(name="profile-matrix", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2,
      retry_condition_fn=retry_transient)
def profile_task(model_name: str, targets_dir: str | None, targets: list[str] | str,
                 experiment: str | None, parent_run_id: str | None = None) -> dict[str, Any]:
    """Profile all packaged versions on all targets, log to MLflow, move candidate aliases."""
    return run_profile(model_name, targets_dir, targets, experiment, parent_run_id=parent_run_id).to_dict(rows=False)


@task(name="profile-cell", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2,
      retry_condition_fn=retry_transient, task_run_name="profile-v{version[version]}-{target}")
def cell_task(plan: dict[str, Any], version: dict[str, Any], target: str) -> dict[str, Any]:
    """Profile one version on one target (any worker: it downloads the package by name and version)."""
    return matrix.profile_cell(plan, version, target)


@flow(name="profile-cells")
def cells_flow(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Run every (version, target) cell on this flow's task runner (a DaskTaskRunner: see flows/runners.py)."""
    futures = [cell_task.submit(plan, v, t["name"]) for v in plan["versions"] for t in plan["targets"]]
    return [f.result() for f in futures]


@flow(name="profile", log_prints=True)
def profile_flow(model_name: str, targets_dir: str | None = None, targets: list[str] | str = "all",
                 experiment: str | None = None, parent_run_id: str | None = None,
                 execution: dict[str, Any] | None = None) -> dict[str, Any]:
    """Profile a registered model on every target and recommend one version per target.

    With ``parent_run_id`` (the pipeline run, in ``experiment``) the profile run nests under it. With
    ``execution={"task_runner": "dask", ...}`` the version x target cells run as mapped tasks on a Dask cluster.
    """
    dask = dask_runner(execution)
    if dask is None:
        summary = profile_task(model_name, targets_dir, targets, experiment, parent_run_id)
    else:
        plan = matrix.open_profile(model_name, targets_dir, targets).to_dict()
        rows = cells_flow.with_options(task_runner=dask)(plan)
        summary = matrix.close_profile(plan, rows, experiment, parent_run_id).to_dict(rows=False)
    table = recommendation_table(summary)
    create_table_artifact(key="profile-recommendations", table=table,
                          description=f"recommended version of {model_name} per target")
    get_run_logger().info("profiled %d versions on %d targets in %.1f s", len(summary["versions"]),
                          len(summary["targets"]), summary["seconds"])
    print(text_table(table))
    return summary


def recommendation_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one row per target: recommended version, variant and its figures (or why nothing fits)."""
    rows = []
    for target, rec in summary["targets"].items():
        rows.append({
            "target": target, "version": rec["recommended_version"] or "-", "variant": rec["variant"] or "-",
            "accuracy": "" if rec["accuracy"] is None else f"{rec['accuracy']:.4f}",
            "latency_ms": "" if rec["latency_ms"] is None else f"{rec['latency_ms']:.4g}",
            "energy_uj": "" if rec["energy_uj"] is None else f"{rec['energy_uj']:.4g}",
            "peak_ram_bytes": rec["peak_ram_bytes"] or "", "pareto": ",".join(rec["pareto_versions"]),
            "why_none": "; ".join(rec["reasons"][:3]),
        })
    return rows


def text_table(rows: list[dict[str, Any]]) -> str:
    """Render the recommendation table as aligned text (printed at the end of the profile stage)."""
    cols = ["target", "version", "variant", "accuracy", "latency_ms", "energy_uj", "peak_ram_bytes"]
    width = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols}
    lines = ["recommended version per target", "  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(lines)
