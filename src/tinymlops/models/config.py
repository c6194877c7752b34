"""The pipeline config's ``model:`` section: a built-in ``arch``, a project ``builder`` or a model ``file``."""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any, Literal

from pydantic import Field, model_validator

from tinymlops.config_base import Strict

#: model file suffixes by kind; a path without a suffix is a SavedModel directory
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
IMPORT_SUFFIXES = (".tflite", ".onnx")
_BUILDER_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")

ModelKind = Literal["arch", "builder", "keras", "tflite", "onnx"]


def file_kind(path: str) -> ModelKind:
    """Return what a model file is by its name: keras (.keras/.h5/SavedModel dir), tflite or onnx.

    Raises:
        ValueError: an extension tinymlops cannot read (the message lists the ones it can).
    """
    suffix = PurePath(path).suffix.lower()
    if suffix in KERAS_SUFFIXES or suffix == "":
        return "keras"
    if suffix in IMPORT_SUFFIXES:
        return "tflite" if suffix == ".tflite" else "onnx"
    raise ValueError(f"unsupported model file extension {suffix!r} ({path}); expected "
                     f"{', '.join(KERAS_SUFFIXES + IMPORT_SUFFIXES)} or a SavedModel directory")


class ModelSection(Strict):
    """Exactly one of ``arch`` (built-in builder), ``builder`` (``module:function`` of the project) or ``file``."""

    arch: str | None = Field(None, description="builder name in tinymlops.models (e.g. mlp, cnn2d, ds_cnn)")
    builder: str | None = Field(None, description="'module:function' in the project (the config's directory is on "
                                "the import path): build(input_shape, n_classes, **params) -> Keras model")
    file: str | None = Field(None, description="pre-trained model, relative to the config file: .keras, .h5 or a "
                             "SavedModel directory (fine-tuned), .tflite or .onnx (imported as is)")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the builder")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        given = [k for k in ("arch", "builder", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of arch (built-in), builder ('module:function') or file (a model "
                             f"file); got {', '.join(given) if given else 'none'}")
        if self.arch is not None:
            from tinymlops.models import BUILDERS

            if self.arch not in BUILDERS:
                raise ValueError(f"unknown arch {self.arch!r}; expected one of {sorted(BUILDERS)}, or write your "
                                 "own with builder: 'module:function'")
        if self.builder is not None and not _BUILDER_REF.match(self.builder):
            raise ValueError(f"builder {self.builder!r}: expected 'module:function' (e.g. my_models:build)")
        if self.file is not None:
            file_kind(self.file)
            if self.params:
                raise ValueError("params apply to arch and builder, not to a model file")
        return self

    @property
    def kind(self) -> ModelKind:
        """Return where the model comes from: arch, builder, keras (file), tflite or onnx (imported files)."""
        if self.arch is not None:
            return "arch"
        if self.builder is not None:
            return "builder"
        return file_kind(str(self.file))

    @property
    def label(self) -> str:
        """Return a short name of the model for run names and descriptions (arch, builder or file name)."""
        return self.arch or self.builder or PurePath(str(self.file)).name
