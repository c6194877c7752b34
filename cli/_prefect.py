"""The one place the CLI starts a stage's Prefect flow (environment first, then the flow run).

Every stage command either starts its flow here or, with ``--no-prefect``, calls the same library entry point in
this process (no Prefect import, no flow run, no artifacts; the same MLflow records and the same result).
The flow runs inside ``cli._common.run_interruptibly`` (signals, one-line errors, runs left open).
"""

from __future__ import annotations

import importlib
import os
from typing import Annotated, Any

import typer

from cli._common import run_interruptibly

NoPrefectOpt = Annotated[bool, typer.Option(
    "--no-prefect", help="call the stage's library function in this process instead of starting its Prefect flow "
                         "(no flow run or artifacts; same MLflow records and output)")]


#: the user's own log level, read when the CLI starts: library defaults set later (WARNING) must not hide progress
_USER_LOG_LEVEL = os.environ.get("PREFECT_LOGGING_LEVEL")


def prepare(quiet: bool) -> None:
    """Set Prefect's environment before it is imported: project-local home, task logs unless output is JSON."""
    from tinymlops.settings import prepare_environment

    os.environ["PREFECT_LOGGING_LEVEL"] = _USER_LOG_LEVEL or ("WARNING" if quiet else "INFO")
    prepare_environment()


def start_flow(entrypoint: str, *args: Any, quiet: bool = False, **kwargs: Any) -> Any:
    """Run the flow ``module:function`` (e.g. ``flows.drift:drift_flow``) with these arguments; return its result.

    An exception raised inside the flow (e.g. a ``TinyMLOpsError``) propagates to the caller unchanged, so
    ``handle_errors`` prints it as one line with its exit code.
    """
    prepare(quiet)
    module, name = entrypoint.split(":")
    flow = getattr(importlib.import_module(module), name)
    # signals, one-line errors in Prefect's console log, runs left open: cli/_common.py
    return run_interruptibly(flow, *args, **kwargs)
