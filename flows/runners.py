"""Task runners for the fan-out steps (compress variants, profile cells), from the config's ``execution:`` section.

``threads`` keeps each flow's own thread pool. ``dask`` runs the mapped tasks in a subflow on prefect-dask's
``DaskTaskRunner``: a ``LocalCluster`` of worker processes (one per core unless ``workers`` says otherwise) or an
existing scheduler by ``address``. Results come back to the flow's process, which logs and registers as before.
"""

from __future__ import annotations

import os
from typing import Any

from tinymlops.execution import ExecutionSection


def dask_runner(execution: ExecutionSection | dict[str, Any] | None) -> Any | None:
    """Return a DaskTaskRunner for a ``task_runner: dask`` section, None for threads (the flow's own pool)."""
    sec = execution if isinstance(execution, ExecutionSection) else ExecutionSection.model_validate(execution or {})
    if sec.task_runner != "dask":
        return None
    from prefect_dask import DaskTaskRunner

    if sec.address:
        return DaskTaskRunner(address=sec.address)
    n = sec.workers or os.cpu_count() or 1
    # processes, one thread each: TensorFlow and the profilers hold the GIL; no dashboard port to collide on
    return DaskTaskRunner(cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})
