"""Device-credential rotation: a device asks for a new credential; its first use retires the old one.

Two steps, so a lost answer never locks a device out: ``POST /v1/devices/{id}/credential`` (authenticated with the
current credential) stores only the new credential's hash as *pending* and returns the credential once. The old
credential keeps working until the device authenticates with the new one; that request promotes the new hash,
deletes the pending row and bumps the revocation epoch, so every worker refuses the old credential within a second.
A second rotation before the first was used replaces the pending credential.
"""

from __future__ import annotations

import time

from sqlalchemy import Float, ForeignKey, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from tinymlops.fleet import auth, revocation
from tinymlops.fleet.store import Base, Device, Store


class PendingCredential(Base):
    __tablename__ = "device_credentials_pending"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    credential_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_unix_s: Mapped[float] = mapped_column(Float)


def issue(st: Store, device_id: str) -> str:
    """Make a new credential for a device and store its hash as pending; return the credential (shown once)."""
    credential = auth.new_token(auth.DEVICE_PREFIX)
    with st.session() as s:
        s.execute(delete(PendingCredential).where(PendingCredential.device_id == device_id))
        s.add(PendingCredential(device_id=device_id, credential_hash=auth.hash_token(credential),
                                created_unix_s=time.time()))
    return credential


def promote(st: Store, token_hash: str) -> tuple[Device, str] | None:
    """If ``token_hash`` is a device's pending credential, make it the device's only credential.

    Return the device and the hash of the credential it replaced, which stops working here (and on every worker
    within ``EPOCH_CHECK_S``: the revocation epoch is bumped). None if the hash is not pending.
    """
    with st.session() as s:
        pending = s.scalar(select(PendingCredential).where(PendingCredential.credential_hash == token_hash))
        if pending is None:
            return None
        d = s.get(Device, pending.device_id)
        s.delete(pending)
        if d is None or d.revoked:
            return None
        old, d.credential_hash = d.credential_hash, token_hash
        revocation.bump(s)
        s.flush()
        s.expunge(d)
        return d, old
