"""Retrain on consented field data (``retrain.strategy: central`` with ``retrain.field_data.enabled``).

The configured dataset plus the consented field samples the fleet holds (decrypted on this host,
:mod:`tinymlops.fleet.field_export`) train a new version through the train stage; the field samples are split
into a field-train part (merged into the training split, each sample counted ``weight`` times) and a held-out
field test split. The new version's lineage shows both datasets (the configured splits and ``field-train`` /
``field-test`` inputs tagged with source fleet, cohorts, window, devices and consent ids). Old and new versions
run in their runtimes (package pre-processing + model file) on the field test split; the candidate alias moves
to the new version only if it is better by more than ``min_gain``, otherwise the version is tagged with why not.
With fewer than ``min_samples`` consented samples nothing is trained here (``new_version`` None): the flow then
runs the configured pipeline, as a ``central`` retrain without field data does.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops import registry
from tinymlops.errors import ConfigError, DataError
from tinymlops.fleet.field_export import FieldData
from tinymlops.monitor.config import DriftConfig, FieldDataSection, parse_duration_s


@dataclass(frozen=True)
class FieldRetrainResult:
    """What a field-data retrain did and decided."""

    model_name: str
    old_version: str | None
    new_version: str | None
    field_version: str | None
    field_train_samples: int
    field_test_samples: int
    old_field_accuracy: float | None
    new_field_accuracy: float | None
    candidate_alias: str
    candidate_set: bool
    reason: str
    train_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_field(data: FieldData, test_share: float, seed: int) -> tuple[FieldData, FieldData]:
    """Split field samples per class into (field-train, field-test); each class keeps >= 1 test sample if it can."""
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for c in np.unique(data.y):
        idx = rng.permutation(np.flatnonzero(data.y == c))
        k = min(len(idx) - 1, max(1, round(len(idx) * test_share))) if len(idx) > 1 else 0
        test.extend(idx[:k].tolist())
    is_test = np.zeros(len(data), bool)
    is_test[test] = True
    return (data.subset(np.flatnonzero(~is_test), f"{data.version}-train"),
            data.subset(np.flatnonzero(is_test), f"{data.version}-test"))


def weighted_rows(n: int, weight: float, rng: np.random.Generator) -> np.ndarray:
    """Return row indices that count each of ``n`` rows ``weight`` times (the fraction as a random extra copy)."""
    whole = int(weight)
    rows = np.repeat(np.arange(n), whole)
    extra = np.flatnonzero(rng.random(n) < weight - whole)
    return np.concatenate([rows, extra]).astype(np.int64)


@dataclass
class FieldExtra:
    """The field-train split merged into the training split (:class:`tinymlops.train.TrainExtra`)."""

    train: FieldData
    test: FieldData
    weight: float
    seed: int

    def extend(self, cfg: Any, prep: Any) -> Any:
        """Append the weighted field-train samples to the training split and refit the pre-processing on it."""
        from tinymlops.preprocessing import fit
        from tinymlops.train import Prepared

        base = prep.splits["train"]
        if self.train.X.shape[1:] != base.X.shape[1:]:
            raise DataError(f"field samples have input shape {list(self.train.X.shape[1:])}, the configured dataset "
                            f"{list(base.X.shape[1:])}: the devices run another model input")
        if len(self.train) and int(self.train.y.max()) >= len(base.class_names):
            raise DataError(f"field labels go up to {int(self.train.y.max())}, the dataset has "
                            f"{len(base.class_names)} classes")
        rows = weighted_rows(len(self.train), self.weight, np.random.default_rng(self.seed))
        merged = dataclasses.replace(
            base, X=np.concatenate([base.X, self.train.X[rows].astype(base.X.dtype)]),
            y=np.concatenate([base.y, self.train.y[rows]]), groups=None, t_start=None, t_end=None,
            warnings=(*base.warnings, f"{len(rows)} consented field rows ({len(self.train)} samples x weight "
                                      f"{self.weight:g}) appended to the training split"))
        spec = fit(cfg.preprocessing, merged.X, merged.sample_rate_hz, project_dir=cfg.config_dir)
        return Prepared({**prep.splits, "train": merged}, spec)

    def log_inputs(self, run_id: str) -> None:
        """Record field-train and field-test as mlflow.data inputs of the train run."""
        from tinymlops.fleet.field_export import log_lineage

        log_lineage(run_id, self.train, "field-train")
        log_lineage(run_id, self.test, "field-test")
        registry.log_params(run_id, {"field": {"version": self.train.version.removesuffix("-train"),
                                               "train_samples": len(self.train), "test_samples": len(self.test),
                                               "weight": self.weight}})


def field_accuracy(model_name: str, version: str, data: FieldData) -> float:
    """Run a registered version (its package's pre-processing and model file, in its runtime) on field samples."""
    from tinymlops.fleet.answers import checked_specs
    from tinymlops.preprocessing import transform
    from tinymlops.runtimes import open_runner

    with tempfile.TemporaryDirectory(prefix="tinymlops-field-eval-") as d:
        pkg = registry.download_package(model_name, version, d)
        manifest = registry.read_manifest(pkg)
        spec, _ = checked_specs(manifest)
        with open_runner(pkg / manifest["file"]) as runner:
            probs = runner.predict(transform(spec, data.X).astype(np.float32))
    return float(np.mean(np.asarray(probs).argmax(axis=1) == data.y))


def _old_version(model: str, cfg: DriftConfig) -> str | None:
    if cfg.alias:
        mv = registry.get_alias(model, cfg.alias)
        if mv is not None:
            return mv.version
    try:
        versions = registry.list_versions(model)
    except Exception:
        return None
    return versions[-1].version if versions else None


def run_field_retrain(model: str, drift_config: str | Path, store_url: str | None = None,
                      progress: Callable[[str], None] | None = None) -> FieldRetrainResult:
    """Retrain ``model`` on the configured dataset plus consented field data; move the candidate alias if better.

    Raises:
        ConfigError: the drift config's pipeline config registers another model.
    """
    from tinymlops.config import load_pipeline, resolve_relative
    from tinymlops.fleet import field_export
    from tinymlops.fleet.store import open_store
    from tinymlops.monitor.check import load_drift_config
    from tinymlops.train import run_train

    say = progress or (lambda _m: None)
    cfg = load_drift_config(drift_config)
    fd: FieldDataSection = cfg.retrain.field_data
    pcfg = load_pipeline(resolve_relative(drift_config, cfg.retrain.pipeline_config))
    if pcfg.mlflow.registered_model != model:
        raise ConfigError(f"{drift_config}: retrain.pipeline_config registers {pcfg.mlflow.registered_model!r}, "
                          f"not {model!r}")
    registry.connect(pcfg.mlflow.tracking_uri)
    old = _old_version(model, cfg)
    since = time.time() - parse_duration_s(fd.since) if fd.since else None
    data = field_export.collect(st=open_store(store_url), cohort=fd.cohort, since_unix_s=since)
    say(f"{len(data)} consented field samples (dataset {data.version}) from {len(set(data.device_ids))} device(s)")
    if len(data) < fd.min_samples:  # the caller runs the configured pipeline instead (flows/retrain.py)
        reason = (f"only {len(data)} consented field samples (< retrain.field_data.min_samples {fd.min_samples}): "
                  "nothing trained on field data")
        say(reason)
        return FieldRetrainResult(model, old, None, None, 0, 0, None, None, fd.candidate_alias, False, reason)
    train, test = split_field(data, fd.test_share, fd.seed)
    say(f"field split: {len(train)} train (weight {fd.weight:g}), {len(test)} held out")
    result = run_train(pcfg, progress=say, extra=FieldExtra(train, test, fd.weight, fd.seed))
    new_acc = field_accuracy(model, result.version, test)
    old_acc = field_accuracy(model, old, test) if old else None
    better = old_acc is None or new_acc > old_acc + fd.min_gain
    vs = f"v{old} {old_acc:.3f}" if old_acc is not None else "no earlier version"
    reason = (f"field test accuracy v{result.version} {new_acc:.3f} vs {vs} on {len(test)} held-out field samples"
              + ("" if better else f": not better by more than {fd.min_gain:g}; {fd.candidate_alias} not moved"))
    if better:
        registry.set_alias(model, fd.candidate_alias, result.version, reason,
                           {"field_accuracy_new": new_acc, **({"field_accuracy_old": old_acc} if old_acc else {})})
    registry.set_version_tags(model, result.version, {
        "field.version": data.version, "field.verdict": reason, "field.accuracy": f"{new_acc:.4f}",
        "field.compared_with": old or "", "field.accuracy_old": "" if old_acc is None else f"{old_acc:.4f}"})
    say(reason)
    return FieldRetrainResult(model, old, result.version, data.version, len(train), len(test), old_acc, new_acc,
                              fd.candidate_alias, better, reason, result.run_id)
