"""The one MLflow adapter: runs, datasets, registered model versions, tags, aliases (with history), lineage.

No other module calls MLflow directly. Runs are addressed by explicit id through ``MlflowClient`` (never the
fluent "active run"), so Prefect tasks in threads cannot log into each other's runs.

Conventions every stage relies on:

* every registered version has tags ``variant``, ``format`` (``onnx``/``tflite``), ``task`` and points at a
  run whose ``package/`` directory holds the model file and ``manifest.json`` (what devices receive);
* alias moves are recorded as runs of the experiment ``<model>/alias-history`` (tags: alias, version,
  previous_version, reason; metrics: the figures), so "which version was where, when, and why" is answerable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlops import hygiene, registry_ui, settings
from tinymlops.errors import RegistryError
from tinymlops.mlflow_store import check_sqlite_uri, env_override, store_error_cause
from tinymlops.registry_types import AliasMove, RunInfo, VersionInfo, run_info, version_info

if TYPE_CHECKING:
    from mlflow import MlflowClient

PACKAGE_DIR = "package"
read_manifest = registry_ui.read_manifest
_client: MlflowClient | None = None
_client_uri: str | None = None


def tracking_uri() -> str:
    """Return the tracking URI in use (after ``connect``)."""
    return _client_uri or settings.tracking_uri()


def connect(uri: str | None = None) -> MlflowClient:
    """Return a client for the configured store, checking that it answers; cached per URI."""
    global _client, _client_uri
    resolved = settings.tracking_uri(uri)
    if _client is not None and _client_uri == resolved:
        return _client
    settings.prepare_environment()
    import mlflow
    from mlflow import MlflowClient

    sqlite_path = check_sqlite_uri(resolved)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    user_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    for k, v in user_env.items():  # MLflow exports the URI to the environment; keep the user's choice in charge
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        # one quick try for the probe: an absent server fails in a second, not after urllib3's retries
        with env_override({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}):
            client = MlflowClient(tracking_uri=resolved, registry_uri=resolved)
            client.search_experiments(max_results=1)
    except Exception as exc:  # any transport or store error means "not usable"
        if sqlite_path is not None:
            raise RegistryError(f"MLflow store {sqlite_path} is not a usable MLflow database: "
                                f"{store_error_cause(exc)}") from None
        raise RegistryError(f"MLflow tracking store {resolved} is not reachable: {store_error_cause(exc)}") from None
    _client, _client_uri = client, resolved
    return client


def client() -> MlflowClient:
    """Return the connected client (connecting to the default store if needed)."""
    return _client if _client is not None else connect()


def ensure_experiment(name: str) -> str:
    """Return the id of a model-training experiment, creating it (local artifact root for the embedded store)."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        registry_ui.mark_model_training(c, exp)
        return exp.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:"):
        location = (settings.artifact_root() / name.replace("/", "_")).as_uri()
    try:
        return c.create_experiment(name, artifact_location=location, tags=dict([registry_ui.EXPERIMENT_KIND]))
    except Exception:  # a concurrent creator won the race
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@dataclass(frozen=True)
class RunRef:
    """A handle to an MLflow run."""

    run_id: str
    experiment_id: str


@contextlib.contextmanager
def run(experiment: str, name: str, parent_run_id: str | None = None,
        tags: dict[str, str] | None = None) -> Iterator[RunRef]:
    """Open a run; it ends FINISHED, or FAILED with the error recorded if the block raises."""
    ref = start_run(experiment, name, parent_run_id, tags)
    try:
        yield ref
    except BaseException as exc:  # KeyboardInterrupt or a termination signal (not an Exception): KILLED
        end_run(ref.run_id, f"{type(exc).__name__}: {exc}", interrupted=not isinstance(exc, Exception))
        raise
    end_run(ref.run_id)


def log_params(run_id: str, params: dict[str, Any]) -> None:
    """Log parameters (values stringified, nested dicts flattened with dots)."""
    flat = registry_ui.flatten(params)
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client().log_batch(run_id, params=items[i:i + 100])


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log numeric metrics in one batch."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
    for i in range(0, len(items), 500):
        client().log_batch(run_id, metrics=items[i:i + 500])


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    """Set run tags."""
    from mlflow.entities import RunTag

    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Upload a file or a directory's contents."""
    p = Path(path)
    if p.is_dir():
        client().log_artifacts(run_id, str(p), artifact_path)
    else:
        client().log_artifact(run_id, str(p), artifact_path)


