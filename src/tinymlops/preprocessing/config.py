"""``preprocessing:`` of the pipeline config: a list of blocks, or the original ``features:`` form."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from tinymlops.config_base import Strict
from tinymlops.preprocessing.base import Block
from tinymlops.preprocessing.registry import parse_blocks
from tinymlops.preprocessing.spectral import Spectral
from tinymlops.preprocessing.standardize import Standardize

_LEGACY = ("features", "bands", "normalize")


class PreprocessingSection(Strict):
    """Declared once; fitted on the training split; carried in every exported artifact's manifest.

    Either ``blocks: [...]`` (also written as ``preprocessing: [...]``) or the original form ``features:
    identity|spectral`` + ``bands`` + ``normalize`` (= blocks ``[spectral?, standardize?]``).
    """

    blocks: list[SerializeAsAny[Block]] = Field(default_factory=list, description="pre-processing blocks in order")
    scale: float = Field(1.0, gt=0, description="divide raw inputs by this before the blocks")
    features: Literal["identity", "spectral"] = Field("identity", description="original form: feature extractor")
    bands: int = Field(8, ge=2, le=64, description="original form: FFT bands per axis (spectral features)")
    normalize: Literal["standard", "none"] = Field("standard", description="original form: standardise features")

    @model_validator(mode="before")
    @classmethod
    def _list_form(cls, data: Any) -> Any:
        return {"blocks": data} if isinstance(data, list) else data

    @field_validator("blocks", mode="before")
    @classmethod
    def _parse(cls, v: Any) -> list[Block]:
        return parse_blocks(v, fitted=False)

    @model_validator(mode="after")
    def _one_form(self) -> PreprocessingSection:
        legacy = [k for k in _LEGACY if k in self.model_fields_set]
        if self.blocks and legacy:
            raise ValueError(f"use either blocks or {'/'.join(legacy)} (the original form), not both")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self.blocks and isinstance(data, dict):  # the original-form keys beside blocks: left out, so a dump
            for k in _LEGACY:                       # (logged config, compress cache) validates again
                data.pop(k, None)
        return data

    def effective_blocks(self) -> list[Block]:
        """The blocks to fit, the original form translated."""
        if self.blocks:
            return list(self.blocks)
        out: list[Block] = [Spectral(bands=self.bands)] if self.features == "spectral" else []
        return out + ([Standardize()] if self.normalize == "standard" else [])
