"""The ingest-path tests (tests/unit/test_fleet_ingest.py) on a real PostgreSQL: the writer's COPY + INSERT ...
ON CONFLICT path, three writers committing the same retried reports in different orders (no deadlock, each stored
once), SKIP LOCKED last-seen updates, batched credential lookups."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _postgres  # noqa: E402
from test_fleet_ingest import *  # noqa: E402, F403  (the ingest tests, collected again with `st` below)

pytestmark = _postgres.marks()
pg_server, st = _postgres.store_fixtures("ingest")
