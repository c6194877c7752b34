"""Consented field data in the fleet database: consents, the field-data policy, sealed batches, forget audit.

Tables (migration 0009, on the fleet ``Base``):

* ``field_policy`` (one row): the registry's signed field-key statement (:mod:`tinymlops.fleet.field_seal`),
  retention, per-device sample quota, reservoir size and window the devices use.
* ``field_consents``: per-device opt-in: who granted it, when, for which scope; who revoked it and when. A device
  may upload only under its active consent (its id is bound into every sealed batch), with a sequence above the
  last one accepted under that consent (replays refused) and a window that ends after the grant.
* ``field_batches``: sealed batches as received (ciphertext only: the service cannot read a sample).
* ``field_forgets``: the audit of ``tinymlops fleet forget`` (who, when, what was deleted); it outlives the device.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from tinymlops.fleet import field_seal
from tinymlops.fleet.store import Base, Device, Store

SCOPES = ("labelled-samples",)
MAX_CLOCK_SKEW_S = 300.0
DEFAULTS = {"retention_s": 30 * 86400.0, "max_samples_per_device": 2000, "reservoir_size": 32, "window_s": 60.0}


class FieldRefused(Exception):
    """A request the field-data rules refuse; ``status`` is the HTTP status the service answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FieldPolicy(Base):
    __tablename__ = "field_policy"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(16))
    statement_json: Mapped[str] = mapped_column(Text)
    retention_s: Mapped[float] = mapped_column(Float)
    max_samples_per_device: Mapped[int] = mapped_column(Integer)
    reservoir_size: Mapped[int] = mapped_column(Integer)
    window_s: Mapped[float] = mapped_column(Float)
    updated_unix_s: Mapped[float] = mapped_column(Float)


class FieldConsent(Base):
    __tablename__ = "field_consents"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(32))
    granted_by: Mapped[str] = mapped_column(String(64))
    granted_unix_s: Mapped[float] = mapped_column(Float)
    revoked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    revoked_unix_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)


class FieldBatch(Base):
    __tablename__ = "field_batches"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_field_batches_device_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    cohort: Mapped[str] = mapped_column(String(64), index=True)
    consent_id: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(16))
    n_samples: Mapped[int] = mapped_column(Integer)
    window_start_unix_s: Mapped[float] = mapped_column(Float)
    window_end_unix_s: Mapped[float] = mapped_column(Float)
    received_unix_s: Mapped[float] = mapped_column(Float, index=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)


class FieldForget(Base):
    __tablename__ = "field_forgets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)  # no foreign key: the audit outlives the device
    requested_by: Mapped[str] = mapped_column(String(64))
    at_unix_s: Mapped[float] = mapped_column(Float)
    batches_deleted: Mapped[int] = mapped_column(Integer)
    samples_deleted: Mapped[int] = mapped_column(Integer)
    consents_revoked: Mapped[int] = mapped_column(Integer)


def _consent_dict(c: FieldConsent) -> dict[str, Any]:
    return {"consent_id": c.id, "device_id": c.device_id, "scope": c.scope, "granted_by": c.granted_by,
            "granted_unix_s": c.granted_unix_s, "revoked_by": c.revoked_by, "revoked_unix_s": c.revoked_unix_s,
            "active": c.revoked_unix_s is None}


def _policy_dict(p: FieldPolicy) -> dict[str, Any]:
    return {"key_id": p.key_id, "key_statement": json.loads(p.statement_json), "retention_s": p.retention_s,
            "max_samples_per_device": p.max_samples_per_device, "reservoir_size": p.reservoir_size,
            "window_s": p.window_s, "updated_unix_s": p.updated_unix_s}


def set_policy(st: Store, statement: dict[str, str], **limits: float | int | None) -> dict[str, Any]:
    """Store the registry's signed field-key statement and the limits (unset limits keep their value)."""
    try:
        doc = json.loads(base64.b64decode(statement["statement_b64"], validate=True))
        key_id = str(doc["key_id"])
        base64.b64decode(statement["signature_b64"], validate=True)
    except (KeyError, ValueError, TypeError, binascii.Error):
        raise FieldRefused(422, "field key statement is malformed") from None
    if doc.get("purpose") != field_seal.PURPOSE or len(key_id) != 16:
        raise FieldRefused(422, "field key statement names another purpose or key")
    with st.session() as s:
        p = s.get(FieldPolicy, 1)
        if p is None:
            p = FieldPolicy(id=1, **DEFAULTS)
            s.add(p)
        p.key_id, p.statement_json = key_id, json.dumps(statement)
        for k, v in limits.items():
            if v is not None:
                setattr(p, k, v)
        p.updated_unix_s = time.time()
        s.flush()
        return _policy_dict(p)


