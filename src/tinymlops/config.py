"""Typed configuration: pydantic models for every YAML file and the one loader that reads them.

Every file kind has a model; ``load(path)`` picks it from the file's ``kind:`` key (or infers it from the keys
present) and raises :class:`ConfigError` naming the file, the key path and the reason. Models of other areas
(targets, drift, rollout) live beside their code and are imported lazily, so this module stays light.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, model_validator

from tinymlops.config_base import (  # noqa: F401 (re-exported)
    M,
    Strict,
    format_validation_error,
    load_kind,
    read_yaml,
    validate_data,
)
from tinymlops.data.config import DatasetSection
from tinymlops.errors import ConfigError
from tinymlops.execution import ExecutionSection
from tinymlops.ip.config import IpSection
from tinymlops.models.config import ModelSection
from tinymlops.preprocessing.config import PreprocessingSection

# ---------------------------------------------------------------------------------------------------------------
# pipeline.yaml
# ---------------------------------------------------------------------------------------------------------------


class MlflowSection(Strict):
    tracking_uri: str | None = Field(None, description="MLflow server URL; default: embedded SQLite store")
    experiment: str
    registered_model: str


class TrainSection(Strict):
    epochs: int = Field(30, ge=0, le=1000, description="0 evaluates a pre-trained model (model.file) as is")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(0.003, gt=0, lt=1)
    seed: int = 0
    early_stopping_patience: int = Field(6, ge=0)
    augment_shift_pixels: int = Field(0, ge=0, le=3, description="add +-N pixel shifted copies (square images)")


class _Variant(Strict):
    name: str | None = Field(None, description="registered variant name; default: the technique")


class _FineTuned(_Variant):
    learning_rate: float | None = Field(None, gt=0, lt=1, description="fine-tuning learning rate; default: a "
                                        "fraction of train.learning_rate chosen per technique")


class PtqInt8(_Variant):
    technique: Literal["ptq-int8"]
    representative_samples: int = Field(200, ge=1)


class PtqDynamic(_Variant):
    technique: Literal["ptq-dynamic"]


class Fp16(_Variant):
    technique: Literal["fp16"]


class Prune(_FineTuned):
    technique: Literal["prune"]
    target_sparsity: float = Field(0.8, gt=0, lt=1)
    min_layer_weights: int = Field(256, ge=0, description="prune only Dense/Conv2D layers with at least this many "
                                   "weights (tiny first/last layers stay dense)")
    epochs: int = Field(8, ge=1)
    representative_samples: int = Field(200, ge=1)


class Cluster(_FineTuned):
    technique: Literal["cluster"]
    clusters: int = Field(16, ge=2, le=256)
    epochs: int = Field(4, ge=1)
    representative_samples: int = Field(200, ge=1)


class QatInt8(_FineTuned):
    technique: Literal["qat-int8"]
    epochs: int = Field(4, ge=1)
    representative_samples: int = Field(200, ge=1)


class PruneClusterQat(_FineTuned):
    technique: Literal["prune-cluster-qat"]
    target_sparsity: float = Field(0.75, gt=0, lt=1)
    min_layer_weights: int = Field(256, ge=0, description="prune only Dense/Conv2D layers with at least this many "
                                   "weights (tiny first/last layers stay dense)")
    clusters: int = Field(16, ge=2, le=256)
    epochs: int = Field(4, ge=1)
    representative_samples: int = Field(200, ge=1)


class OnnxInt8(_Variant):
    technique: Literal["onnx-int8"]
    calibration_samples: int = Field(200, ge=1)


class OnnxFp32(_Variant):
    technique: Literal["onnx-fp32"]


VariantSpec = Annotated[
    PtqInt8 | PtqDynamic | Fp16 | Prune | Cluster | QatInt8 | PruneClusterQat | OnnxInt8 | OnnxFp32,
    Field(discriminator="technique"),
]


class CompressSection(Strict):
    variants: list[VariantSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> CompressSection:
        names = [v.name or v.technique for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique; repeated: {dupes}")
        return self


class ProfileSection(Strict):
    targets: list[str] | Literal["all"] = "all"
    targets_dir: str | None = Field(None, description="target catalogue directory; default: the catalogue search "
                                                     "path (see tinymlops.profile.targets.targets_dir)")


DriftKnob = Literal["gain", "offset", "noise_std", "shaft_hz"]


def _default_monitor_drift() -> dict[DriftKnob, float]:
    return {"gain": 1.15}


class DemoFleetSection(Strict):
    """The simulated fleet the rollout and drift stages run on: a fresh local fleet service and agents."""

    healthy_target: str = "raspberry-pi-4"
    faulty_target: str = "raspberry-pi-zero-2-w"
    fault: Literal["latency", "crash", "corrupt"] = Field(
        "latency", description="injected into the faulty target's candidate: only devices running it misbehave")
    devices_per_target: int = Field(20, ge=1, le=1000)
    monitor_target: str | None = Field(
        "nucleo-l4r5zi", description="two monitored cohorts (line-a as deployed, line-b drifted) on this target")
    monitor_devices: int = Field(5, ge=1, le=200)
    monitor_drift: dict[DriftKnob, float] = Field(
        default_factory=_default_monitor_drift, description="covariate shift of line-b's sensors")


Stage = Literal["train", "compress", "profile", "rollout", "drift"]
#: every pipeline stage, in the order the pipeline runs them
STAGES: tuple[Stage, ...] = ("train", "compress", "profile", "rollout", "drift")


class PipelineConfig(Strict):
    """The demo project file: what to train, how to compress, where to profile, drift and rollout settings."""

    kind: Literal["pipeline"] = "pipeline"
    project: str
    mlflow: MlflowSection
    dataset: DatasetSection
    preprocessing: PreprocessingSection = Field(default_factory=PreprocessingSection)
    model: ModelSection
    train: TrainSection = Field(default_factory=TrainSection)
    compress: CompressSection = Field(default_factory=CompressSection)
    profile: ProfileSection = Field(default_factory=ProfileSection)
    execution: ExecutionSection = Field(default_factory=ExecutionSection,
                                        description="where compress variants and profile cells run (threads | dask)")
    drift: str | None = Field(None, description="path of a drift config, relative to this file")
    rollout: str | None = Field(None, description="path of a rollout config, relative to this file")
    demo_fleet: DemoFleetSection = Field(default_factory=DemoFleetSection)
    ip: IpSection = Field(default_factory=IpSection, description="model IP protection: owner watermark, "
                          "per-device fingerprints (docs/ip.md)")
    stages: list[Stage] = Field(
        default_factory=lambda: list(STAGES), min_length=1,
        description="stages to run; they always run in the order train, compress, profile, rollout, drift. "
                    "Without train the pipeline starts from the latest registered float32 version.")

    #: the directory of the file this config was loaded from (relative paths in the config resolve against it);
    #: the working directory for a config built in code
    _config_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="after")
    def _epochs_for_model(self) -> PipelineConfig:
        if self.train.epochs == 0 and self.model.kind in ("arch", "builder"):
            raise ValueError("train.epochs: 0 only evaluates a pre-trained model (model.file); a model built by "
                             "arch or builder needs at least 1 epoch")
        return self

    @property
    def config_dir(self) -> Path:
        return self._config_dir

    def resolve(self, ref: str | Path) -> Path:
        """Resolve a path written in this config (absolute paths pass through)."""
        p = Path(ref)
        return p if p.is_absolute() else self._config_dir / p

    def config_hash(self) -> str:
        """Return a short stable hash of the validated config (tags runs and versions).

        ``execution`` is left out: where tasks run does not change what they produce.
        """
        blob = json.dumps(self.model_dump(mode="json", exclude={"execution"}), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------------
# the one loader
# ---------------------------------------------------------------------------------------------------------------

#: kind -> "module:Class"; imported lazily so that loading a pipeline file never imports other areas.
KINDS: dict[str, str] = {
    "pipeline": "tinymlops.config:PipelineConfig",
    "target": "tinymlops.profile.targets:TargetConfig",
    "drift": "tinymlops.monitor.config:DriftConfig",
    "rollout": "tinymlops.rollout.config:RolloutConfig",
}

#: keys that identify a kind when the file has no ``kind:`` key.
_SIGNATURES: list[tuple[str, set[str]]] = [
    ("pipeline", {"dataset", "model"}),
    ("target", {"core", "clock_mhz"}),
    ("rollout", {"stages", "gates"}),
    ("drift", {"thresholds"}),
]


def model_for_kind(kind: str) -> type[BaseModel]:
    """Return the pydantic model class for a config kind."""
    if kind not in KINDS:
        raise ConfigError(f"unknown config kind {kind!r}; expected one of {sorted(KINDS)}")
    module, cls = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), cls)


def detect_kind(data: dict[str, Any], path: str | Path = "<config>") -> str:
    """Return the config kind from ``kind:`` or from the keys present."""
    if "kind" in data:
        return str(data["kind"])
    for kind, keys in _SIGNATURES:
        if keys <= data.keys():
            return kind
    raise ConfigError(f"{path}: cannot tell what kind of config this is; add 'kind:' ({', '.join(KINDS)})")


def load(path: str | Path, kind: str | None = None) -> BaseModel:
    """Load and validate any config file; the kind comes from the argument, the file or its keys."""
    data = read_yaml(path)
    kind = kind or detect_kind(data, path)
    return load_kind(path, kind, model_for_kind(kind))


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Load a pipeline config."""
    cfg = load(path, "pipeline")
    assert isinstance(cfg, PipelineConfig)
    cfg._config_dir = Path(path).resolve().parent
    return cfg


