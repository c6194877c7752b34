"""The base of every config model and the YAML/validation helpers (kept apart from :mod:`tinymlops.config` so
that section modules of each area, and light modules such as the target catalogue the edge agent reads, can use
them without importing every config section)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tinymlops.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for config models: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, raising ConfigError for a missing file, bad YAML or a non-mapping top level."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def format_validation_error(path: str | Path, exc: ValidationError) -> str:
    """Render pydantic errors as 'file: key.path: reason' lines."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after")) or "<top>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{path}: {loc}: {msg}")
    return "\n".join(lines)


def validate_data(data: dict[str, Any], model: type[M], path: str | Path = "<config>") -> M:
    """Validate a mapping against a model, raising ConfigError with file and key paths."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None


def load_kind(path: str | Path, kind: str, model: type[M]) -> M:
    """Load a config file of a known kind: a ``kind:`` key, if present, must say ``kind`` (and is dropped unless
    the model has that field)."""
    data = read_yaml(path)
    if "kind" in data and data["kind"] != kind:
        raise ConfigError(f"{path}: kind: expected {kind!r}, got {data['kind']!r}")
    if "kind" in data and "kind" not in model.model_fields:
        data = {k: v for k, v in data.items() if k != "kind"}
    return validate_data(data, model, path)
