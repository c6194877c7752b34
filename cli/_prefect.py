"""The one place the CLI starts a stage's Prefect flow (environment first, then the flow run).

Every stage command either starts its flow here or, with ``--no-prefect``, calls the same library entry point in
this process (no Prefect import, no flow run, no artifacts; the same MLflow records and the same result).
Interrupt handling around flow runs hooks in here: ``cli._common.run_interruptibly`` is used when it exists.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Annotated, Any

import typer

from tinymlops.errors import TinyMLOpsError

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


class _OneLineExpectedErrors(logging.Filter):
    """Drop the traceback of expected failures (bad input, unknown model) from console logs: the CLI prints one
    line for them; the flow run's state and its API logs keep the details."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TinyMLOpsError):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_expected_tracebacks() -> None:
    # Prefect 3.9 puts its console handler on the root logger ("" below), not on "prefect"
    names = ["", *(n for n in logging.root.manager.loggerDict if n.startswith("prefect"))]
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not any(
                    isinstance(f, _OneLineExpectedErrors) for f in handler.filters):
                handler.addFilter(_OneLineExpectedErrors())


def start_flow(entrypoint: str, *args: Any, quiet: bool = False, **kwargs: Any) -> Any:
    """Run the flow ``module:function`` (e.g. ``flows.drift:drift_flow``) with these arguments; return its result.

    An exception raised inside the flow (e.g. a :class:`TinyMLOpsError`) propagates to the caller unchanged, so
    ``handle_errors`` prints it as one line with its exit code.
    """
    prepare(quiet)
    module, name = entrypoint.split(":")
    flow = getattr(importlib.import_module(module), name)
    _quiet_expected_tracebacks()
    from cli import _common

    run = getattr(_common, "run_interruptibly", None)  # signal handling around the run (cli/_common.py)
    if run is not None:
        return run(flow, *args, **kwargs)
    return flow(*args, **kwargs)
