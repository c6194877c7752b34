"""The fleet store's tests (tests/unit/test_fleet_store.py) on a real PostgreSQL: alembic migrations reach head
and match the ORM on this dialect too, telemetry windows and desired state behave the same."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _postgres  # noqa: E402
from test_fleet_store import *  # noqa: E402, F403  (the store tests, collected again with `st` below)

pytestmark = _postgres.marks()
pg_server, st = _postgres.store_fixtures("store")
