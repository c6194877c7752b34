"""``tinymlops server mlflow``: MLflow's tracking server in its documented production set-up.

A backend store (PostgreSQL for more than one machine, default the embedded SQLite store of the home), proxied
artifacts (``--artifacts-destination``: clients upload and download through the server and never need the
artifact path or its credentials) and the Host headers it must accept: MLflow refuses any Host header it was not
told about (403 "Invalid Host header"), and ``--allowed-hosts`` replaces its defaults, so the loopback names and
every ``--allowed-host`` name are passed with and without a port (``mlflow`` and ``mlflow:5000`` in compose).
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Annotated

import typer

from cli._common import console, handle_errors
from tinymlops.errors import UsageError

server_app = typer.Typer(help="Run the server side: MLflow tracking server (see docs/deploy.md).",
                         no_args_is_help=True)

LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


def allowed_hosts(names: list[str]) -> str:
    """Return MLflow's ``--allowed-hosts`` value: loopback and each name, bare and with any port."""
    out: list[str] = []
    for name in [*LOOPBACK, *names]:
        name = name.strip()
        if not name:
            continue
        forms = [name] if name == "*" or (":" in name and not name.startswith("[")) else [name, f"{name}:*"]
        out += [f for f in forms if f not in out]
    return ",".join(out)


def mlflow_server_argv(backend_store_uri: str, artifacts_destination: str, host: str, port: int,
                       hosts: list[str], workers: int) -> list[str]:
    """Return the ``mlflow server`` command line for this set-up."""
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
            "--backend-store-uri", backend_store_uri, "--serve-artifacts",
            "--artifacts-destination", artifacts_destination, "--allowed-hosts", allowed_hosts(hosts),
            "--workers", str(workers)]


@handle_errors
def mlflow(
    backend_store_uri: Annotated[str | None, typer.Option(
        envvar="TINYMLOPS_MLFLOW_BACKEND_STORE_URI",
        help="SQLAlchemy URL of runs and the registry, e.g. postgresql+psycopg://user@db/mlflow "
             "(default: the home's embedded store <home>/mlflow.db)")] = None,
    artifacts_destination: Annotated[str | None, typer.Option(
        envvar="TINYMLOPS_MLFLOW_ARTIFACTS_DESTINATION",
        help="where the server keeps artifacts: a directory or s3://, gs://, ... (default <home>/mlartifacts)")]
    = None,
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0 in a container)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 5000,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", help="a name clients use to reach the server (Host header), e.g. mlflow or "
                               "mlflow.example.com; repeatable; loopback is always allowed; '*' allows any")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="server worker processes")] = 2,
    print_command: Annotated[bool, typer.Option("--print-command", help="print the mlflow command and exit")]
    = False,
) -> None:
    """Run MLflow's tracking server with a backend store, proxied artifacts and the right allowed hosts."""
    from tinymlops import settings

    backend = backend_store_uri or f"sqlite:///{settings.home() / 'mlflow.db'}"
    artifacts = artifacts_destination or str(settings.artifact_root())
    if "://" not in backend:
        raise UsageError(f"--backend-store-uri {backend!r}: expected a database URL such as "
                         "postgresql+psycopg://user@host/db or sqlite:///path")
    argv = mlflow_server_argv(backend, artifacts, host, port, allowed_host or [], workers)
    if print_command:
        console.print(shlex.join(argv), highlight=False, soft_wrap=True)
        return
    console.print(f"MLflow server on http://{host}:{port}  backend={backend.split('@')[-1]}  artifacts={artifacts}",
                  highlight=False, soft_wrap=True)
    sys.stdout.flush()
    os.execv(argv[0], argv)  # MLflow's own server process takes over: signals and exit code are its own


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    server_app.command("mlflow")(mlflow)
    app.add_typer(server_app, name="server")
