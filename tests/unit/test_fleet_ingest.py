"""The fleet service's ingest path below HTTP: the group-commit telemetry writer and batched credential lookups.

Run on SQLite here and on a real PostgreSQL by tests/integration/test_postgres_ingest.py (the writer's COPY path,
lock ordering between two workers' writers, SKIP LOCKED last-seen updates).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tinymlops.fleet import auth, credentials, store
from tinymlops.fleet.service.lookup import DeviceLookup
from tinymlops.fleet.service.writer import TelemetryWriter
from tinymlops.fleet.store import DesiredState, Device, Package, Telemetry


@pytest.fixture
def st(tmp_path: Path) -> store.Store:
    return store.open_store(f"sqlite:///{tmp_path / 'fleet.db'}")


def _seed(st: store.Store, n: int = 3) -> list[str]:
    """Enrol devices d0..d{n-1} (credential ``cred-i``), d1 revoked, with a desired package for d0."""
    now = time.time()
    with st.session() as s:
        s.add(Package(id="pkg", model_name="m", model_version="1", format="onnx", target="gw", sha256="0" * 64,
                      size_bytes=1, manifest_json="{}", signature_b64="", key_id="k", artifact=b"x",
                      created_unix_s=now))
        for i in range(n):
            s.add(Device(id=f"d{i}", target="gw", cohort="c", labels={}, credential_hash=auth.hash_token(f"cred-{i}"),
                         samples_opt_in=i == 2, feedback_opt_in=False, enrolled_unix_s=now, revoked=i == 1))
        s.flush()
        s.add(DesiredState(device_id="d0", package_id="pkg", reason="", set_unix_s=now))
    return [f"d{i}" for i in range(n)]


def _row(device_id: str, seq: int, at: float = 1000.0) -> dict:
    return {"device_id": device_id, "seq": seq, "model_name": "m", "model_version": "1", "package_id": "pkg",
            "target": "gw", "cohort": "c", "window_start_unix_s": at, "window_end_unix_s": at + 1,
            "received_unix_s": at + 2, "n_inferences": 5, "sketch_json": '{"a": "tab\\t, quote \\" ünï"}',
            "samples_json": None, "feedback_json": "[]"}


def _stored(st: store.Store) -> list[tuple[str, int]]:
    with st.session() as s:
        return sorted((d, q) for d, q in s.execute(select(Telemetry.device_id, Telemetry.seq)))


def test_a_batch_stores_each_report_once_and_a_bad_report_fails_alone(st: store.Store) -> None:
    _seed(st)
    w = TelemetryWriter(st)
    try:
        rows = [_row("d2", 1), _row("d0", 1), _row("d0", 1), _row("ghost", 1), _row("d0", 2, at=2000.0)]
        errors = w._commit_each(rows, {"d0": 2002.0, "d2": 1002.0})
    finally:
        w.close()
    assert [e is not None for e in errors] == [False, False, False, True, False]  # in the order given
    assert _stored(st) == [("d0", 1), ("d0", 2), ("d2", 1)]
    with st.session() as s:
        row = s.scalar(select(Telemetry).where(Telemetry.device_id == "d0", Telemetry.seq == 1))
        assert row is not None and row.sketch_json == '{"a": "tab\\t, quote \\" ünï"}' and row.feedback_json == "[]"
        assert s.get(Device, "d0").last_seen_unix_s == 2002.0  # type: ignore[union-attr]
    w = TelemetryWriter(st)
    try:  # an older time never moves last-seen back
        assert w._commit_each([_row("d0", 3, at=1.0)], {"d0": 3.0}) == [None]
    finally:
        w.close()
    with st.session() as s:
        assert s.get(Device, "d0").last_seen_unix_s == 2002.0  # type: ignore[union-attr]


def test_concurrent_writes_are_acknowledged_only_once_committed(st: store.Store) -> None:
    _seed(st)
    w = TelemetryWriter(st)

    async def go() -> list[BaseException | None]:
        async def one(row: dict) -> BaseException | None:
            try:
                await w.write(row)
            except Exception as exc:
                return exc
            # acknowledged: the row must already be readable from another connection
            with st.engine.connect() as conn:
                n = conn.execute(select(func.count()).select_from(Telemetry).where(
                    Telemetry.device_id == row["device_id"], Telemetry.seq == row["seq"])).scalar()
            assert n == 1
            return None

        rows = [_row(f"d{i % 3}", i // 3) for i in range(60)] * 2 + [_row("ghost", 1)]
        return await asyncio.gather(*(one(r) for r in rows))

    try:
        results = asyncio.run(go())
    finally:
        w.close()
    assert sum(r is not None for r in results) == 1 and results[-1] is not None
    assert len(_stored(st)) == 60


def test_two_workers_writers_committing_the_same_retries_store_each_once(st: store.Store) -> None:
    _seed(st, 6)
    rows = [_row(f"d{i % 6}", i) for i in range(120)]
    failures: list[BaseException | None] = []

    def worker(order: list[dict]) -> None:
        w = TelemetryWriter(st)
        try:
            for k in range(0, len(order), 20):
                chunk = order[k:k + 20]
                failures.extend(e for e in w._commit_each(list(chunk), {r["device_id"]: 5.0 for r in chunk}) if e)
        finally:
            w.close()

    threads = [threading.Thread(target=worker, args=(o,)) for o in (rows, rows[::-1], rows[40:] + rows[:40])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == [] and len(_stored(st)) == 120


def test_lookup_resolves_many_credentials_in_one_batch(st: store.Store) -> None:
    _seed(st)
    lookup = DeviceLookup(st)
    try:
        hashes = {auth.hash_token(f"cred-{i}") for i in range(3)} | {auth.hash_token("nobody")}
        found = lookup.resolve(hashes)
        assert found[auth.hash_token("cred-0")].ctx is not None
        assert found[auth.hash_token("cred-0")].assigned == frozenset({"pkg"})
        assert found[auth.hash_token("cred-1")].ctx is None  # revoked
        d2 = found[auth.hash_token("cred-2")].ctx
        assert d2 is not None and d2.id == "d2" and d2.samples_opt_in and not d2.feedback_opt_in
        assert found[auth.hash_token("nobody")].ctx is None

        # a rotated credential's first use promotes it and names the hash it retired
        new = credentials.issue(st, "d0")
        promoted = lookup.resolve({auth.hash_token(new)})[auth.hash_token(new)]
        assert promoted.ctx is not None and promoted.ctx.id == "d0" and promoted.replaced == auth.hash_token("cred-0")
        assert lookup.resolve({auth.hash_token("cred-0")})[auth.hash_token("cred-0")].ctx is None

        async def many() -> list:  # concurrent misses share batches and each gets its own answer
            return await asyncio.gather(*(lookup.find(auth.hash_token(t)) for t in ["cred-2", "nobody"] * 50))

        answers = asyncio.run(many())
        assert [a.ctx.id if a.ctx else None for a in answers] == ["d2", None] * 50
    finally:
        lookup.close()
