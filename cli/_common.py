"""Shared CLI plumbing: starting flows (interruptible), error handling with exit codes, JSON output, rich tables."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cli._interrupts import interruptible
from tinymlops.errors import TinyMLOpsError

__all__ = ["console", "err_console", "handle_errors", "interruptible", "print_json", "print_table", "run_flow",
           "run_interruptibly"]

# piped output (CI logs, `| less`) gets wide tables instead of rich's 80-column default
console = Console(width=None if sys.stdout.isatty() else 150)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: top-level packages whose exceptions mean "the MLflow store failed" / "Prefect's API failed"
_STORE_ERRORS = ("mlflow", "sqlalchemy", "sqlite3", "requests", "urllib3", "alembic")
_PREFECT_ERRORS = ("prefect", "httpx", "httpcore", "websockets")


def run_flow(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Start a Prefect flow (or any long stage) from a command; every CLI flow start goes through here.

    SIGINT/SIGTERM then stop the command within ~8 s with exit 130/143: the MLflow runs the process opened end
    KILLED, versions registered from them are tagged ``tinymlops.incomplete=interrupted``, Prefect's temporary
    server and other child processes are stopped, and a second Ctrl-C exits at once (see ``cli/_interrupts.py``).
    Tracebacks in Prefect's console log become one line (``TINYMLOPS_DEBUG=1`` keeps them); the command's
    ``handle_errors`` prints the error itself.
    """
    with interruptible(), _one_line_prefect_errors():
        return fn(*args, **kwargs)


#: the name cli/_prefect.py's start_flow looks for
run_interruptibly = run_flow


class _NoTraceback(logging.Filter):
    """Render a log record's exception as one line instead of a traceback; drop urllib3's retry chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("urllib3"):
            return False  # "Retrying (Retry(total=0, ...))": the error line says which store failed and why
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({_first_line(exc)})"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


class _one_line_prefect_errors:  # noqa: N801 - used like a function: `with _one_line_prefect_errors():`
    def __enter__(self) -> None:
        self.handlers: list[logging.Handler] = []
        if os.environ.get("TINYMLOPS_DEBUG"):
            return
        self.flt = _NoTraceback()
        for name in ("", "prefect", *[n for n in logging.root.manager.loggerDict if n.startswith("prefect.")]):
            for h in logging.getLogger(name).handlers:
                if isinstance(h, logging.StreamHandler) and h not in self.handlers:
                    h.addFilter(self.flt)
                    self.handlers.append(h)

    def __exit__(self, *exc: object) -> None:
        for h in self.handlers:
            h.removeFilter(self.flt)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def _fail(message: str, code: int, end_runs: str | None = None) -> typer.Exit:
    """Print the one-line error, then end the runs this process left open with status ``end_runs``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    if end_runs:
        _end_open_runs(end_runs, "error")
    return typer.Exit(code)


def _end_open_runs(status: str, reason: str, timeout_s: float = 5.0) -> None:
    """Best effort: end the runs this process left open (the store may be what failed; then doctor can)."""
    from tinymlops import hygiene, registry

    if not hygiene.open_runs():
        return

    def end() -> None:
        with contextlib.suppress(Exception):  # the store is down: the hint below says what to do
            registry.end_open_runs(status, reason)

    logging.getLogger("urllib3").setLevel(logging.ERROR)  # no retry warnings after the error line
    worker = threading.Thread(target=end, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if hygiene.open_runs():
        err_console.print(f"{len(hygiene.open_runs())} MLflow run(s) are still RUNNING: run `tinymlops doctor "
                          "--fix` once the store answers", highlight=False, soft_wrap=True)


def _store_failure(exc: BaseException) -> str | None:
    """Return 'which store: cause' if an exception comes from MLflow or Prefect, else None."""
    top = type(exc).__module__.split(".")[0]
    if top in _STORE_ERRORS:
        from tinymlops import registry

        return f"MLflow store {registry.tracking_uri()}: {registry.store_error_cause(exc)}"
    if top in _PREFECT_ERRORS or "Prefect API" in str(exc):
        api = os.environ.get("PREFECT_API_URL") or "temporary Prefect server"
        return f"Prefect API ({api}): {_first_line(exc)}"
    return None


def handle_errors(fn: F) -> F:
    """Turn expected failures into a one-line message and their exit code (2 for usage/config errors).

    Missing files exit 2 naming the path; MLflow/Prefect failures exit 1 naming the store and the cause, after
    ending the runs the command opened FAILED.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TinyMLOpsError as exc:
            raise _fail(str(exc), exc.exit_code, "FAILED" if exc.exit_code == 1 else None) from None
        except FileNotFoundError as exc:
            raise _fail(f"{exc.filename or exc}: file not found", 2) from None
        except KeyboardInterrupt:
            _end_open_runs("KILLED", "interrupted")
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            message = _store_failure(exc)
            if message is None:
                raise
            raise _fail(message, 1, "FAILED") from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """Print machine-readable output on stdout (nothing else goes to stdout with --json)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Print a rich table."""
    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*["" if v is None else str(v) for v in r])
    console.print(table)
