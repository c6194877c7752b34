"""Group commit of telemetry: one transaction per burst of reports, each report acknowledged once committed.

A writer thread per server worker commits queued reports in groups (one transaction, one durable commit per
batch), which is what lets one database ingest thousands of reports per second; last-seen updates ride along in
the same transactions. Rows are written in (device_id, seq) order, so two workers committing copies of the same
retried reports take their unique-key locks in the same order and cannot deadlock.

On PostgreSQL the writer keeps one connection: a batch is ``COPY``-ed into a session-local staging table (psycopg
formats the rows in C; about a quarter of the client CPU of a multi-row ``INSERT``), then one pipelined round trip
moves it into ``telemetry`` (``INSERT ... SELECT ... ON CONFLICT DO NOTHING``), updates last-seen times
(``UPDATE ... FROM unnest``) and commits. The update skips device rows another worker has locked at that moment
(``FOR NO KEY UPDATE SKIP LOCKED``: never a wait or a deadlock on the devices table; the other worker is writing a
last-seen time of the same moment). Few round trips matter beyond the network: after each one this thread waits
for the GIL behind the busy event loop (up to the switch interval, see :mod:`.app`).

If a batch fails as a whole (a device deleted meanwhile), its reports are retried one by one, so only the report
at fault gets the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy.pool import PoolProxiedConnection

from tinymlops.fleet.store import Device, Store, Telemetry

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("tinymlops.fleet.writer")
COLUMNS = ("device_id", "seq", "model_name", "model_version", "package_id", "target", "cohort",
           "window_start_unix_s", "window_end_unix_s", "received_unix_s", "n_inferences", "sketch_json",
           "samples_json", "feedback_json")
_COLS = ", ".join(COLUMNS)
# a session-local staging table, emptied by every commit (ON COMMIT DELETE ROWS: no cleanup statement needed)
_PG_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS telemetry_in ON COMMIT DELETE ROWS AS "
             f"SELECT {_COLS} FROM telemetry WITH NO DATA")
_PG_COPY = f"COPY telemetry_in ({_COLS}) FROM STDIN"
_PG_INSERT = (f"INSERT INTO telemetry ({_COLS}) SELECT {_COLS} FROM telemetry_in ORDER BY device_id, seq "
              "ON CONFLICT (device_id, seq) DO NOTHING")
_PG_SEEN = (
    "WITH v AS (SELECT * FROM unnest(%s::text[], %s::float8[]) AS v(id, ts)), "
    "free AS (SELECT d.id FROM devices d JOIN v ON d.id = v.id ORDER BY d.id FOR NO KEY UPDATE OF d SKIP LOCKED) "
    "UPDATE devices SET last_seen_unix_s = v.ts FROM v, free "
    "WHERE devices.id = v.id AND devices.id = free.id "
    "AND (devices.last_seen_unix_s IS NULL OR devices.last_seen_unix_s < v.ts)")



def gather(q: queue.SimpleQueue[Any], first: Any, max_batch: int, linger_s: float) -> tuple[list[Any], bool]:
    """Collect ``first`` and what else arrives within ``linger_s`` (at most ``max_batch``); True once the stop
    sentinel (None) was taken."""
    batch = [first]
    deadline = time.monotonic() + linger_s
    while len(batch) < max_batch:
        try:
            nxt = q.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if nxt is None:
            return batch, True
        batch.append(nxt)
    return batch, False

class TelemetryWriter:
    """Commits queued telemetry rows and last-seen updates in batches; resolves each report once committed."""

    def __init__(self, st: Store, max_batch: int = 1000, linger_s: float = 0.003) -> None:
        self.store = st
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._postgres = st.engine.dialect.name == "postgresql"
        self._raw: PoolProxiedConnection | None = None
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="telemetry-writer", daemon=True)
        self._thread.start()

    async def write(self, row: dict[str, Any]) -> None:
        """Queue a telemetry row and wait until it is committed (raises what the commit raised)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((row, loop, fut))
        await fut

    def seen(self, device_id: str, at_unix_s: float) -> None:
        """Record that a device called in (no need to wait for it)."""
        self._q.put(((device_id, at_unix_s), None, None))

    def close(self) -> None:
        """Drain the queue and stop the thread."""
        self._q.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._q.get()
            if item is None:
                break
            # linger briefly so a burst shares one transaction: fewer, larger commits cost far less CPU
            batch, stop = gather(self._q, item, self.max_batch, self.linger_s)
            reports = [(p, loop, fut) for p, loop, fut in batch if fut is not None]
            seen: dict[str, float] = {}
            for p, _loop, fut in batch:
                did, ts = (p["device_id"], p["received_unix_s"]) if fut is not None else p
                seen[did] = max(ts, seen.get(did, 0.0))
            errors = self._commit_each([p for p, _l, _f in reports], seen)
            # one wake-up per event loop and batch, not per report (each is a syscall on the loop's self-pipe)
            by_loop: dict[Any, list[tuple[asyncio.Future[None], BaseException | None]]] = {}
            for (_p, loop, fut), error in zip(reports, errors, strict=True):
                by_loop.setdefault(loop, []).append((fut, error))
            for loop, results in by_loop.items():
                loop.call_soon_threadsafe(_resolve_all, results)
        self._close_connection()

    def _commit_each(self, rows: list[dict[str, Any]], seen: dict[str, float]) -> list[BaseException | None]:
        """Commit a batch; if it fails, commit its rows one by one. Return each row's error (None: committed), in
        the order of ``rows``."""
        try:  # in key order: one lock order for every worker, so two workers' batches cannot deadlock
            self._commit(sorted(rows, key=lambda r: (r["device_id"], r["seq"])), seen)
            return [None] * len(rows)
        except Exception as exc:
            if len(rows) <= 1:
                return [exc] * len(rows)
            log.warning("telemetry batch of %d failed (%s); committing its reports one by one", len(rows),
                        str(exc).splitlines()[0])
        try:
            self._commit([], seen)
        except Exception as exc:
            log.warning("last-seen update failed: %s", str(exc).splitlines()[0])
        errors: list[BaseException | None] = []
        for row in rows:  # one transaction each: no lock order to keep
            try:
                self._commit([row], {row["device_id"]: row["received_unix_s"]})
                errors.append(None)
            except Exception as exc:  # reported to the waiting request; the writer keeps going
                errors.append(exc)
        return errors

    def _commit(self, rows: list[dict[str, Any]], seen: dict[str, float]) -> None:
        if self._postgres:
            self._commit_postgres(rows, seen)
            return
        with self.store.engine.begin() as conn:
            if rows:
                conn.execute(_insert_ignore(conn.dialect.name), rows)
            dev = cast("Table", Device.__table__)
            conn.execute(update(dev).where(dev.c.id == bindparam("did"), (dev.c.last_seen_unix_s.is_(None)) | (
                dev.c.last_seen_unix_s < bindparam("ts"))).values(last_seen_unix_s=bindparam("ts")),
                [{"did": d, "ts": t} for d, t in sorted(seen.items())])


    def _commit_postgres(self, rows: list[dict[str, Any]], seen: dict[str, float]) -> None:
        """COPY a batch into the staging table and move it into telemetry, then the last-seen times; one commit."""
        if self._raw is None:  # the writer keeps one connection (its staging table lives in that session)
            raw = self.store.engine.raw_connection()
            try:
                raw.cursor().execute(_PG_STAGE)
                raw.commit()
            except Exception:
                raw.invalidate()
                raise
            self._raw = raw
        raw, pg = self._raw, cast("psycopg.Connection[Any]", self._raw.driver_connection)
        try:
            with pg.cursor() as cur:
                if rows:
                    with cur.copy(_PG_COPY) as copy:
                        for r in rows:
                            copy.write_row([r[c] for c in COLUMNS])
                # the move, the last-seen update and the commit in one round trip: each round trip makes this
                # thread wait for the GIL behind the busy event loop again
                with pg.pipeline():
                    if rows:
                        cur.execute(_PG_INSERT)
                    if seen:
                        ids = sorted(seen)
                        cur.execute(_PG_SEEN, (ids, [seen[d] for d in ids]))
                    pg.commit()
        except Exception:
            with contextlib.suppress(Exception):
                raw.rollback()
            if getattr(pg, "broken", False) or getattr(pg, "closed", False):  # reconnect at the next batch
                raw.invalidate()
                self._raw = None
            raise

    def _close_connection(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def _resolve_all(results: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for fut, error in results:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


def _insert_ignore(dialect: str) -> Any:
    """Return an INSERT into telemetry that skips a repeated (device_id, seq) (retries are idempotent)."""
    table = cast("Table", Telemetry.__table__)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=["device_id", "seq"])
    return table.insert()
