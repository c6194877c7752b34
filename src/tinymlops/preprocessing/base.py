"""The block interface: a typed config model that fits on a training batch and transforms batches.

A block is a pydantic model: its config keys are fields; what fitting learns are fields too (listed in
``fitted_fields``, refused in a config) so a fitted block serialises into the manifest and loads back as itself.
Blocks work on float64 batches ``(N, *shape)`` and return ``(N, *out_shape)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

EPS = 1e-6


@dataclass(frozen=True)
class FitContext:
    """What a block may need besides the data: the dataset's sample rate, the project's directory."""

    sample_rate_hz: float | None = None
    project_dir: Path | None = None


class Block(BaseModel):
    """One pre-processing block (subclasses set ``block`` and implement ``apply``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    block: str
    #: fields set by fitting (refused in a config, required to apply)
    fitted_fields: ClassVar[tuple[str, ...]] = ()
    #: microcontroller targets can run it (C99 in tinymlops/export/c); False: Linux-class targets only
    portable_c: ClassVar[bool] = True

    def fit(self, X: np.ndarray, ctx: FitContext) -> Block:
        """Return this block fitted on a training batch (stateless blocks return themselves)."""
        return self

    def apply(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def names(self, in_shape: tuple[int, ...], in_names: list[str] | None) -> list[str] | None:
        """Feature names of the output, or None (numbered ``f0..``); shape-keeping blocks pass names through."""
        return None

    def check_fitted(self) -> None:
        missing = [f for f in self.fitted_fields if getattr(self, f) is None]
        if missing:
            raise ValueError(f"pre-processing block {self.block!r} is not fitted (no {', '.join(missing)})")


def channels_last(X: np.ndarray, block: str, what: str = "(samples,) or (samples, channels)") -> np.ndarray:
    """View a (N, samples) or (N, samples, channels) batch as (N, samples, channels); ValueError otherwise."""
    if X.ndim == 2:
        return X[:, :, None]
    if X.ndim == 3:
        return X
    raise ValueError(f"pre-processing block {block!r} needs {what} inputs, got {list(X.shape[1:])}")


def axis_names(n: int) -> list[str]:
    return ["x", "y", "z"][:n] if n <= 3 else [f"a{i}" for i in range(n)]
