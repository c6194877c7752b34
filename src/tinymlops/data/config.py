"""The pipeline config's ``dataset:`` section (a public contract: docs/data.md)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from tinymlops.config_base import Strict

Source = Literal["csv", "parquet", "npz", "audio_folder", "image_folder", "digits", "vibration"]
#: sources read from a file or folder named by ``path``
FILE_SOURCES = ("csv", "parquet", "npz", "audio_folder", "image_folder")
#: sources whose samples are rows with named columns (windows, group and time splits need them)
TABULAR_SOURCES = ("csv", "parquet", "npz")
BUILTIN_SOURCES = ("digits", "vibration")


class VibrationParams(Strict):
    """Knobs of the seeded rotating-machine generator (see tinymlops.data.vibration)."""

    windows_per_class: int = Field(500, ge=10)
    window_samples: int = Field(256, ge=64)
    sample_rate_hz: float = Field(1600.0, gt=0)
    shaft_hz: float = Field(25.0, gt=0)
    shaft_hz_jitter: float = Field(0.08, ge=0, lt=1)
    noise_std: float = Field(0.1, ge=0)
    gain: float = Field(1.0, gt=0)
    offset: float = 0.0


class WindowsSection(Strict):
    """Turn time-series rows into fixed-size windows (one sample = ``size`` consecutive rows of one group)."""

    size: int = Field(ge=2, description="rows per window")
    stride: int | None = Field(None, ge=1, description="rows between window starts; default: size (no overlap)")
    time: str | None = Field(None, description="column ordering the rows (within a group); default: file order")
    group: str | None = Field(None, description="column naming the recording/session; a window never spans two")
    mixed_labels: Literal["skip", "majority"] = Field(
        "skip", description="a window whose rows carry different labels: skip it (counted in the log) or give it "
                            "the label of most of its rows (ties: the first class in class order)")


class SplitSection(Strict):
    """How samples are split into train / val / test."""

    strategy: Literal["stratified", "group", "time"] = "stratified"
    by: str | None = Field(None, description="group: the column of group ids (default: windows.group); "
                                             "time: the column ordering samples (default: windows.time)")
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    seed: int = 0


class AudioSection(Strict):
    """How an audio folder's WAV files become fixed-length mono clips."""

    sample_rate_hz: int | None = Field(None, gt=0, description="resample every file to this rate; default: the "
                                                                "files' rate (they must all share it)")
    length_s: float = Field(1.0, gt=0, le=600, description="clip length: shorter files are zero-padded at the end, "
                                                          "longer ones trimmed at the end")


class ImageSection(Strict):
    """How an image folder's PNG/JPEG files become equal-shape arrays."""

    size: tuple[int, int] | None = Field(None, description="[height, width] every image is resized to; default: "
                                                           "the size of the images (they must all share it)")
    grayscale: bool = False


_LEGACY_SPLIT_KEYS = ("seed", "val_fraction", "test_fraction")


class DatasetSection(Strict):
    name: str = Field(min_length=1, max_length=200, description="the dataset's name in MLflow and lineage")
    source: Source | None = Field(None, description="default: the name when it is digits or vibration")
    path: str | None = Field(None, description="file or folder, relative to the config file")
    label: str = Field("label", min_length=1, description="label column (csv/parquet) or array (npz)")
    features: list[str] | None = Field(None, min_length=1, description="columns (arrays for npz) used as inputs; "
                                                                       "default: every other column")
    classes: list[str] | None = Field(None, min_length=2, description="the class names in model-output order; a "
                                                                      "label outside it is an error; default: the "
                                                                      "sorted labels found in the data")
    sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$", description="pin the content: loading fails if the "
                               "file's (folder's) sha256 differs; the train run logs its config with it set")
    windows: WindowsSection | None = None
    split: SplitSection = Field(default_factory=SplitSection)
    audio: AudioSection = Field(default_factory=AudioSection)
    image: ImageSection = Field(default_factory=ImageSection)
    vibration: VibrationParams = Field(default_factory=VibrationParams)

    @model_validator(mode="before")
    @classmethod
    def _legacy_split_keys(cls, data: Any) -> Any:
        """Accept the 0.x form ``seed``/``val_fraction``/``test_fraction`` beside ``name`` as ``split:`` keys."""
        if not isinstance(data, dict) or not any(k in data for k in _LEGACY_SPLIT_KEYS):
            return data
        data = dict(data)
        split = data.get("split")
        split = dict(split) if isinstance(split, dict) else {}
        for k in _LEGACY_SPLIT_KEYS:
            if k in data:
                if k in split:
                    raise ValueError(f"{k} is given twice (here and under split:); keep split.{k}")
                split[k] = data.pop(k)
        data["split"] = split
        return data

    @model_validator(mode="after")
    def _check(self) -> DatasetSection:
        if self.source is None:
            if self.name not in BUILTIN_SOURCES:
                raise ValueError(f"source: required (one of {', '.join(get_args(Source))}) unless name is "
                                 f"digits or vibration; got name {self.name!r}")
            object.__setattr__(self, "source", self.name)
        src = self.source
        if src in FILE_SOURCES and not self.path:
            raise ValueError(f"path: required for source {src} (a file or folder, relative to the config file)")
        unused = [k for k in ("path", "classes", "sha256") if getattr(self, k)]
        if src in BUILTIN_SOURCES and unused:
            raise ValueError(f"{unused[0]}: not used by the built-in source {src}")
        if self.features is not None and src not in TABULAR_SOURCES:
            raise ValueError(f"features: not used by source {src} (only csv, parquet, npz)")
        if self.features is not None and self.label in self.features:
            raise ValueError(f"features: the label column {self.label!r} cannot also be an input")
        if self.windows is not None and src not in TABULAR_SOURCES:
            raise ValueError(f"windows: not used by source {src} (only csv, parquet, npz rows)")
        s = self.split
        if s.strategy == "stratified" and s.by is not None:
            raise ValueError("split.by: only used by the group and time strategies")
        if s.strategy != "stratified":
            if src not in TABULAR_SOURCES:
                raise ValueError(f"split.strategy: {s.strategy} needs a column, and source {src} has none "
                                 "(use stratified, or a csv/parquet/npz source)")
            default = (self.windows.group if s.strategy == "group" else self.windows.time) if self.windows else None
            if (s.by or default) is None:
                key = "group" if s.strategy == "group" else "time"
                raise ValueError(f"split.by: the {s.strategy} strategy needs a column (split.by or windows.{key})")
        if s.val_fraction + s.test_fraction >= 0.9:
            raise ValueError("split: val_fraction + test_fraction must leave at least 10% for training")
        return self

    def split_column(self) -> str | None:
        """Return the column the group/time strategy splits by (None for stratified)."""
        s = self.split
        if s.strategy == "stratified":
            return None
        if s.by:
            return s.by
        assert self.windows is not None  # _check guarantees a column
        return self.windows.group if s.strategy == "group" else self.windows.time

    # the 0.x keys, read by code that predates ``split:``
    @property
    def seed(self) -> int:
        return self.split.seed

    @property
    def val_fraction(self) -> float:
        return self.split.val_fraction

    @property
    def test_fraction(self) -> float:
        return self.split.test_fraction
