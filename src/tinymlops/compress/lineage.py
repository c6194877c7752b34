"""Lineage and variant listings read back from the registry (light: MLflow through tinymlops.registry only)."""

from __future__ import annotations

import json
from typing import Any

from tinymlops import registry
from tinymlops.errors import RegistryError


def _float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _int(v: Any) -> int | None:
    f = _float(v)
    return None if f is None else int(f)


def variants(model_name: str) -> list[dict[str, Any]]:
    """Return every version with variant, technique, format, sizes, accuracy and delta vs its float parent."""
    versions = registry.list_versions(model_name)
    by_version = {str(v.version): v for v in versions}
    rows = []
    for v in versions:
        t = v.tags
        acc = _float(t.get("accuracy"))
        parent_v = t.get("parent_version")
        parent_acc = _float(by_version[parent_v].tags.get("accuracy")) if parent_v in by_version else None
        delta = _float(t.get("accuracy_delta"))
        if delta is None and acc is not None and parent_acc is not None:
            delta = acc - parent_acc
        rows.append({"version": str(v.version), "variant": t.get("variant"), "technique": t.get("technique"),
                     "format": t.get("format"), "parent_version": parent_v, "size_bytes": _int(t.get("size_bytes")),
                     "gzip_bytes": _int(t.get("gzip_bytes")), "accuracy": acc,
                     "accuracy_delta": delta if parent_v else None, "sparsity": _float(t.get("sparsity")),
                     "aliases": list(v.aliases), "run_id": v.run_id})
    return rows


def _schema_summary(schema_json: str) -> str:
    """Summarise an mlflow.data tensor-spec schema: '20 float32 columns' or 'float32 [-1, 128, 3]'."""
    try:
        features = json.loads(json.loads(schema_json)["mlflow_tensorspec"]["features"])
    except (TypeError, ValueError, KeyError):
        return ""
    specs = [f.get("tensor-spec", {}) for f in features]
    if len(features) > 1 or (features and "name" in features[0]):
        dtypes = sorted({s.get("dtype", "?") for s in specs})
        return f"{len(features)} {'/'.join(dtypes)} column{'s' if len(features) > 1 else ''}"
    return f"{specs[0].get('dtype', '?')} {specs[0].get('shape')}" if specs else ""


def _dataset_step(train_run: registry.RunInfo) -> dict[str, Any]:
    splits = {}
    source, uri, sha256, schema = "", None, None, ""
    for ds in train_run.datasets:
        splits[ds.context] = {"name": ds.name, "digest": ds.digest}
        schema = schema or _schema_summary(ds.schema)
        try:
            src = json.loads(ds.source)
        except (TypeError, ValueError):
            source = source or ds.source
            continue
        uri = src.get("uri", uri)
        sha256 = ds.tags.get("tinymlops.source_sha256", sha256)
        source = uri or src.get("tags", {}).get("generator", source)
    p = train_run.params
    if uri and sha256:
        source = f"{p.get('dataset.source', 'file')} {uri} (sha256 {sha256[:12]})"
    rows = {k: _int(p.get(f"dataset.{k}_rows")) for k in ("train", "val", "test")}
    return {"step": "dataset", "name": p.get("dataset.name"), "source": source, "uri": uri, "sha256": sha256,
            "format": p.get("dataset.source"), "split": p.get("dataset.split"), "schema": schema, "splits": splits,
            "rows": rows, "digest": splits.get("train", {}).get("digest")}


def _train_step(train_run: registry.RunInfo) -> dict[str, Any]:
    m, p = train_run.metrics, train_run.params
    figures = {k: m[k] for k in ("test_accuracy", "test_macro_f1", "train_seconds", "epochs_run",
                                 "size_bytes_tflite_fp32", "size_bytes_onnx_fp32") if k in m}
    params = {k: v for k, v in p.items() if k.startswith(("model.", "train."))}
    return {"step": "train_run", "run_id": train_run.run_id, "status": train_run.status,
            "config_hash": train_run.tags.get("config_hash"), "git_commit": train_run.tags.get("git_commit"),
            "figures": figures, "params": params}


def _version_step(step: str, mv: registry.VersionInfo) -> dict[str, Any]:
    t = mv.tags
    figures = {k: _float(t[k]) for k in ("accuracy", "macro_f1", "accuracy_delta", "size_bytes", "gzip_bytes",
                                         "sparsity") if k in t}
    return {"step": step, "version": str(mv.version), "variant": t.get("variant"), "technique": t.get("technique"),
            "format": t.get("format"), "run_id": mv.run_id, "figures": figures,
            "params": {k.removeprefix("param."): v for k, v in t.items() if k.startswith("param.")},
            "description": mv.description or ""}


def lineage(model_name: str, version: str | int) -> dict[str, Any]:
    """Return the chain dataset → train run → parent version → variant, with the figures at each step."""
    mv = registry.get_version(model_name, version)
    train_run_id = mv.tags.get("train_run_id")
    if not train_run_id:
        raise RegistryError(f"{model_name}/{version} has no train_run_id tag; its lineage was not recorded")
    train_run = registry.get_run(train_run_id)
    chain = [_dataset_step(train_run), _train_step(train_run)]
    parent_v = mv.tags.get("parent_version")
    if parent_v:
        chain.append(_version_step("parent_version", registry.get_version(model_name, parent_v)))
        step = _version_step("variant", mv)
        variant_run = registry.get_run(str(mv.run_id))
        step["figures"].update({k: v for k, v in variant_run.metrics.items()
                                if k in ("agreement_with_float", "tflm_tflite_agreement", "tflm_accuracy",
                                         "tflm_arena_bytes", "size_ratio", "gzip_ratio", "build_seconds")})
        step["compress_run_id"] = mv.tags.get("compress_run_id")
        chain.append(step)
    else:
        chain.append(_version_step("version", mv))
    return {"model": model_name, "version": str(mv.version), "model_uri": f"models:/{model_name}/{mv.version}",
            "chain": chain}