def log_dict(run_id: str, obj: Any, artifact_file: str) -> None:
    """Log a JSON-serialisable object as an artifact file."""
    client().log_dict(run_id, obj, artifact_file)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    """Log text (markdown, HTML, CSV) as an artifact file."""
    client().log_text(run_id, text, artifact_file)


def log_figure(run_id: str, figure: Any, artifact_file: str) -> None:
    """Log a matplotlib figure as an image artifact."""
    client().log_figure(run_id, figure, artifact_file)


def log_dataset(run_id: str, features: Any, targets: Any, name: str, digest: str, source: str, context: str,
                *, path: str | None = None, sha256: str = "", tags: dict[str, str] | None = None) -> None:
    """Record a split as a run input: digest, schema (a dict of named columns or an array), source (path+sha256).

    ``tags`` are added to the input (e.g. a field-data export's cohorts, window, devices and consent ids).
    """
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.entities import DatasetInput, InputTag

    src = resolve_dataset_source(Path(path).as_uri()) if path else CodeDatasetSource(tags={"generator": source})
    ds = from_numpy(features, targets=targets, name=name, digest=digest, source=src)
    tags = {"mlflow.data.context": context, **({"tinymlops.source_sha256": sha256} if path else {}), **(tags or {})}
    client().log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(),
                                                       tags=[InputTag(key=k, value=v) for k, v in tags.items()])])


def log_onnx_model(run_id: str, onnx_path: str | Path, name: str = "model") -> str:
    """Log an ONNX file with MLflow's ONNX flavour on the run; return the logged model's URI."""
    import mlflow
    import mlflow.onnx
    import onnx

    model = onnx.load(str(onnx_path))
    with mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.onnx.log_model(model, name=name, save_as_external_data=False)
    return info.model_uri


# --------------------------------------------------------------------------------------------------------------
# registered models and versions
# --------------------------------------------------------------------------------------------------------------


def register_version(model_name: str, run_id: str, tags: dict[str, Any], description: str,
                     source: str | None = None) -> str:
    """Register a new version from a run's ``package/`` directory (or ``source``); return the version."""
    c = client()
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(model_name)
    except MlflowException:
        with contextlib.suppress(MlflowException):
            c.create_registered_model(model_name, description="Registered by tinymlops.")
    src = source or f"{c.get_run(run_id).info.artifact_uri}/{PACKAGE_DIR}"
    if source is None:  # the version page's "Inputs / Outputs" come from an MLmodel file beside the package
        registry_ui.write_signature(c, run_id, PACKAGE_DIR)
    with hygiene.state_change():  # an interrupted process registers nothing more (see hygiene.begin_shutdown)
        mv = c.create_model_version(model_name, src, run_id=run_id, tags={k: str(v) for k, v in tags.items()},
                                    description=description)
        hygiene.registered(model_name, str(mv.version), run_id)
    return str(mv.version)


def get_version(model_name: str, version: str | int) -> VersionInfo:
    """Return a model version, raising RegistryError naming it if it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return version_info(client().get_model_version(model_name, str(version)))
    except MlflowException:
        raise RegistryError(f"model version {model_name}/{version} does not exist in {tracking_uri()}") from None


def get_alias(model_name: str, alias: str) -> VersionInfo | None:
    """Return the version an alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return version_info(client().get_model_version_by_alias(model_name, alias))
    except MlflowException:
        return None


