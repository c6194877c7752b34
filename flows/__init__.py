"""Prefect layer: thin tasks and flows around tinymlops library functions (the library never imports Prefect)."""

from __future__ import annotations

from typing import Any

from tinymlops.errors import TinyMLOpsError
from tinymlops.settings import prepare_environment

prepare_environment()


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition of our tasks: retry unexpected failures, never bad input or an unknown model or version."""
    return not isinstance(getattr(state, "data", None), TinyMLOpsError)
