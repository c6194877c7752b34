"""Signed key-set updates on the fleet service: stored one per version, relayed to devices in order.

The service cannot make or alter an update (it holds no private key); it refuses an update whose version is not
the next one or whose signature does not verify against the previous key set (:mod:`tinymlops.fleet.keyset`), so
a stale or forged upload is an error for the operator, not a surprise for the devices (which verify again).
"""

from __future__ import annotations

import json
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