def list_versions(model_name: str) -> list[VersionInfo]:
    """Return all versions of a registered model, oldest first (RegistryError if the model is unknown)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client().get_registered_model(model_name)
    except MlflowException:
        raise RegistryError(f"registered model {model_name!r} does not exist in {tracking_uri()}") from None
    # searching versions leaves their aliases out: take them from the registered model
    aliases: dict[str, list[str]] = {}
    for alias, v in sorted((model.aliases or {}).items()):
        aliases.setdefault(str(v), []).append(alias)
    versions = [version_info(v) for v in client().search_model_versions(f"name='{model_name}'", max_results=10000)]
    return sorted((dataclasses.replace(v, aliases=aliases.get(v.version, [])) for v in versions),
                  key=lambda v: int(v.version))


def day_run(experiment: str, name: str, tags: dict[str, str]) -> str:
    """Return the id of the run of ``experiment`` tagged ``tags``, created (finished, named ``name``) once."""
    found = registry_ui.find_run(client(), ensure_experiment(experiment), tags)
    if found is None:
        with run(experiment, name, tags=tags) as r:
            found = r.run_id
    return found


def set_version_description(model_name: str, version: str | int, markdown: str) -> None:
    """Replace a version's description (markdown; the UI renders it on the version page)."""
    client().update_model_version(model_name, str(version), description=markdown[:60000])


def set_version_tags(model_name: str, version: str | int, tags: dict[str, Any]) -> None:
    """Set tags on a model version."""
    for k, v in tags.items():
        client().set_model_version_tag(model_name, str(version), k, str(v))


def get_run(run_id: str) -> RunInfo:
    """Return a run (RegistryError if unknown)."""
    from mlflow.exceptions import MlflowException

    try:
        return run_info(client().get_run(run_id))
    except MlflowException:
        raise RegistryError(f"run {run_id} does not exist in {tracking_uri()}") from None


def download(run_id: str, artifact_path: str, dst: str | Path | None = None) -> Path:
    """Download a run's artifact (file or directory) and return the local path."""
    dst = Path(dst or tempfile.mkdtemp(prefix="tinymlops-"))
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client().download_artifacts(run_id, artifact_path, str(dst)))


def download_package(model_name: str, version: str | int, dst: str | Path | None = None) -> Path:
    """Download a version's package directory (model file + manifest.json); return its path."""
    mv = get_version(model_name, version)
    path = mv.tags.get("package_path", PACKAGE_DIR)
    return download(mv.run_id, path, dst)


# --------------------------------------------------------------------------------------------------------------
# aliases with history
# --------------------------------------------------------------------------------------------------------------


def history_experiment(model_name: str) -> str:
    return f"{model_name}/alias-history"


def set_alias(model_name: str, alias: str, version: str | int | None, reason: str,
              figures: dict[str, float] | None = None, actor: str = "tinymlops") -> None:
    """Point an alias at a version (None removes it) and record the move, reason and figures as a run."""
    c = client()
    previous = get_alias(model_name, alias)
    prev_v = previous.version if previous else ""
    if version is None:
        if previous is not None:
            c.delete_registered_model_alias(model_name, alias)
    else:
        get_version(model_name, version)
        c.set_registered_model_alias(model_name, alias, str(version))
    tags = {"alias": alias, "version": str(version or ""), "previous_version": str(prev_v), "reason": reason[:4900],
            "actor": actor, "model": model_name}
    with run(history_experiment(model_name), f"{alias} -> {version or 'none'}", tags=tags) as r:
        if figures:
            log_metrics(r.run_id, figures)


def alias_history(model_name: str, alias_prefix: str = "") -> list[AliasMove]:
    """Return recorded alias moves, oldest first: time, alias, version, previous version, reason, figures."""
    c = client()
    exp = c.get_experiment_by_name(history_experiment(model_name))
    if exp is None:
        return []
    runs = c.search_runs([exp.experiment_id], max_results=50000, order_by=["attributes.start_time ASC"])
    out = []
    for r in runs:
        alias = r.data.tags.get("alias", "")
        if not alias.startswith(alias_prefix):
            continue
        out.append(AliasMove(time_ms=int(r.info.start_time or 0), alias=alias,
                             version=r.data.tags.get("version", ""),
                             previous_version=r.data.tags.get("previous_version", ""),
                             reason=r.data.tags.get("reason", ""), actor=r.data.tags.get("actor", ""),
                             figures=dict(r.data.metrics)))
    return out


# --------------------------------------------------------------------------------------------------------------
# runs that outlive one block (a stage whose nested runs are mapped over Prefect tasks)
# --------------------------------------------------------------------------------------------------------------


