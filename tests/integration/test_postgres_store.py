"""The fleet store's tests (tests/unit/test_fleet_store.py) on a real PostgreSQL: alembic migrations reach head
and match the ORM on this dialect too, telemetry windows and desired state behave the same."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _postgres  # noqa: E402
from test_fleet_store import *  # noqa: E402, F403  (the store tests, collected again with `st` below)
from test_fleet_store import store  # noqa: E402

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not _postgres.available(), reason="needs PostgreSQL server binaries")]
_n = iter(range(10_000))


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    with _postgres.postgres_server() as url:
        yield url


@pytest.fixture
def st(pg_server: str) -> Iterator[store.Store]:  # overrides the SQLite `st` of the imported tests
    s = store.open_store(_postgres.create_database(pg_server, f"store_{next(_n)}"))
    assert s.engine.dialect.name == "postgresql"
    yield s
    s.dispose()
