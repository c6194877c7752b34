"""Who may decrypt what: devices' public encryption keys and per-device wrapped content keys (fleet database).

The service relays these and never sees a content key in the clear: wraps are made on the registry host
(:func:`grant`, used by ``OperatorClient.set_desired``, ``tinymlops fleet grant`` and the rollout controller).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from tinymlops.fleet.store import Base, Store


class DeviceKey(Base):
    __tablename__ = "device_keys"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    public_b64: Mapped[str] = mapped_column(String(64))


class PackageKey(Base):
    __tablename__ = "package_keys"

    package_id: Mapped[str] = mapped_column(ForeignKey("packages.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    wrapped_b64: Mapped[str] = mapped_column(Text)


def public_keys(st: Store, device_ids: list[str]) -> dict[str, str]:
    """Return the public encryption keys of devices that have one."""
    with st.session() as s:
        rows = s.scalars(select(DeviceKey).where(DeviceKey.device_id.in_(device_ids)))
        return {r.device_id: r.public_b64 for r in rows}


def store_wraps(st: Store, package_id: str, wraps: dict[str, str]) -> None:
    """Store wrapped content keys of a package for devices (replacing older wraps)."""
    with st.session() as s:
        for did, w in wraps.items():
            s.merge(PackageKey(package_id=package_id, device_id=did, wrapped_b64=w))


def wrapped_for(st: Store, package_id: str, device_id: str) -> str | None:
    """Return the content key of a package wrapped for one device, or None."""
    with st.session() as s:
        row = s.get(PackageKey, (package_id, device_id))
        return row.wrapped_b64 if row else None


def make_wraps(package_id: str, keys: dict[str, str], content_key: bytes) -> dict[str, str]:
    """Wrap a content key for each device's public key."""
    from tinymlops.fleet import crypto

    return {did: crypto.wrap_key(content_key, pub, did, package_id) for did, pub in keys.items()}


def grant(st: Store, package_id: str, device_ids: list[str], key_dir: Any = None) -> int:
    """Wrap a package's content key (kept on this host) for devices, in the database; return how many.

    Nothing to do (0) for a plaintext package or one whose content key this host does not hold.
    """
    from tinymlops.fleet import crypto

    cek = crypto.load_content_key(package_id, key_dir)
    if cek is None or not device_ids:
        return 0
    wraps = make_wraps(package_id, public_keys(st, device_ids), cek)
    store_wraps(st, package_id, wraps)
    return len(wraps)
