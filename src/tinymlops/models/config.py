"""The pipeline config's ``model:`` section."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from tinymlops.config_base import Strict


class ModelSection(Strict):
    arch: str = Field(description="builder name in tinymlops.models (e.g. mlp, cnn2d, ds_cnn)")
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_arch(self) -> ModelSection:
        from tinymlops.models import BUILDERS

        if self.arch not in BUILDERS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {sorted(BUILDERS)}")
        return self
