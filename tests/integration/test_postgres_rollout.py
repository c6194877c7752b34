"""The rollout controller's whole test-suite (tests/unit/test_rollout_controller.py) on a real PostgreSQL.

Every scenario there (healthy rollout, faulty canary rolled back, offline hold, lease hand-over after a crash,
abort, refusals) runs here unchanged, each on a fresh PostgreSQL database migrated by alembic; plus the
concurrency SQLite serialises away: two controllers racing for one rollout's lease from two threads.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _postgres  # noqa: E402
from test_rollout_controller import *  # noqa: E402, F403  (the scenarios, collected again with `st` below)
from test_rollout_controller import Controller, Store, config, desired, setup  # noqa: E402

pytestmark = _postgres.marks()
pg_server, st = _postgres.store_fixtures("rollout", "home")


def test_two_controllers_racing_for_a_lease_never_both_drive(st: Store, home: Path) -> None:
    """Both controllers tick the same rollout at the same instant, 30 times: exactly one drives each time."""
    clock, _fleet, _baseline, candidate = setup(st, home, "lease")
    ctls = [Controller(st, clock=clock, owner=name, targets_dir=home / "targets") for name in ("a", "b")]
    rid = ctls[0].start("rollout-unit", "lease", config(), version="2", package_id=candidate)
    drivers: list[str] = []
    for _ in range(30):
        for c in ctls:
            c.release(rid)  # a free lease each round: both race for it
        barrier = threading.Barrier(2)
        acquired: list[str] = []

        def race(c: Controller, barrier: threading.Barrier, acquired: list[str]) -> None:
            barrier.wait()
            if c._acquire(rid, 60.0):
                acquired.append(c.owner)

        threads = [threading.Thread(target=race, args=(c, barrier, acquired)) for c in ctls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(acquired) == 1, f"lease taken by {acquired}"
        drivers += acquired
        loser = next(c for c in ctls if c.owner != acquired[0])
        assert loser.tick(rid).action == "not-owner"
    assert set(desired(st, "lease").values()) <= {candidate, _baseline}