def policy(st: Store) -> dict[str, Any] | None:
    """Return the field-data policy (None before the registry uploaded its field key)."""
    with st.session() as s:
        p = s.get(FieldPolicy, 1)
        return _policy_dict(p) if p else None


def _active(s: Any, device_id: str) -> FieldConsent | None:
    return s.scalars(select(FieldConsent).where(FieldConsent.device_id == device_id,
                                                FieldConsent.revoked_unix_s.is_(None))).first()


def grant(st: Store, device_id: str, by: str, scope: str = "labelled-samples") -> dict[str, Any]:
    """Record a device's opt-in (the active one is kept if it exists); return the consent."""
    if scope not in SCOPES:
        raise FieldRefused(422, f"unknown consent scope {scope!r}; expected one of {', '.join(SCOPES)}")
    with st.session() as s:
        d = s.get(Device, device_id)
        if d is None:
            raise FieldRefused(404, f"no device {device_id!r}")
        if d.revoked:
            raise FieldRefused(409, f"device {device_id!r} is revoked")
        c = _active(s, device_id)
        if c is None:
            c = FieldConsent(id=secrets.token_hex(8), device_id=device_id, scope=scope, granted_by=by[:64],
                             granted_unix_s=time.time(), last_seq=0)
            s.add(c)
            s.flush()
        return _consent_dict(c)


def revoke(st: Store, device_id: str, by: str) -> dict[str, Any] | None:
    """Revoke a device's active consent (its samples stay until forgotten or expired); return it, or None."""
    with st.session() as s:
        c = _active(s, device_id)
        if c is None:
            return None
        c.revoked_by, c.revoked_unix_s = by[:64], time.time()
        return _consent_dict(c)


def consents(st: Store, device_id: str | None = None) -> list[dict[str, Any]]:
    """List consents (newest first), of one device or all."""
    with st.session() as s:
        q = select(FieldConsent).order_by(FieldConsent.granted_unix_s.desc())
        if device_id:
            q = q.where(FieldConsent.device_id == device_id)
        return [_consent_dict(c) for c in s.scalars(q)]


def device_answer(st: Store, device_id: str) -> dict[str, Any]:
    """What a device learns: its active consent (or none), the signed field key and the reservoir settings."""
    with st.session() as s:
        c, p = _active(s, device_id), s.get(FieldPolicy, 1)
        if c is None or p is None:
            return {"consent": None}
        return {"consent": {"consent_id": c.id, "scope": c.scope, "granted_unix_s": c.granted_unix_s},
                "key_statement": json.loads(p.statement_json), "reservoir_size": p.reservoir_size,
                "window_s": p.window_s}


