"""The pipeline config's ``execution:`` section: where fan-out tasks run (compression variants, version x board cells).

``threads`` (default) runs them on a thread pool in the flow's process. ``dask`` runs them as mapped Prefect tasks
on Dask: a ``LocalCluster`` of worker processes on this machine, or an existing scheduler (``address``) for a
cluster whose workers have the project installed and reach the same MLflow store and Prefect API. Tasks hand each
other identifiers only (model name, version, board name), so any worker can run any cell.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tinymlops.config_base import Strict


class ExecutionSection(Strict):
    """Where the fan-out tasks of compress and profile run."""

    task_runner: Literal["threads", "dask"] = "threads"
    address: str | None = Field(None, pattern=r"^(tcp|tls|inproc|ucx)://\S+$",
                                description="scheduler of an existing Dask cluster (tcp://host:8786); "
                                            "default with dask: a LocalCluster on this machine")
    workers: int | None = Field(None, ge=1, le=256,
                                description="worker processes of the LocalCluster (dask without address); "
                                            "default: one per core")

    @model_validator(mode="after")
    def _address_needs_dask(self) -> ExecutionSection:
        if self.address and self.task_runner != "dask":
            raise ValueError("address is the Dask scheduler: set task_runner: dask to use it")
        if self.workers and self.task_runner != "dask":
            raise ValueError("workers sizes a Dask LocalCluster: set task_runner: dask to use it")
        if self.address and self.workers:
            raise ValueError("workers sizes a LocalCluster; an existing cluster (address) has its own workers")
        return self
