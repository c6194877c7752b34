"""Licences in the fleet database: devices' receipt keys, issued licences, the receipt chains and findings.

Tables (migration 0008, on the fleet ``Base``): ``licence_devices`` (each device's Ed25519 receipt key, registered
once, and the head of its chain as reconciled so far), ``licences`` (signed tokens, one sequence per device
number), ``licence_receipts`` (every accepted receipt: the service can tell a restored state by comparing what a
device re-sends with what it holds) and ``licence_findings``. The checks are :mod:`tinymlops.licensing.reconcile`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from tinymlops.fleet.store import Base, Device, Store
from tinymlops.licensing import chain, reconcile, tokens
from tinymlops.licensing.chain import ChainState
from tinymlops.licensing.tokens import Licence, LicenceInvalid

MAX_FINDINGS_PER_UPLOAD = 100


class LicenceConflict(Exception):
    """The request contradicts what is stored (another key registered, a sequence not above the last, a race)."""


class LicenceDevice(Base):
    __tablename__ = "licence_devices"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    public_b64: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(16))
    registered_unix_s: Mapped[float] = mapped_column(Float)
    head_seq: Mapped[int] = mapped_column(BigInteger)
    state_json: Mapped[str] = mapped_column(Text)
    updated_unix_s: Mapped[float] = mapped_column(Float)


class LicenceRow(Base):
    __tablename__ = "licences"
    __table_args__ = (UniqueConstraint("device_id", "sequence", name="uq_licences_device_sequence"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    customer: Mapped[str] = mapped_column(String(128), index=True)
    sequence: Mapped[int] = mapped_column(BigInteger)
    issued_unix_s: Mapped[float] = mapped_column(Float)
    payload_json: Mapped[str] = mapped_column(Text)
    signature_b64: Mapped[str] = mapped_column(String(128))


class LicenceReceipt(Base):
    __tablename__ = "licence_receipts"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    licence_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ts_unix_s: Mapped[float] = mapped_column(Float)
    received_unix_s: Mapped[float] = mapped_column(Float)
    receipt_json: Mapped[str] = mapped_column(Text)


class LicenceFinding(Base):
    __tablename__ = "licence_findings"
    __table_args__ = (Index("ix_licence_findings_device_at", "device_id", "at_unix_s"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    detail: Mapped[str] = mapped_column(Text)
    at_unix_s: Mapped[float] = mapped_column(Float)


# ---- keys and licences ---------------------------------------------------------------------------------------


def register_key(st: Store, device_id: str, public_b64: str) -> bool:
    """Record a device's receipt key once; return True if new (LicenceConflict if another key is registered)."""
    try:
        kid = tokens.key_id(chain.public_from_b64(public_b64))
    except ValueError as exc:
        raise LicenceInvalid(f"receipt key: {exc}") from None
    now = time.time()
    with st.session() as s:
        row = s.get(LicenceDevice, device_id)
        if row is not None:
            if row.public_b64 != public_b64:
                raise LicenceConflict(f"device {device_id!r} registered another receipt key ({row.key_id}); "
                                      "a device keeps its key for life")
            return False
        s.add(LicenceDevice(device_id=device_id, public_b64=public_b64, key_id=kid, registered_unix_s=now,
                            head_seq=-1, state_json=json.dumps(ChainState().to_json()), updated_unix_s=now))
    return True


def device_info(st: Store, device_id: str) -> dict[str, Any] | None:
    """Return a device's receipt key id, chain head and the next licence sequence (None if no key registered)."""
    with st.session() as s:
        row = s.get(LicenceDevice, device_id)
        if row is None:
            return None
        top = s.scalar(select(LicenceRow.sequence).where(LicenceRow.device_id == device_id)
                       .order_by(LicenceRow.sequence.desc()).limit(1))
        return {"device_id": device_id, "key_id": row.key_id, "public_b64": row.public_b64,
                "head_seq": row.head_seq, "next_sequence": (top or 0) + 1}


