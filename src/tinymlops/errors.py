"""Error types that the CLI turns into clear messages and exit codes (never tracebacks)."""

from __future__ import annotations


class TinyMLOpsError(Exception):
    """Base class for expected, user-facing failures."""

    exit_code = 1


class ConfigError(TinyMLOpsError):
    """A configuration file or value is invalid (exit code 2)."""

    exit_code = 2


class UsageError(TinyMLOpsError):
    """A command was called with arguments that cannot work (exit code 2)."""

    exit_code = 2


class RegistryError(TinyMLOpsError):
    """MLflow is unreachable, or a model/version/run it was asked for does not exist."""


class ModelFormatError(TinyMLOpsError):
    """A file is not a model this tool can read (truncated, wrong format, unsupported op)."""

    exit_code = 2


class RuntimeCrash(TinyMLOpsError):
    """A model runtime failed or aborted while loading or running a model."""


class DataError(TinyMLOpsError):
    """A dataset cannot be used as configured: missing file, missing values, unknown labels, too few samples."""

    exit_code = 2
