"""Export consented field data on the registry host: decrypt sealed batches into a versioned Parquet dataset.

Batches come from the fleet database (:func:`tinymlops.fleet.field.batches`) or the service's operator API; only
this host holds the field key that opens them. Forgotten devices' batches are gone from the service, so no export
or retrain made after a forget can include them; expired batches are pruned first. The dataset's version is a
content digest of the batches it holds (device, sequence, ciphertext hash): the same batches give the same
version. Each export writes ``<out>/<version>/field.parquet`` and ``manifest.json`` (source fleet, cohorts, window,
devices, consent ids, counts, batches skipped and why) and can be logged as an ``mlflow.data`` input.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.errors import UsageError
from tinymlops.fleet import field_seal

SCHEMA = "tinymlops.field-data/1"
MAX_TAG_ITEMS = 20  # devices / consent ids named in an MLflow input tag (all of them are in manifest.json)


@dataclass
class FieldData:
    """Decrypted field samples, one row per sample, with where each came from."""

    X: np.ndarray
    y: np.ndarray
    predictions: np.ndarray
    device_ids: np.ndarray
    cohorts: np.ndarray
    consent_ids: np.ndarray
    batch_seqs: np.ndarray
    window_end_unix_s: np.ndarray
    version: str
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    def manifest(self) -> dict[str, Any]:
        """Return the lineage record of this dataset (what an export writes and a retrain logs)."""
        ends = self.window_end_unix_s
        return {"schema": SCHEMA, "source": "fleet", "version": self.version, "samples": len(self),
                "input_shape": list(self.X.shape[1:]), "cohorts": sorted(set(self.cohorts.tolist())),
                "devices": sorted(set(self.device_ids.tolist())), "consent_ids": sorted(set(self.consent_ids.tolist())),
                "window": [float(ends.min()), float(ends.max())] if len(ends) else None,
                "labels": {str(k): int(v) for k, v in zip(*np.unique(self.y, return_counts=True), strict=True)},
                "skipped_batches": self.skipped}

    def subset(self, idx: np.ndarray, version: str) -> FieldData:
        """Return the rows ``idx`` as a dataset of their own (a split)."""
        return FieldData(self.X[idx], self.y[idx], self.predictions[idx], self.device_ids[idx], self.cohorts[idx],
                         self.consent_ids[idx], self.batch_seqs[idx], self.window_end_unix_s[idx], version)

    def lineage_tags(self) -> dict[str, str]:
        """Return the MLflow input tags of this dataset (lists cut at MAX_TAG_ITEMS, counts always complete)."""
        m = self.manifest()

        def cut(items: list[str]) -> str:
            more = len(items) - MAX_TAG_ITEMS
            return ",".join(items[:MAX_TAG_ITEMS]) + (f",+{more} more" if more > 0 else "")

        return {"tinymlops.field.source": "fleet", "tinymlops.field.version": self.version,
                "tinymlops.field.cohorts": cut(m["cohorts"]), "tinymlops.field.devices": cut(m["devices"]),
                "tinymlops.field.n_devices": str(len(m["devices"])), "tinymlops.field.consent_ids": cut(m["consent_ids"]),
                "tinymlops.field.window": json.dumps(m["window"]), "tinymlops.field.samples": str(len(self))}


def collect(st: Any = None, server: Any = None, cohort: str | None = None, since_unix_s: float | None = None,
            key_dir: Path | None = None) -> FieldData:
    """Fetch sealed batches (from the store ``st`` or an operator client ``server``) and decrypt them here.

    Batches that do not open (another field key, tampered, malformed) or whose input shape differs from the
    first are skipped and listed with the reason; they never abort the export.
    """
    if server is not None:
        params: dict[str, Any] = {k: v for k, v in (("cohort", cohort), ("since", since_unix_s)) if v is not None}
        batches, after = [], 0
        while page := server._call("GET", "/v1/field-batches", params={**params, "after_id": after}):
            batches.extend(page)
            after = int(page[-1]["id"])
    else:
        from tinymlops.fleet import field

        batches = field.batches(st, cohort, since_unix_s)
    return decrypt(batches, field_seal.field_key(key_dir))


def decrypt(batches: Sequence[dict[str, Any]], key: Any) -> FieldData:
    """Open stored batches with the registry's field key into one dataset (see :func:`collect`)."""
    X: list[np.ndarray] = []
    cols: dict[str, list[Any]] = {k: [] for k in ("y", "pred", "dev", "cohort", "consent", "seq", "end")}
    skipped: list[dict[str, Any]] = []
    h = hashlib.sha256(SCHEMA.encode())
    shape: tuple[int, ...] | None = None
    for b in sorted(batches, key=lambda b: (b["device_id"], b["seq"])):
        blob = base64.b64decode(b["ciphertext_b64"])
        try:
            opened = field_seal.open_batch(key, blob, b["device_id"], b["seq"], b["consent_id"], b["count"], b["key_id"])
        except field_seal.SealError as exc:
            skipped.append({"device_id": b["device_id"], "seq": b["seq"], "reason": str(exc)})
            continue
        if shape is None:
            shape = opened.X.shape[1:]
        if opened.X.shape[1:] != shape:
            skipped.append({"device_id": b["device_id"], "seq": b["seq"],
                            "reason": f"input shape {list(opened.X.shape[1:])}, not {list(shape)}"})
            continue
        h.update(f"{b['device_id']}|{b['seq']}|".encode() + hashlib.sha256(blob).digest())
        n = len(opened.labels)
        X.append(opened.X)
        for k, v in (("y", opened.labels), ("pred", opened.predictions), ("dev", [b["device_id"]] * n),
                     ("cohort", [b["cohort"]] * n), ("consent", [b["consent_id"]] * n), ("seq", [b["seq"]] * n),
                     ("end", [opened.window[1]] * n)):
            cols[k].extend(list(v))
    Xa = np.concatenate(X) if X else np.zeros((0, 0), np.float32)
    return FieldData(Xa, np.asarray(cols["y"], np.int64), np.asarray(cols["pred"], np.int64),
                     np.asarray(cols["dev"], dtype=object), np.asarray(cols["cohort"], dtype=object),
                     np.asarray(cols["consent"], dtype=object), np.asarray(cols["seq"], np.int64),
                     np.asarray(cols["end"], np.float64), h.hexdigest()[:12], skipped)


