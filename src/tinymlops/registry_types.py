"""What the MLflow adapter hands out: plain dataclasses, so MLflow's object shapes stop at ``tinymlops.registry``.

``registry`` re-exports them (``registry.VersionInfo`` ...); the converters read MLflow's entities by attribute and
never import MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class VersionInfo:
    """A registered model version: where its files are, what run made it, its tags and aliases."""

    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    description: str = ""
    status: str = "READY"
    created_ms: int = 0

    @property
    def uri(self) -> str:
        """Return the ``models:/name/version`` URI."""
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class DatasetInput:
    """A dataset logged as an input of a run (name, digest, source JSON, context such as ``train``, schema JSON)."""

    name: str
    digest: str
    source: str
    context: str
    schema: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunInfo:
    """A run: identity, status, params, latest metrics, tags, artifact location and dataset inputs."""

    run_id: str
    experiment_id: str
    status: str
    name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifact_uri: str = ""
    start_ms: int = 0
    end_ms: int | None = None
    datasets: list[DatasetInput] = field(default_factory=list)


@dataclass(frozen=True)
class AliasMove:
    """One recorded alias move (from the ``<model>/alias-history`` experiment)."""

    time_ms: int
    alias: str
    version: str
    previous_version: str
    reason: str
    actor: str
    figures: dict[str, float] = field(default_factory=dict)


def version_info(mv: Any) -> VersionInfo:
    """Return the dataclass of an MLflow ``ModelVersion`` (read by attribute; MLflow is not imported)."""
    return VersionInfo(name=str(mv.name), version=str(mv.version), run_id=str(mv.run_id or ""),
                       source=str(mv.source or ""), tags=dict(mv.tags or {}), aliases=list(mv.aliases or []),
                       description=str(mv.description or ""), status=str(mv.status or ""),
                       created_ms=int(mv.creation_timestamp or 0))


def run_info(r: Any) -> RunInfo:
    """Return the dataclass of an MLflow ``Run`` (info, data and dataset inputs)."""
    datasets = []
    for inp in (r.inputs.dataset_inputs if r.inputs else []):
        tags = {t.key: t.value for t in inp.tags}
        datasets.append(DatasetInput(inp.dataset.name, inp.dataset.digest, str(inp.dataset.source),
                                     tags.get("mlflow.data.context", inp.dataset.name), str(inp.dataset.schema or ""),
                                     tags))
    return RunInfo(run_id=r.info.run_id, experiment_id=str(r.info.experiment_id), status=str(r.info.status),
                   name=str(r.info.run_name or ""), params=dict(r.data.params), metrics=dict(r.data.metrics),
                   tags=dict(r.data.tags), artifact_uri=str(r.info.artifact_uri or ""),
                   start_ms=int(r.info.start_time or 0), end_ms=r.info.end_time, datasets=datasets)
