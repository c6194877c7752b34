"""A throw-away PostgreSQL server for integration tests: Debian's binaries, initdb + pg_ctl in a temp dir.

PostgreSQL refuses to run as root: when the tests run as root (CI), the server runs as the ``postgres`` user
(created by Debian's package) via ``runuser``. ``python tests/integration/_postgres.py`` starts one and prints its
URL until Ctrl-C (for benchmarks by hand).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest

#: the server log of the most recently started server (deadlocks, slow statements), for diagnostics
last_log: Path | None = None
BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def pg_bin(name: str) -> str | None:
    """Return the path of a PostgreSQL server binary (initdb, pg_ctl), or None when not installed."""
    for d in BIN_DIRS:
        if (d / name).is_file():
            return str(d / name)
    return shutil.which(name)


def available() -> bool:
    return pg_bin("initdb") is not None and pg_bin("pg_ctl") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres_server(max_connections: int = 200) -> Iterator[str]:
    """Start PostgreSQL on a free loopback port; yield ``postgresql+psycopg://tinymlops@127.0.0.1:PORT``."""
    root = Path(tempfile.mkdtemp(prefix="tinymlops-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    global last_log
    last_log = root / "log"
    subprocess.run(_as_server_user([pg_bin("initdb") or "initdb", "-D", str(data), "-U", "tinymlops",
                                    "--auth=trust", "-E", "UTF8", "--no-locale"]),
                   check=True, capture_output=True, timeout=120)
    opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections={max_connections} "
            "-c shared_buffers=128MB")
    subprocess.run(_as_server_user([pg_bin("pg_ctl") or "pg_ctl", "-D", str(data), "-o", opts, "-l",
                                    str(root / "log"), "-w", "-t", "60", "start"]),
                   check=True, capture_output=True, timeout=90)
    try:
        yield f"postgresql+psycopg://tinymlops@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_server_user([pg_bin("pg_ctl") or "pg_ctl", "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """Create a database on the server; return its SQLAlchemy URL."""
    import psycopg

    with psycopg.connect(server_url.replace("+psycopg", "") + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server_url}/{name}"


def marks() -> list[pytest.MarkDecorator]:
    """``pytestmark`` of a PostgreSQL test module: integration, skipped where the server binaries are missing."""
    return [pytest.mark.integration, pytest.mark.skipif(not available(), reason="needs PostgreSQL server binaries")]


_n = count()


def store_fixtures(prefix: str, *before: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Fixtures ``pg_server`` (one server per module) and ``st`` (a fleet store on a fresh, migrated database per
    test, after the fixtures named in ``before``): assign them in a module that re-runs a SQLite test-suite
    (``pg_server, st = _postgres.store_fixtures("x")`` after its ``import *``) to run it on PostgreSQL."""

    @pytest.fixture(scope="module")
    def pg_server() -> Iterator[str]:
        with postgres_server() as url:
            yield url

    @pytest.fixture
    def st(pg_server: str, request: pytest.FixtureRequest) -> Iterator[Any]:
        from tinymlops.fleet.store import open_store

        for name in before:
            request.getfixturevalue(name)
        s = open_store(create_database(pg_server, f"{prefix}_{next(_n)}"))
        assert s.engine.dialect.name == "postgresql"
        yield s
        s.dispose()

    return pg_server, st


def _interrupt(*_args: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    import signal

    # a background job (`&`) ignores SIGINT: stop cleanly on SIGINT or SIGTERM, whichever arrives
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    with postgres_server() as url:
        print(create_database(url, "fleet"), flush=True)
        print(f"log: {last_log}", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
