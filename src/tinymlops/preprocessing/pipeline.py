"""Fit the declared blocks on the training split; the fitted spec the manifest carries; transform with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from tinymlops.preprocessing.base import Block, FitContext
from tinymlops.preprocessing.config import PreprocessingSection
from tinymlops.preprocessing.custom import Custom
from tinymlops.preprocessing.registry import parse_blocks


class FittedPreprocessing(BaseModel):
    """A fitted pre-processing spec: everything needed to turn a raw input into model features.

    Manifests written before blocks existed (``features``/``bands``/``normalize``/``mean``/``std``) load as the
    equivalent blocks and give identical features.
    """

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(1.0, gt=0)
    blocks: list[SerializeAsAny[Block]] = Field(default_factory=list)
    raw_shape: list[int]
    sample_rate_hz: float | None = None
    feature_names: list[str]
    feature_shape: list[int] | None = Field(None, description="per-sample shape of 2-D+ features (spectrograms, "
                                            "images); the model input stays the flat vector")

    @model_validator(mode="before")
    @classmethod
    def _original_form(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "features" not in data:
            return data
        data = dict(data)
        features, bands = data.pop("features"), data.pop("bands", 8)
        data.pop("normalize", None)
        mean, std = data.pop("mean", None), data.pop("std", None)
        if features not in ("identity", "spectral"):
            raise ValueError(f"unknown pre-processing features {str(features)[:80]!r}")
        blocks: list[dict[str, Any]] = [{"block": "spectral", "bands": bands}] if features == "spectral" else []
        if mean is not None and std is not None:
            blocks.append({"block": "standardize", "mean": mean, "std": std})
        return {**data, "blocks": blocks}

    @field_validator("blocks", mode="before")
    @classmethod
    def _parse(cls, v: Any) -> list[Block]:
        blocks = parse_blocks(v, fitted=True)
        for b in blocks:  # an unfitted block is refused when the manifest loads, not on the first window
            b.check_fitted()
        return blocks

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def block_names(self) -> list[str]:
        return [b.block for b in self.blocks]

    def load_code(self) -> None:
        """Compile every custom block's recorded source now (ValueError naming the block if one does not load)."""
        for b in self.blocks:
            if isinstance(b, Custom):
                b.function()


def fit(section: PreprocessingSection, X_train_raw: np.ndarray, sample_rate_hz: float | None = None,
        project_dir: Path | None = None) -> FittedPreprocessing:
    """Fit the configured blocks, in order, on raw training inputs (N, *raw_shape).

    ``project_dir`` (the pipeline config's directory) is where custom ``module:function`` blocks are looked up
    first.
    """
    X_train_raw = np.asarray(X_train_raw)
    X = X_train_raw.astype(np.float64) / section.scale
    ctx = FitContext(sample_rate_hz=sample_rate_hz, project_dir=project_dir)
    names: list[str] | None = None
    fitted: list[Block] = []
    for block in section.effective_blocks():
        fb = block.fit(X, ctx)
        names = fb.names(tuple(X.shape[1:]), names)
        X = fb.apply(X)
        fitted.append(fb)
    n = int(np.prod(X.shape[1:]))
    if names is None or len(names) != n:
        names = [f"f{i}" for i in range(n)]
    return FittedPreprocessing(scale=section.scale, blocks=fitted, raw_shape=list(X_train_raw.shape[1:]),
                               sample_rate_hz=sample_rate_hz, feature_names=names,
                               feature_shape=list(X.shape[1:]) if X.ndim > 2 else None)


def transform(spec: FittedPreprocessing, X_raw: np.ndarray) -> np.ndarray:
    """Turn a batch of raw inputs (N, *raw_shape) into float32 model features (N, n_features)."""
    X_raw = np.asarray(X_raw)
    if list(X_raw.shape[1:]) != spec.raw_shape:
        raise ValueError(f"raw input shape {list(X_raw.shape[1:])} does not match the model's {spec.raw_shape}")
    X = X_raw.astype(np.float64) / spec.scale
    for block in spec.blocks:
        X = block.apply(X)
    return X.reshape(len(X), -1).astype(np.float32)


def validated(preprocessing: Any, where: str) -> FittedPreprocessing:
    """Parse a manifest's fitted pre-processing; UsageError ``<where>: <reason>`` (naming an unknown block) if not."""
    from pydantic import ValidationError

    from tinymlops.errors import UsageError

    if isinstance(preprocessing, FittedPreprocessing):
        return preprocessing
    try:
        return FittedPreprocessing.model_validate(preprocessing)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise UsageError(f"{where}: {msg}" if "block" in msg else f"{where}: preprocessing.{loc}: {msg}") from None


def check_deployable(preprocessing: Any, target_name: str, target_runtime: str) -> FittedPreprocessing:
    """Refuse (UsageError naming the block) a pre-processing a target's devices cannot run; return it parsed.

    Unknown blocks are refused everywhere; custom ``module:function`` blocks on microcontroller targets (the C
    bundle has only the built-in blocks). Called where packages are built, so a device never gets one.
    """
    from tinymlops.errors import UsageError
    from tinymlops.profile.targets import APP_RUNTIMES

    spec = validated(preprocessing, f"package for {target_name}")
    if target_runtime not in APP_RUNTIMES:
        for b in spec.blocks:
            if not b.portable_c:
                raise UsageError(f"package for {target_name}: pre-processing block {b.block!r} runs only on "
                                 f"Linux-class targets; {target_name} is a microcontroller ({target_runtime})")
    return spec
