"""What the MLflow UI shows a reviewer: experiment kind, version signatures (an ``MLmodel`` beside the package).

Helpers of :mod:`tinymlops.registry` that receive its client: this module never imports MLflow itself (the
registry stays the one MLflow importer), it only shapes what the UI reads.
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Any

from tinymlops.mlflow_store import env_override

_QUIET = threading.Lock()  # variants register from parallel threads: one environment override at a time

#: MLflow 3's UI opens an experiment in its GenAI view (traces, "Detect Issues") unless this tag marks it as model
#: training; the values are the UI bundle's (``genai_development``, ``custom_model_development``).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def mark_model_training(client: Any, experiment: Any) -> None:
    """Tag an experiment created before the kind tag existed, so the UI opens it on the runs table."""
    if EXPERIMENT_KIND[0] not in (experiment.tags or {}):
        client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)


def _tensor_spec(spec: dict[str, Any]) -> str:
    shape = [-1, *[int(d) for d in list(spec.get("shape") or [1])[1:]]]  # first axis is the batch
    return json.dumps([{"type": "tensor", "tensor-spec": {"dtype": str(spec.get("dtype", "float32")),
                                                          "shape": shape}}])


def mlmodel_text(manifest: dict[str, Any]) -> str:
    """Return an ``MLmodel`` file whose signature is the package's input/output tensors (what the UI shows)."""
    import yaml

    doc = {"artifact_path": "package", "flavors": {},
           "metadata": {"variant": manifest.get("variant", ""), "format": manifest.get("format", ""),
                        "file": manifest.get("file", "")},
           "signature": {"inputs": _tensor_spec(manifest.get("input") or {}),
                         "outputs": _tensor_spec(manifest.get("output") or {}), "params": None}}
    return str(yaml.safe_dump(doc, sort_keys=False))


def write_signature(client: Any, run_id: str, package_path: str) -> bool:
    """Add ``<package_path>/MLmodel`` with the signature from the package's manifest; False without a manifest."""
    with tempfile.TemporaryDirectory(prefix="tinymlops-sig-") as tmp, _QUIET, \
            env_override({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):  # no progress bar for one small file
        try:
            local = client.download_artifacts(run_id, f"{package_path}/manifest.json", tmp)
            manifest = json.loads(Path(local).read_text())
        except Exception:  # no manifest (a foreign source): nothing to describe
            return False
        client.log_text(run_id, mlmodel_text(manifest), f"{package_path}/MLmodel")
    return True


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys (how parameters show in the runs table)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def find_run(client: Any, experiment_id: str, tags: dict[str, str]) -> str | None:
    """Return the id of the oldest run of an experiment carrying all ``tags``, or None."""
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client.search_runs([experiment_id], filter_string=where, max_results=1,
                               order_by=["attributes.start_time ASC"])
    return str(found[0].info.run_id) if found else None


def read_manifest(package_dir: Path) -> dict[str, Any]:
    """Read a package directory's manifest.json."""
    return dict(json.loads((package_dir / "manifest.json").read_text()))


#: MLflow 3.17's UI keeps a global workflow switch (browser localStorage ``mlflow.workflowType``, default ``genai``)
#: that sends a fresh browser to the GenAI overview even for a model-training experiment; a link carrying
#: ``workflowType=machine_learning`` opens the experiment's runs table.
ML_WORKFLOW = "workflowType=machine_learning"


def review_links(client: Any, base_url: str, limit: int = 10) -> list[tuple[str, str]]:
    """Return (experiment name, runs-table URL) of the store's experiments, newest first, for `tinymlops ui`."""
    exps = client.search_experiments(max_results=limit + 1, order_by=["creation_time DESC"])
    return [(e.name, f"{base_url}/#/experiments/{e.experiment_id}?{ML_WORKFLOW}") for e in exps
            if e.name != "Default"][:limit]