def add_licence(st: Store, token: dict[str, str]) -> Licence:
    """Store a signed licence token (LicenceInvalid if malformed; LicenceConflict if it cannot be the next)."""
    from tinymlops.fleet.safejson import UnsafeJSON, loads_bounded

    try:
        payload = loads_bounded(token["payload_json"], tokens.MAX_TOKEN_BYTES)
    except (UnsafeJSON, KeyError, TypeError) as exc:
        raise LicenceInvalid(f"licence token is not readable: {exc}") from None
    lic = tokens.parse_payload(payload)
    with st.session() as s:
        if s.get(Device, lic.device_id) is None:
            raise LicenceInvalid(f"device {lic.device_id!r} does not exist")
        dev = s.get(LicenceDevice, lic.device_id)
        if dev is None or dev.key_id != lic.device_key_id:
            raise LicenceConflict(f"licence is bound to receipt key {lic.device_key_id}, device {lic.device_id!r} "
                                  f"registered {dev.key_id if dev else 'none yet (start its agent online once)'}")
        top = s.scalar(select(LicenceRow.sequence).where(LicenceRow.device_id == lic.device_id)
                       .order_by(LicenceRow.sequence.desc()).limit(1)) or 0
        if lic.sequence <= top:
            raise LicenceConflict(f"licence sequence {lic.sequence} is not above {top} for {lic.device_id!r}")
        s.add(LicenceRow(id=lic.licence_id, device_id=lic.device_id, model_name=lic.model_name, kind=lic.kind,
                         customer=lic.customer, sequence=lic.sequence, issued_unix_s=lic.issued_unix_s,
                         payload_json=token["payload_json"], signature_b64=token["signature_b64"]))
    return lic


def tokens_for(st: Store, device_id: str) -> list[dict[str, str]]:
    """Return the signed tokens issued to a device, in sequence order."""
    with st.session() as s:
        rows = s.scalars(select(LicenceRow).where(LicenceRow.device_id == device_id).order_by(LicenceRow.sequence))
        return [{"payload_json": r.payload_json, "signature_b64": r.signature_b64} for r in rows]


def _licences(s: Any, device_id: str) -> dict[str, Licence]:
    rows = s.scalars(select(LicenceRow).where(LicenceRow.device_id == device_id))
    return {r.id: tokens.parse_payload(json.loads(r.payload_json)) for r in rows}


# ---- receipts ------------------------------------------------------------------------------------------------


def ingest(st: Store, device_id: str, wires: list[Any], device_now: float | None = None) -> dict[str, Any]:
    """Reconcile an uploaded batch of receipts; store what extends the chain and what was found.

    Returns ``acked_seq`` (the head the service holds: the device may forget receipts up to it), counts and the
    findings. LicenceConflict if the device has no key registered or another upload moved the head meanwhile.
    """
    now = time.time()
    with st.session() as s:
        dev = s.get(LicenceDevice, device_id)
        if dev is None:
            raise LicenceConflict(f"device {device_id!r} has no receipt key registered")
        state = ChainState.from_json(json.loads(dev.state_json))

        def stored_hash(seq: int) -> str | None:
            return s.scalar(select(LicenceReceipt.hash).where(LicenceReceipt.device_id == device_id,
                                                              LicenceReceipt.seq == seq))

        out = reconcile.reconcile(state, wires, chain.public_from_b64(dev.public_b64), device_id,
                                  _licences(s, device_id), stored_hash, now)
        if device_now is not None and abs(device_now - now) > reconcile.CLOCK_TOLERANCE_S:
            out.findings.append(reconcile.Finding("clock_skew", None, f"device clock {device_now:.0f} is "
                                                  f"{device_now - now:+.0f} s off the service's"))
        if out.duplicates:
            out.findings.append(reconcile.Finding("duplicate", None, f"{out.duplicates} receipt(s) already held "
                                                  "(a retry or a replay): not counted again"))
        s.add_all([LicenceReceipt(device_id=device_id, seq=r.seq, hash=r.hash, kind=r.kind,
                                  licence_id=r.payload.get("licence_id"), ts_unix_s=float(r.payload["ts"]),
                                  received_unix_s=now, receipt_json=json.dumps(r.wire())) for r in out.accepted])
        # a tampered device re-sends its forked branch at every sync: record each finding once per receipt
        seqs = {f.seq for f in out.findings if f.seq is not None}
        known = set(s.execute(select(LicenceFinding.kind, LicenceFinding.seq).where(
            LicenceFinding.device_id == device_id, LicenceFinding.seq.in_(seqs))).all()) if seqs else set()
        kept = [f for f in out.findings if f.seq is None or (f.kind, f.seq) not in known][:MAX_FINDINGS_PER_UPLOAD]
        s.add_all([LicenceFinding(device_id=device_id, kind=f.kind, seq=f.seq, detail=f.detail[:2000], at_unix_s=now)
                   for f in kept])
        moved = s.execute(update(LicenceDevice).where(LicenceDevice.device_id == device_id,
                                                      LicenceDevice.head_seq == state.seq)
                          .values(head_seq=out.state.seq, state_json=json.dumps(out.state.to_json()),
                                  updated_unix_s=now)).rowcount  # type: ignore[attr-defined]
        if moved != 1:  # raising rolls the whole upload back
            raise LicenceConflict("another upload of this device moved its chain meanwhile; retry")
    return {"acked_seq": out.state.seq, "accepted": len(out.accepted), "duplicates": out.duplicates,
            "findings": [f.as_dict() for f in out.findings[:MAX_FINDINGS_PER_UPLOAD]]}


