"""Custom blocks ``module:function`` (Linux-class targets only): the module's source travels in the manifest.

Fitting finds the module (a single ``.py`` file on the import path, e.g. beside the pipeline config), records its
source and sha256; every later use, at training time, in evaluation and on the device, runs *that recorded source*
(compiled once per sha256 into a private module), so the device runs exactly the code the model was trained with
and needs nothing installed. The function takes the batch ``(N, *shape)`` (float64) and the block's ``params`` as
keyword arguments and returns ``(N, ...)``. The package signature is what authorises the code (see docs/data.md).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator, model_validator

from tinymlops.preprocessing.base import Block, FitContext

REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
MAX_SOURCE_BYTES = 256 * 1024
_compiled: dict[str, types.ModuleType] = {}


def _load(source: str, sha256: str) -> types.ModuleType:
    mod = _compiled.get(sha256)
    if mod is None:
        mod = types.ModuleType(f"tinymlops_block_{sha256[:16]}")
        exec(compile(source, f"<pre-processing block {sha256[:16]}>", "exec"), mod.__dict__)  # noqa: S102
        _compiled[sha256] = mod
    return mod


class Custom(Block):
    """A user function ``module:function`` applied to the batch."""

    block: str
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the function")
    source: str | None = Field(None, description="fitted: the module's source")
    sha256: str | None = Field(None, description="fitted: sha256 of the source")
    fitted_fields: ClassVar[tuple[str, ...]] = ("source", "sha256")
    portable_c: ClassVar[bool] = False

    @field_validator("block")
    @classmethod
    def _ref(cls, v: str) -> str:
        if not REF.fullmatch(v):
            raise ValueError(f"custom block {v!r} is not 'module:function'")
        return v

    @model_validator(mode="after")
    def _source_matches(self) -> Custom:
        if self.source is not None:
            if len(self.source.encode()) > MAX_SOURCE_BYTES:
                raise ValueError(f"custom block {self.block!r}: source larger than {MAX_SOURCE_BYTES} bytes")
            if hashlib.sha256(self.source.encode()).hexdigest() != self.sha256:
                raise ValueError(f"custom block {self.block!r}: source does not match its sha256")
        return self

    def fit(self, X: np.ndarray, ctx: FitContext) -> Custom:
        module = self.block.split(":")[0]
        path = ctx.project_dir / (module.replace(".", "/") + ".py") if ctx.project_dir else None
        if path is None or not path.is_file():
            try:
                spec = importlib.util.find_spec(module)
            except (ImportError, ValueError):
                spec = None
            path = Path(spec.origin) if spec is not None and spec.origin else None
        if path is None or path.suffix != ".py" or not path.is_file():
            raise ValueError(f"custom block {self.block!r}: no module {module!r} as a .py file in the project "
                             "directory (beside the pipeline config) or on the import path")
        source = path.read_text(encoding="utf-8")
        fitted = self.model_copy(update={"source": source, "sha256": hashlib.sha256(source.encode()).hexdigest()})
        fitted.function()  # a missing function is a fit-time error, not a device one
        return fitted

    def function(self) -> Any:
        """Return the function, compiling the recorded source once (ValueError naming the block if it fails)."""
        self.check_fitted()
        assert self.source is not None and self.sha256 is not None
        try:
            mod = _load(self.source, self.sha256)
        except Exception as exc:  # e.g. it imports a package this machine does not have
            raise ValueError(f"custom block {self.block!r}: its code does not load here: {type(exc).__name__}: "
                             f"{str(exc)[:200]}") from None
        fn = getattr(mod, self.block.split(":")[1], None)
        if not callable(fn):
            raise ValueError(f"custom block {self.block!r}: module has no function {self.block.split(':')[1]!r}")
        return fn

    def apply(self, X: np.ndarray) -> np.ndarray:
        fn = self.function()
        try:  # a failing user function is a refused input (the agent counts it and keeps serving)
            out = np.asarray(fn(X, **self.params), dtype=np.float64)
        except Exception as exc:
            raise ValueError(f"custom block {self.block!r} failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
        if out.ndim < 2 or len(out) != len(X):
            raise ValueError(f"custom block {self.block!r} returned shape {list(out.shape)} for a batch of "
                             f"{len(X)}; expected ({len(X)}, ...)")
        if not np.all(np.isfinite(out)):
            raise ValueError(f"custom block {self.block!r} returned NaN or infinite values")
        return out