def write(data: FieldData, out_dir: str | Path) -> Path:
    """Write the dataset as ``<out>/<version>/field.parquet`` + ``manifest.json``; return the Parquet path."""
    import pandas as pd

    if len(data) == 0:
        raise UsageError("no consented field samples to export (no consent granted, none uploaded yet, all "
                         "forgotten or expired, or none in the chosen cohort/time)")
    d = Path(out_dir) / data.version
    d.mkdir(parents=True, exist_ok=True)
    flat = data.X.reshape(len(data), -1)
    df = pd.DataFrame({"device_id": data.device_ids.astype(str), "cohort": data.cohorts.astype(str),
                       "consent_id": data.consent_ids.astype(str), "batch_seq": data.batch_seqs,
                       "window_end_unix_s": data.window_end_unix_s, "label": data.y, "prediction": data.predictions,
                       "x": list(flat)})
    path = d / "field.parquet"
    tmp = d / ".field.parquet.tmp"
    df.to_parquet(tmp, index=False)
    tmp.replace(path)  # a reader never sees half a file
    manifest = {**data.manifest(), "created_unix_s": time.time(), "file": path.name,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


def read(path: str | Path) -> FieldData:
    """Read an exported ``field.parquet`` (its directory's manifest gives the version and input shape)."""
    import pandas as pd

    p = Path(path)
    m = json.loads((p.parent / "manifest.json").read_text())
    df = pd.read_parquet(p)
    X = np.stack(df["x"].to_numpy()).astype(np.float32).reshape(len(df), *m["input_shape"])
    return FieldData(X, df["label"].to_numpy(np.int64), df["prediction"].to_numpy(np.int64),
                     df["device_id"].to_numpy(object), df["cohort"].to_numpy(object),
                     df["consent_id"].to_numpy(object), df["batch_seq"].to_numpy(np.int64),
                     df["window_end_unix_s"].to_numpy(np.float64), m["version"])


def log_lineage(run_id: str, data: FieldData, context: str, path: str | Path | None = None) -> None:
    """Record the dataset as an ``mlflow.data`` input of a run (source fleet, cohorts, window, devices, consents)."""
    from tinymlops import registry

    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else ""
    registry.log_dataset(run_id, data.X.reshape(len(data), -1), data.y, f"field-{data.version}", data.version,
                         "fleet", context, path=str(path) if path else None, sha256=sha,
                         tags=data.lineage_tags())
