"""Group commit of telemetry: one transaction per burst of reports, each report acknowledged once committed.

A writer thread commits queued reports in groups (one transaction per batch), which is what lets one SQLite file
ingest thousands of reports per second; last-seen updates ride along in the same transactions.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any, cast

from sqlalchemy import Table, bindparam, update

from tinymlops.fleet.store import Device, Store, Telemetry


class TelemetryWriter:
    """Commits queued telemetry rows and last-seen updates in batches; resolves each report once committed."""

    def __init__(self, st: Store, max_batch: int = 1000, linger_s: float = 0.003) -> None:
        self.store = st
        self.max_batch = max_batch
        self.linger_s = linger_s
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
            batch = [item]
            # linger briefly so a burst shares one transaction: fewer, larger commits cost far less CPU
            deadline = time.monotonic() + self.linger_s
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            error: BaseException | None = None
            try:
                self._commit(batch)
            except Exception as exc:  # reported to every waiting request, the writer keeps going
                error = exc
            # one wake-up per event loop and batch, not per report (each is a syscall on the loop's self-pipe)
            by_loop: dict[Any, list[asyncio.Future[None]]] = {}
            for _payload, loop, fut in batch:
                if fut is not None:
                    by_loop.setdefault(loop, []).append(fut)
            for loop, futs in by_loop.items():
                loop.call_soon_threadsafe(_resolve_all, futs, error)

    def _commit(self, batch: list[Any]) -> None:
        rows = [p for p, _l, f in batch if f is not None]
        seen: dict[str, float] = {}
        for p, _l, f in batch:
            did, ts = (p["device_id"], p["received_unix_s"]) if f is not None else p
            seen[did] = max(ts, seen.get(did, 0.0))
        with self.store.engine.begin() as conn:
            if rows:
                conn.execute(_insert_ignore(conn.dialect.name), rows)
            dev = cast("Table", Device.__table__)
            conn.execute(update(dev).where(dev.c.id == bindparam("did")).values(
                last_seen_unix_s=bindparam("ts")), [{"did": d, "ts": t} for d, t in seen.items()])


def _resolve_all(futs: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in futs:
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
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=["device_id", "seq"])
    return table.insert()
