"""Signed key-set updates on the fleet service: stored one per version, relayed to devices in order.

The service cannot make or alter an update (it holds no private key); it refuses an update whose version is not
the next one or whose signature does not verify against the previous key set (:mod:`tinymlops.fleet.keyset`), so
a stale or forged upload is an error for the operator, not a surprise for the devices (which verify again).
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Float, Integer, Text, func, select
from sqlalchemy.orm import Mapped, mapped_column

from tinymlops.fleet.store import Base, Store


class KeyUpdate(Base):
    __tablename__ = "key_updates"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    update_json: Mapped[str] = mapped_column(Text)
    created_unix_s: Mapped[float] = mapped_column(Float)


def latest_version(st: Store) -> int:
    """Return the highest stored key-set version (0: no rotation yet)."""
    with st.session() as s:
        return int(s.scalar(select(func.max(KeyUpdate.version))) or 0)


def updates_since(st: Store, version: int, limit: int = 100) -> list[dict[str, Any]]:
    """Return the signed updates after ``version``, oldest first (at most ``limit``)."""
    with st.session() as s:
        rows = s.scalars(select(KeyUpdate).where(KeyUpdate.version > version)
                         .order_by(KeyUpdate.version).limit(limit))
        return [json.loads(r.update_json) for r in rows]


class UpdateConflict(Exception):
    """The update is not the next version, or another update holds its version."""


def store_update(st: Store, update: dict[str, Any]) -> int:
    """Store the next signed update (an identical re-upload is a no-op); return its version.

    Raises:
        KeyUpdateRejected: malformed, or it does not verify against the previous stored key set.
        UpdateConflict: its version is not the next one, or another update holds it.
    """
    from tinymlops.fleet import keyset
    from tinymlops.fleet.safejson import UnsafeJSON, loads_bounded

    body = str(update.get("payload_json", ""))
    try:
        version = loads_bounded(body, 65536).get("version")  # bounded depth: hostile nesting is a 422, not a 500
    except (UnsafeJSON, ValueError, AttributeError):
        raise keyset.KeyUpdateRejected("malformed key update") from None
    if type(version) is not int or not 0 < version < 2**31:
        raise keyset.KeyUpdateRejected("key update version must be a positive integer")
    with st.session() as s:
        existing = s.get(KeyUpdate, version)
        if existing is not None:
            if json.loads(existing.update_json).get("payload_json") != body:
                raise UpdateConflict(f"another key update holds version {version}")
            return version
        latest = int(s.scalar(select(func.max(KeyUpdate.version))) or 0)
        if version != latest + 1:
            raise UpdateConflict(f"key update version {version}: the service is at {latest}, expected {latest + 1}")
        if latest:  # version 1's signer is the devices' provisioned key, which the service does not know
            prev = s.get(KeyUpdate, latest)
            assert prev is not None
            previous = keyset.KeySet.from_payload(json.loads(json.loads(prev.update_json)["payload_json"]))
            keyset.apply_update(previous, update)
        else:
            keyset.KeySet.from_payload(loads_bounded(body, 65536))
        s.add(KeyUpdate(version=version, update_json=json.dumps(update), created_unix_s=time.time()))
    return version
