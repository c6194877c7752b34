"""``standardize``: subtract the training mean and divide by the training standard deviation."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from tinymlops.preprocessing.base import Block, FitContext

#: a feature whose training spread is below this is divided by this instead (constant features stay finite)
STD_FLOOR = 1e-3


class Standardize(Block):
    """Per feature (``mode: feature``) or one mean/std for all values (``mode: global``, e.g. images)."""

    block: Literal["standardize"] = "standardize"
    mode: Literal["feature", "global"] = "feature"
    mean: list[float] | None = Field(None, description="fitted")
    std: list[float] | None = Field(None, description="fitted")
    fitted_fields: ClassVar[tuple[str, ...]] = ("mean", "std")

    def fit(self, X: np.ndarray, ctx: FitContext) -> Standardize:
        F = X.reshape(len(X), -1)
        if self.mode == "global":
            mean, std = np.array([F.mean()]), np.array([F.std()])
        else:
            mean, std = F.mean(axis=0), F.std(axis=0)
        return self.model_copy(update={"mean": mean.tolist(), "std": np.maximum(std, STD_FLOOR).tolist()})

    def apply(self, X: np.ndarray) -> np.ndarray:
        self.check_fitted()
        assert self.mean is not None and self.std is not None
        F = X.reshape(len(X), -1)
        if len(self.mean) not in (1, F.shape[1]) or len(self.std) != len(self.mean):
            raise ValueError(f"standardize block fitted on {len(self.mean)} features, input has {F.shape[1]}")
        return ((F - np.asarray(self.mean)) / np.asarray(self.std)).reshape(X.shape)

    def names(self, in_shape: tuple[int, ...], in_names: list[str] | None) -> list[str] | None:
        return in_names
