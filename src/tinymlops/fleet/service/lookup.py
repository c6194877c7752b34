"""Batched device-credential lookups: the cache misses of many concurrent requests answered by one query.

When thousands of devices call in with cold caches (a worker starting, a revocation dropping every cached verdict,
a fleet coming back online), one query per request would put a thread hop, a pooled connection and a round trip
behind each of them. A lookup thread per worker instead collects the credential hashes that missed within a few
milliseconds and resolves them together: one ``SELECT`` joining each device with its desired package, so the
telemetry check "does this device run this package" is answered from the same row. A hash that matches no device
may be a rotated credential's first use: :func:`tinymlops.fleet.credentials.promote` handles it, one by one
(rare).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from tinymlops.fleet import credentials
from tinymlops.fleet.service.context import DeviceCtx
from tinymlops.fleet.service.writer import gather
from tinymlops.fleet.store import DesiredState, Device, Store


@dataclass(frozen=True)
class Found:
    """What a credential hash resolves to: the device (None: unknown or revoked) and the packages it may report for.

    ``replaced`` is the hash of the credential a rotation just retired (to drop from the caches).
    """

    ctx: DeviceCtx | None
    assigned: frozenset[str] = frozenset()
    replaced: str | None = None


class DeviceLookup:
    """Resolves credential hashes in batches on a thread of its own; each caller awaits its own answer."""

    def __init__(self, st: Store, max_batch: int = 500, linger_s: float = 0.002) -> None:
        self.store, self.max_batch, self.linger_s = st, max_batch, linger_s
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="device-lookup", daemon=True)
        self._thread.start()

    async def find(self, token_hash: str) -> Found:
        """Return what a credential hash belongs to (raises what the lookup raised)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Found] = loop.create_future()
        self._q.put((token_hash, loop, fut))
        return await fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            batch, stop = gather(self._q, item, self.max_batch, self.linger_s)
            if stop:
                self._q.put(None)  # stop after answering this batch
            try:
                found: dict[str, Found] | BaseException = self.resolve({h for h, _l, _f in batch})
            except Exception as exc:  # every waiting request gets the error; the thread keeps going
                found = exc
            by_loop: dict[Any, list[tuple[asyncio.Future[Found], str]]] = {}
            for h, loop, fut in batch:
                by_loop.setdefault(loop, []).append((fut, h))
            for loop, waiting in by_loop.items():
                loop.call_soon_threadsafe(_answer, waiting, found)

    def resolve(self, hashes: set[str]) -> dict[str, Found]:
        """Look up credential hashes: one query for all of them, plus a promotion attempt for each unknown one."""
        q = (select(Device.id, Device.target, Device.cohort, Device.samples_opt_in, Device.feedback_opt_in,
                    Device.revoked, Device.credential_hash, Device.current_package_id, Device.previous_package_id,
                    DesiredState.package_id)
             .outerjoin(DesiredState, DesiredState.device_id == Device.id)
             .where(Device.credential_hash.in_(sorted(hashes))))
        with self.store.engine.connect() as conn:
            rows = conn.execute(q).all()
        out: dict[str, Found] = {}
        for did, target, cohort, samples, feedback, revoked, h, *packages in rows:
            out[h] = Found(None if revoked else DeviceCtx(did, target, cohort, samples, feedback),
                           frozenset(p for p in packages if p))
        for h in hashes - out.keys():
            promoted = credentials.promote(self.store, h)
            if promoted is None:
                out[h] = Found(None)
                continue
            d, old = promoted
            ctx = DeviceCtx(d.id, d.target, d.cohort, d.samples_opt_in, d.feedback_opt_in)
            out[h] = Found(ctx, self.assigned(d.id), replaced=old)
        return out

    def assigned(self, device_id: str) -> frozenset[str]:
        """Return the packages a device may report telemetry for: its current, previous and desired one."""
        with self.store.session() as s:
            d = s.get(Device, device_id)
            ds = s.get(DesiredState, device_id)
            ids = {d.current_package_id, d.previous_package_id} if d is not None else set()
            ids.add(ds.package_id if ds is not None else None)
        return frozenset(i for i in ids if i)


def _answer(waiting: list[tuple[asyncio.Future[Found], str]], found: dict[str, Found] | BaseException) -> None:
    for fut, h in waiting:
        if fut.done():
            continue
        if isinstance(found, BaseException):
            fut.set_exception(found)
        else:
            fut.set_result(found[h])

