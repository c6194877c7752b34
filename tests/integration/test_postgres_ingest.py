"""The ingest-path tests (tests/unit/test_fleet_ingest.py) on a real PostgreSQL: the writer's COPY + INSERT ...
ON CONFLICT path, three writers committing the same retried reports in different orders (no deadlock, each stored
once), SKIP LOCKED last-seen updates, batched credential lookups."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _postgres  # noqa: E402
from test_fleet_ingest import *  # noqa: E402, F403  (the ingest tests, collected again with `st` below)
from test_fleet_ingest import store  # noqa: E402

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not _postgres.available(), reason="needs PostgreSQL server binaries")]
_n = iter(range(10_000))


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    with _postgres.postgres_server() as url:
        yield url


@pytest.fixture  # type: ignore[no-redef]
def st(pg_server: str) -> Iterator[store.Store]:  # overrides the SQLite `st` of the imported tests
    s = store.open_store(_postgres.create_database(pg_server, f"ingest_{next(_n)}"))
    assert s.engine.dialect.name == "postgresql"
    yield s
    s.dispose()
