"""Field-data routes: devices learn their consent and upload sealed samples; operators set the policy, grant or
revoke consent, forget a device and read sealed batches for export (decrypted only on the registry host).

Device routes take the device's credential; operator writes need an admin token (:func:`auth.required_role`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import Field
from sqlalchemy import select

from tinymlops.fleet import auth, field, field_seal
from tinymlops.fleet.api import Name, Wire
from tinymlops.fleet.service.deps import DeviceDep, Operator, ServiceDep
from tinymlops.fleet.store import OperatorToken

router = APIRouter(tags=["field data"])
_B64_MAX = (field_seal.MAX_CIPHERTEXT_BYTES + 2) // 3 * 4
MAX_BATCHES_PER_PAGE = 50  # <= ~70 MB of base64 per answer at the largest batch size


class KeyStatement(Wire):
    statement_b64: str = Field(min_length=1, max_length=2048)
    signature_b64: str = Field(min_length=1, max_length=128)


class PolicyRequest(Wire):
    key_statement: KeyStatement
    retention_s: float | None = Field(None, gt=0, le=10 * 365 * 86400.0)
    max_samples_per_device: int | None = Field(None, ge=1, le=1_000_000)
    reservoir_size: int | None = Field(None, ge=1, le=field_seal.MAX_SAMPLES)
    window_s: float | None = Field(None, ge=1, le=7 * 86400.0)


class ConsentRequest(Wire):
    grant: bool
    scope: str = Field("labelled-samples", max_length=32)


class SealedBatch(Wire):
    seq: int = Field(ge=1, le=2**62)
    consent_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    count: int = Field(ge=1, le=field_seal.MAX_SAMPLES)
    window_start_unix_s: float = Field(ge=0, le=1e11, allow_inf_nan=False)
    window_end_unix_s: float = Field(ge=0, le=1e11, allow_inf_nan=False)
    ciphertext_b64: str = Field(min_length=60, max_length=_B64_MAX)


def _refuse(exc: field.FieldRefused) -> HTTPException:
    return HTTPException(exc.status, str(exc))


def _operator_name(svc: Any, authorization: str | None) -> str:
    """Name the operator token of the request (who granted, revoked or forgot), for the audit."""
    token = auth.bearer(authorization)
    if token is None:
        return "unknown"
    with svc.store.session() as s:
        row = s.scalar(select(OperatorToken).where(OperatorToken.token_hash == auth.hash_token(token)))
        return row.name if row is not None else "unknown"


@router.get("/v1/devices/{device_id}/field-consent")
def device_consent(ctx: DeviceDep, svc: ServiceDep) -> dict[str, Any]:
    """Tell a device whether it may send labelled samples, and the signed key to seal them for."""
    return field.device_answer(svc.store, ctx.id)


@router.post("/v1/devices/{device_id}/field-samples")
async def upload_samples(body: SealedBatch, ctx: DeviceDep, svc: ServiceDep) -> dict[str, Any]:
    """Store one sealed batch under the device's active consent (409 without consent, replay or old key)."""
    try:
        return await run_in_threadpool(field.store_batch, svc.store, ctx.id, ctx.cohort, body.model_dump())
    except field.FieldRefused as exc:
        raise _refuse(exc) from None


@router.put("/v1/field-policy", dependencies=[Operator])
def put_policy(body: PolicyRequest, svc: ServiceDep) -> dict[str, Any]:
    """Store the registry's signed field-key statement and the field-data limits."""
    try:
        return field.set_policy(svc.store, body.key_statement.model_dump(),
                                **body.model_dump(exclude={"key_statement"}))
    except field.FieldRefused as exc:
        raise _refuse(exc) from None


@router.get("/v1/field-policy", dependencies=[Operator])
def get_policy(svc: ServiceDep) -> dict[str, Any]:
    """Return the field-data policy (404 before the registry host set one)."""
    p = field.policy(svc.store)
    if p is None:
        raise HTTPException(404, "no field-data policy yet (tinymlops fleet consent sets one)")
    return p


@router.put("/v1/devices/{device_id}/field-consent", dependencies=[Operator])
def put_consent(device_id: Name, body: ConsentRequest, svc: ServiceDep,
                authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    """Grant (or keep) or revoke a device's field-data consent, recording who and when."""
    who = _operator_name(svc, authorization)
    try:
        if body.grant:
            return field.grant(svc.store, device_id, who, body.scope)
        return field.revoke(svc.store, device_id, who) or {"device_id": device_id, "active": False,
                                                           "revoked_unix_s": None}
    except field.FieldRefused as exc:
        raise _refuse(exc) from None


@router.get("/v1/field-consents", dependencies=[Operator])
def list_consents(svc: ServiceDep,
                  device_id: Annotated[str | None, Query(max_length=64)] = None) -> list[dict[str, Any]]:
    """List consents, newest first (of one device with ``device_id``)."""
    return field.consents(svc.store, device_id)


@router.delete("/v1/devices/{device_id}/field-samples", dependencies=[Operator])
def forget(device_id: Name, svc: ServiceDep, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    """Delete a device's field samples, revoke its consent and record the deletion."""
    try:
        return field.forget(svc.store, device_id, _operator_name(svc, authorization))
    except field.FieldRefused as exc:
        raise _refuse(exc) from None


@router.get("/v1/field-forgets", dependencies=[Operator])
def list_forgets(svc: ServiceDep) -> list[dict[str, Any]]:
    """Return the forget audit, newest first."""
    return field.forgets(svc.store)


@router.get("/v1/field-batches", dependencies=[Operator])
def list_batches(svc: ServiceDep, cohort: Annotated[str | None, Query(max_length=64)] = None,
                 since: Annotated[float | None, Query(ge=0, le=1e11, allow_inf_nan=False)] = None,
                 after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
                 limit: Annotated[int, Query(ge=1, le=MAX_BATCHES_PER_PAGE)] = MAX_BATCHES_PER_PAGE
                 ) -> list[dict[str, Any]]:
    """Return a page of sealed batches (ciphertext) for export on the registry host, oldest first (``after_id``)."""
    return field.batches(svc.store, cohort, since, limit, after_id)