def store_batch(st: Store, device_id: str, cohort: str, body: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Store one sealed batch of a consenting device (FieldRefused with the status otherwise).

    Refused: no active consent or another consent id (409), an old field key (409), a sequence not above the last
    one accepted (409, replay), a window before the grant or in the future (422), oversized ciphertext (413).
    The device's oldest batches are dropped to keep it within its sample quota.
    """
    now = time.time() if now is None else now
    try:
        blob = base64.b64decode(body["ciphertext_b64"], validate=True)
    except (binascii.Error, ValueError):
        raise FieldRefused(422, "ciphertext_b64 is not base64") from None
    if len(blob) > field_seal.MAX_CIPHERTEXT_BYTES:
        raise FieldRefused(413, f"sealed batch of {len(blob)} bytes (limit {field_seal.MAX_CIPHERTEXT_BYTES})")
    with st.session() as s:
        c, p = _active(s, device_id), s.get(FieldPolicy, 1)
        if c is None or p is None:
            raise FieldRefused(409, "no active field-data consent for this device")
        if body["consent_id"] != c.id:
            raise FieldRefused(409, "batch sealed under another consent")
        if body["key_id"] != p.key_id:
            raise FieldRefused(409, f"batch sealed for field key {body['key_id']}, current is {p.key_id}")
        if body["seq"] <= c.last_seq:
            raise FieldRefused(409, f"sequence {body['seq']} not above {c.last_seq} (replay)")
        start, end = body["window_start_unix_s"], body["window_end_unix_s"]
        if not c.granted_unix_s - MAX_CLOCK_SKEW_S <= start <= end <= now + MAX_CLOCK_SKEW_S:
            raise FieldRefused(422, "batch window is before the consent or in the future")
        count = int(body["count"])
        if count > p.max_samples_per_device:
            raise FieldRefused(413, f"{count} samples exceed the per-device quota {p.max_samples_per_device}")
        c.last_seq = body["seq"]
        s.add(FieldBatch(device_id=device_id, cohort=cohort, consent_id=c.id, seq=body["seq"], key_id=p.key_id,
                         n_samples=count, window_start_unix_s=start, window_end_unix_s=end, received_unix_s=now,
                         ciphertext=blob))
        s.flush()
        held = 0
        dropped = 0
        for b in s.scalars(select(FieldBatch).where(FieldBatch.device_id == device_id)
                           .order_by(FieldBatch.seq.desc())):
            held += b.n_samples
            if held > p.max_samples_per_device:
                s.delete(b)
                dropped += 1
        cutoff = now - p.retention_s
        expired = getattr(s.execute(delete(FieldBatch).where(FieldBatch.received_unix_s < cutoff)), "rowcount", 0)
        return {"accepted": count, "dropped_batches": dropped + int(expired or 0)}


def prune(st: Store, now: float | None = None) -> int:
    """Delete batches older than the retention; return how many."""
    now = time.time() if now is None else now
    with st.session() as s:
        p = s.get(FieldPolicy, 1)
        if p is None:
            return 0
        res = s.execute(delete(FieldBatch).where(FieldBatch.received_unix_s < now - p.retention_s))
        return int(getattr(res, "rowcount", 0) or 0)


def forget(st: Store, device_id: str, by: str) -> dict[str, Any]:
    """Delete every field sample of a device, revoke its consent and record the deletion; return the audit row."""
    now = time.time()
    with st.session() as s:
        n_batches, n_samples = s.execute(select(func.count(FieldBatch.id), func.coalesce(func.sum(
            FieldBatch.n_samples), 0)).where(FieldBatch.device_id == device_id)).one()
        known = s.get(Device, device_id) is not None or n_batches
        if not known:
            raise FieldRefused(404, f"no device {device_id!r}")
        s.execute(delete(FieldBatch).where(FieldBatch.device_id == device_id))
        revoked = 0
        for c in s.scalars(select(FieldConsent).where(FieldConsent.device_id == device_id,
                                                      FieldConsent.revoked_unix_s.is_(None))):
            c.revoked_by, c.revoked_unix_s = by[:64], now
            revoked += 1
        row = FieldForget(device_id=device_id, requested_by=by[:64], at_unix_s=now, batches_deleted=int(n_batches),
                          samples_deleted=int(n_samples), consents_revoked=revoked)
        s.add(row)
        s.flush()
        return _forget_dict(row)


def _forget_dict(f: FieldForget) -> dict[str, Any]:
    return {"device_id": f.device_id, "requested_by": f.requested_by, "at_unix_s": f.at_unix_s,
            "batches_deleted": f.batches_deleted, "samples_deleted": f.samples_deleted,
            "consents_revoked": f.consents_revoked}


def forgets(st: Store) -> list[dict[str, Any]]:
    """List the forget audit (newest first)."""
    with st.session() as s:
        return [_forget_dict(f) for f in s.scalars(select(FieldForget).order_by(FieldForget.at_unix_s.desc()))]


def batches(st: Store, cohort: str | None = None, since: float | None = None, limit: int = 100000,
            after_id: int = 0) -> list[dict[str, Any]]:
    """Return stored batches (ciphertext base64) in upload order, excluding forgotten devices and expired batches.

    ``after_id``/``limit`` page through them (ids ascend). Batches of a device forgotten after they were received
    are gone already; those received after a forget (a new consent) are included: the forget covered the data
    held at that time.
    """
    prune(st)
    with st.session() as s:
        q = select(FieldBatch).where(FieldBatch.id > after_id).order_by(FieldBatch.id).limit(limit)
        if cohort:
            q = q.where(FieldBatch.cohort == cohort)
        if since is not None:
            q = q.where(FieldBatch.received_unix_s >= since)
        return [{"id": b.id, "device_id": b.device_id, "cohort": b.cohort, "consent_id": b.consent_id, "seq": b.seq,
                 "key_id": b.key_id, "count": b.n_samples, "window_start_unix_s": b.window_start_unix_s,
                 "window_end_unix_s": b.window_end_unix_s, "received_unix_s": b.received_unix_s,
                 "ciphertext_b64": base64.b64encode(b.ciphertext).decode()} for b in s.scalars(q)]