# ---- reading -------------------------------------------------------------------------------------------------


def usage(st: Store, device_id: str | None = None, customer: str | None = None,
          model_name: str | None = None) -> list[dict[str, Any]]:
    """Return every licence matching the filters with its reconciled usage."""
    q = select(LicenceRow, LicenceDevice.state_json).join(
        LicenceDevice, LicenceDevice.device_id == LicenceRow.device_id, isouter=True)
    for col, val in ((LicenceRow.device_id, device_id), (LicenceRow.customer, customer),
                     (LicenceRow.model_name, model_name)):
        if val is not None:
            q = q.where(col == val)
    with st.session() as s:
        rows = s.execute(q.order_by(LicenceRow.device_id, LicenceRow.sequence)).all()
    out = []
    for row, state_json in rows:
        state = ChainState.from_json(json.loads(state_json)) if state_json else ChainState()
        lic = tokens.parse_payload(json.loads(row.payload_json))
        out.append(reconcile.usage_row(lic, state.uses.get(lic.licence_id), lic.licence_id in state.accepted))
    return out


def findings(st: Store, device_id: str | None = None, since: float | None = None,
             limit: int = 1000) -> list[dict[str, Any]]:
    """Return recorded findings (newest first)."""
    q = select(LicenceFinding)
    if device_id is not None:
        q = q.where(LicenceFinding.device_id == device_id)
    if since is not None:
        q = q.where(LicenceFinding.at_unix_s >= since)
    with st.session() as s:
        return [{"device_id": f.device_id, "kind": f.kind, "seq": f.seq, "detail": f.detail, "at_unix_s": f.at_unix_s}
                for f in s.scalars(q.order_by(LicenceFinding.id.desc()).limit(limit))]


def report(st: Store, customer: str | None = None) -> dict[str, Any]:
    """Reconcile per customer and device: usage, overage, and whether the device's metering was tampered with."""
    rows = usage(st, customer=customer)
    devices = sorted({r["device_id"] for r in rows})
    with st.session() as s:
        found = s.execute(select(LicenceFinding.device_id, LicenceFinding.kind)
                          .where(LicenceFinding.device_id.in_(devices))).all() if devices else []
        heads = dict(s.execute(select(LicenceDevice.device_id, LicenceDevice.updated_unix_s)
                               .where(LicenceDevice.device_id.in_(devices))).all()) if devices else {}
    kinds: dict[str, Counter[str]] = {d: Counter() for d in devices}
    for did, kind in found:
        kinds[did][kind] += 1
    customers: dict[str, dict[str, Any]] = {}
    for r in rows:
        c = customers.setdefault(r["customer"], {"customer": r["customer"], "used": 0, "overage": 0, "devices": {}})
        c["used"] += r["used"]
        c["overage"] += r["overage"]
        d = c["devices"].setdefault(r["device_id"], {
            "device_id": r["device_id"], "last_upload_unix_s": heads.get(r["device_id"]),
            "findings": dict(kinds[r["device_id"]]),
            "tampered": any(k in reconcile.TAMPER for k in kinds[r["device_id"]]), "licences": []})
        d["licences"].append(r)
    return {"customers": [{**c, "devices": list(c["devices"].values())} for c in customers.values()]}
