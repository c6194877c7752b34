"""Licence routes: devices register their receipt key, fetch their licences and upload receipts; operators
store signed licences and read reconciled usage, findings and the per-customer report.

Licences are signed on the registry host (``tinymlops license issue``): the service stores and relays them and
cannot mint one. Receipt uploads are checked by :mod:`tinymlops.licensing.reconcile` in one transaction.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from tinymlops.fleet import licences
from tinymlops.fleet.api import Wire
from tinymlops.fleet.service.deps import DeviceDep, Operator, ServiceDep
from tinymlops.licensing.tokens import LicenceInvalid

MAX_RECEIPTS_PER_UPLOAD = 1000
router = APIRouter(tags=["licensing"])  # device routes take the device's credential, the others an operator token


class ReceiptKey(Wire):
    public_b64: str = Field(min_length=40, max_length=64)


class SignedReceipt(Wire):
    r: str = Field(max_length=1024)
    s: str = Field(max_length=128)


class ReceiptUpload(Wire):
    receipts: list[SignedReceipt] = Field(max_length=MAX_RECEIPTS_PER_UPLOAD)
    now_unix_s: float | None = Field(default=None, ge=0, le=1e11)


class LicenceToken(Wire):
    payload_json: str = Field(max_length=4096)
    signature_b64: str = Field(max_length=128)


def _refuse(exc: Exception) -> HTTPException:
    return HTTPException(409 if isinstance(exc, licences.LicenceConflict) else 422, str(exc))


@router.put("/v1/devices/{device_id}/licence-key")
def register_key(body: ReceiptKey, ctx: DeviceDep, svc: ServiceDep) -> dict[str, Any]:
    """Register the device's Ed25519 receipt key (once; 409 if it registered another)."""
    try:
        new = licences.register_key(svc.store, ctx.id, body.public_b64)
    except (LicenceInvalid, licences.LicenceConflict) as exc:
        raise _refuse(exc) from None
    return {"registered": new}


@router.get("/v1/devices/{device_id}/licences")
def device_licences(ctx: DeviceDep, svc: ServiceDep) -> dict[str, Any]:
    """Return the signed licences issued to this device and the chain head the service holds."""
    info = licences.device_info(svc.store, ctx.id)
    return {"licences": licences.tokens_for(svc.store, ctx.id), "head_seq": info["head_seq"] if info else None}


@router.post("/v1/devices/{device_id}/receipts")
async def upload_receipts(body: ReceiptUpload, ctx: DeviceDep, svc: ServiceDep) -> dict[str, Any]:
    """Reconcile a batch of usage receipts (in chain order); answer the head held and what was found."""
    wires = [r.model_dump() for r in body.receipts]
    try:
        return await run_in_threadpool(licences.ingest, svc.store, ctx.id, wires, body.now_unix_s)
    except licences.LicenceConflict as exc:
        raise _refuse(exc) from None


@router.post("/v1/licences", status_code=201, dependencies=[Operator])
def add_licence(token: LicenceToken, svc: ServiceDep) -> dict[str, Any]:
    """Store a licence signed on the registry host (422 malformed, 409 not the device's next sequence or key)."""
    try:
        lic = licences.add_licence(svc.store, token.model_dump())
    except (LicenceInvalid, licences.LicenceConflict) as exc:
        raise _refuse(exc) from None
    return lic.as_dict()


@router.get("/v1/licences", dependencies=[Operator])
def list_licences(svc: ServiceDep, device_id: Annotated[str | None, Query(max_length=64)] = None,
                  customer: Annotated[str | None, Query(max_length=128)] = None,
                  model: Annotated[str | None, Query(max_length=128)] = None) -> list[dict[str, Any]]:
    """List licences with their reconciled usage."""
    return licences.usage(svc.store, device_id, customer, model)


@router.get("/v1/licence-devices/{device_id}", dependencies=[Operator])
def licence_device(device_id: str, svc: ServiceDep) -> dict[str, Any]:
    """Return a device's receipt key id, chain head and next licence sequence (404 before it registered)."""
    info = licences.device_info(svc.store, device_id)
    if info is None:
        raise HTTPException(404, f"device {device_id!r} has not registered a receipt key (start its agent online)")
    return info


@router.get("/v1/licence-findings", dependencies=[Operator])
def licence_findings(svc: ServiceDep, device_id: Annotated[str | None, Query(max_length=64)] = None,
                     since: float | None = None,
                     limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> list[dict[str, Any]]:
    """List tampering findings (newest first)."""
    return licences.findings(svc.store, device_id, since, limit)


@router.get("/v1/licence-report", dependencies=[Operator])
def licence_report(svc: ServiceDep,
                   customer: Annotated[str | None, Query(max_length=128)] = None) -> dict[str, Any]:
    """Reconcile per customer and device: usage, overage and tampering verdicts."""
    return licences.report(svc.store, customer)