def resolve_relative(config_path: str | Path, ref: str) -> Path:
    """Resolve a path written in a config file relative to that file (absolute paths pass through)."""
    p = Path(ref)
    if p.is_absolute() or p.exists():
        return p
    return Path(config_path).parent / p


def check_references(cfg: PipelineConfig, path: str | Path) -> None:
    """Check what a pipeline config points at: target boards, drift/rollout configs (which must validate too).

    ``validate`` and ``run``/``train`` call this before any work starts, so a typo in a board name fails in a second
    instead of after training. Raises ConfigError with one ``file: key: reason`` line per problem.
    """
    from tinymlops.models.own import check_source
    from tinymlops.profile.targets import resolve_target, targets_dir

    problems: list[str] = [f"{path}: {p}" for p in check_source(cfg.model, Path(path).resolve().parent)]
    directory: Path | None = None
    try:
        explicit = cfg.profile.targets_dir
        directory = targets_dir(resolve_relative(path, explicit) if explicit else None)
    except ConfigError as exc:
        problems.append(f"{path}: profile.targets_dir: {exc}")
    boards: list[tuple[str, str]] = []
    if cfg.profile.targets != "all":
        boards += [(f"profile.targets[{i}]", t) for i, t in enumerate(cfg.profile.targets)]
    if "rollout" in cfg.stages and cfg.rollout:
        d = cfg.demo_fleet
        boards += [("demo_fleet.healthy_target", d.healthy_target), ("demo_fleet.faulty_target", d.faulty_target)]
        if "drift" in cfg.stages and d.monitor_target:
            boards.append(("demo_fleet.monitor_target", d.monitor_target))
    if directory is not None:
        for key, board in boards:
            try:
                resolve_target(board, directory)
            except ConfigError as exc:
                problems.append(f"{path}: {key}: {exc}")
    if cfg.dataset.path:  # the data file or folder (the data itself is checked when it is loaded)
        data = Path(cfg.dataset.path)
        data = data if data.is_absolute() else Path(path).resolve().parent / data
        if not data.exists():
            problems.append(f"{path}: dataset.path: {data}: file not found")
    for key in ("drift", "rollout"):
        ref = getattr(cfg, key)
        if not ref:
            continue
        ref_path = resolve_relative(path, ref)
        if not ref_path.is_file():
            problems.append(f"{path}: {key}: {ref_path}: file not found")
            continue
        try:
            load(ref_path, key)
        except ConfigError as exc:
            problems.append(f"{path}: {key}: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))