def start_run(experiment: str, name: str, parent_run_id: str | None = None,
              tags: dict[str, str] | None = None) -> RunRef:
    """Open a run left RUNNING until ``end_run`` (for stages whose work is spread over tasks).

    The run is tagged with its owner (host, pid) so ``tinymlops doctor`` can close it if this process dies.
    """
    exp_id = ensure_experiment(experiment)
    all_tags = {"mlflow.runName": name, **hygiene.owner_tags(), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    with hygiene.state_change():
        r = client().create_run(exp_id, run_name=name, tags=all_tags)
        hygiene.opened(r.info.run_id)
    return RunRef(r.info.run_id, exp_id)


def end_run(run_id: str, error: str | None = None, interrupted: bool = False) -> None:
    """End a run FINISHED, or FAILED with the error recorded as its ``error`` tag.

    ``interrupted`` (Ctrl-C, SIGTERM) ends it KILLED and tags the versions this process registered from it
    ``tinymlops.incomplete=interrupted``.
    """
    with hygiene.state_change():
        if error:
            with contextlib.suppress(Exception):
                client().set_tag(run_id, "error", error[:4900])
        if interrupted:
            for model, version in hygiene.registered_from(run_id):
                client().set_model_version_tag(model, version, hygiene.INCOMPLETE_TAG, "interrupted")
        client().set_terminated(run_id, "KILLED" if interrupted else "FAILED" if error else "FINISHED")
        hygiene.closed(run_id)


# --------------------------------------------------------------------------------------------------------------
# run hygiene: ending the runs an interrupt, an error or a crash left RUNNING (see tinymlops.hygiene)
# --------------------------------------------------------------------------------------------------------------


def end_open_runs(status: str, reason: str, shutdown: bool = False) -> hygiene.Snapshot:
    """End every run this process left open with ``status`` ("KILLED", "FAILED"), open versions tagged incomplete.

    With ``shutdown`` (an interrupt handler, just before the process exits) no other thread can open, end or
    register anything afterwards, so the snapshot is final. Versions registered from a run still open get the
    tag ``tinymlops.incomplete=<reason>``.
    """
    snap = hygiene.begin_shutdown() if shutdown else hygiene.Snapshot(hygiene.open_runs(), [])
    if _client is None:  # never connected: this process opened nothing
        return snap
    c = _client
    for run_id in reversed(snap.runs):  # nested runs first, the pipeline's parent run last
        with contextlib.suppress(Exception):
            c.set_tag(run_id, hygiene.ENDED_BY_TAG, reason)
        c.set_terminated(run_id, status)
        hygiene.closed(run_id)
    for model, version in snap.versions:
        c.set_model_version_tag(model, version, hygiene.INCOMPLETE_TAG, reason)
    return snap


def running_runs() -> list[RunInfo]:
    """Return every run of every experiment (deleted ones too) whose status is RUNNING, oldest first."""
    from mlflow.entities import ViewType

    c = client()
    exp_ids = [e.experiment_id for e in c.search_experiments(view_type=ViewType.ALL, max_results=50000)]
    found: list[Any] = []
    for i in range(0, len(exp_ids), 100):
        found += c.search_runs(exp_ids[i:i + 100], filter_string="attributes.status = 'RUNNING'",
                               run_view_type=ViewType.ALL, max_results=50000)
    return sorted((run_info(r) for r in found), key=lambda r: r.start_ms)


def end_stale_run(run_id: str, status: str = "KILLED", ended_by: str = "tinymlops doctor",
                  incomplete: str = "crashed") -> list[VersionInfo]:
    """End a run a dead process left RUNNING; tag the versions registered from it incomplete; return them."""
    c = client()
    c.set_tag(run_id, hygiene.ENDED_BY_TAG, ended_by)
    c.set_terminated(run_id, status)
    versions = [version_info(v) for v in c.search_model_versions(f"run_id = '{run_id}'")]
    for v in versions:
        c.set_model_version_tag(v.name, v.version, hygiene.INCOMPLETE_TAG, incomplete)
    return versions


def incomplete_versions() -> list[VersionInfo]:
    """Return every version tagged ``tinymlops.incomplete`` (its run was interrupted or crashed), oldest first."""
    found = client().search_model_versions(f"tags.`{hygiene.INCOMPLETE_TAG}` LIKE '%'", max_results=10000)
    return sorted((version_info(v) for v in found), key=lambda v: v.created_ms)
