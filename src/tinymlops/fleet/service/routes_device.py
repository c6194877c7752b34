"""Device routes: enrolment, desired state, package download, telemetry and deployment events.

Every device URL is ``/v1/devices/{device_id}/...`` and the credential must be that device's own, so a device reads
only its own desired state, downloads only packages it is told to run, and posts only its own telemetry and events.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from sqlalchemy import select, update
from starlette.requests import ClientDisconnect

from tinymlops.fleet import api, auth, credentials, grants, keyupdates, personal_switch, store
from tinymlops.fleet.certbind import scope_identities
from tinymlops.fleet.service.deps import DeviceDep, ServiceDep
from tinymlops.fleet.store import (
    CohortDesiredState,
    DeploymentEvent,
    DesiredState,
    Device,
    EnrolmentToken,
    Package,
)

ACCEPTED_BODY = b'{"accepted":true}'
router = APIRouter(tags=["device"])


@router.post("/v1/enrol", status_code=201)
def enrol(req: api.EnrolRequest, request: Request, svc: ServiceDep) -> api.EnrolResponse:
    """Exchange a one-time enrolment token for this device's own credential (429 after repeated failures)."""
    limit_keys = (f"ip:{request.client.host if request.client else '?'}", f"tok:{auth.hash_token(req.enrolment_token)}")
    svc.check_cert(req.device_id, scope_identities(request.scope))  # mutual TLS: enrol only as the certificate's device
    if svc.known_targets is not None and req.target not in svc.known_targets:
        raise HTTPException(422, f"unknown target {req.target!r}; known: {sorted(svc.known_targets)}")
    now = time.time()
    h = auth.hash_token(req.enrolment_token)
    credential = auth.new_token(auth.DEVICE_PREFIX)
    with svc.store.session() as s:
        tok = s.get(EnrolmentToken, h)
        if tok is None or tok.used_unix_s is not None or tok.expires_unix_s < now:
            svc.limiter.fail(*limit_keys)
            svc.limiter.check(*limit_keys)  # 429 once this client or token failed too often
            raise HTTPException(403, "enrolment token unknown, already used or expired")
        if s.get(Device, req.device_id) is not None:
            raise HTTPException(409, f"device id {req.device_id!r} is taken")
        # conditional update: of two concurrent enrolments with one token, exactly one wins
        claimed = s.execute(update(EnrolmentToken).where(EnrolmentToken.token_hash == h,
                                                         EnrolmentToken.used_unix_s.is_(None))
                            .values(used_unix_s=now, device_id=req.device_id)).rowcount  # type: ignore[attr-defined]
        if claimed != 1:
            raise HTTPException(403, "enrolment token unknown, already used or expired")
        s.add(Device(id=req.device_id, target=req.target, cohort=tok.cohort, labels=dict(tok.labels or {}),
                     credential_hash=auth.hash_token(credential), samples_opt_in=tok.samples_opt_in,
                     feedback_opt_in=tok.feedback_opt_in, enrolled_unix_s=now, last_seen_unix_s=now,
                     revoked=False))
        if req.encryption_public_key:
            s.flush()
            s.add(grants.DeviceKey(device_id=req.device_id, public_b64=req.encryption_public_key))
        cohort, samples, feedback = tok.cohort, tok.samples_opt_in, tok.feedback_opt_in
        s.flush()
        cd = s.get(CohortDesiredState, cohort)
        cd_pkg = s.get(Package, cd.package_id) if cd else None
        cd_target = cd_pkg.target if cd_pkg else None
    if cd is not None and cd_target == req.target:
        store.set_desired(svc.store, cd.package_id, [req.device_id], reason=f"cohort {cohort}: {cd.reason}")
    return api.EnrolResponse(device_id=req.device_id, credential=credential, target=req.target,
                             cohort=cohort, samples_opt_in=samples, feedback_opt_in=feedback)


@router.get("/v1/devices/{device_id}/desired-state")
def desired_state(ctx: DeviceDep, svc: ServiceDep) -> api.DesiredState:
    """Return the package this device should run (package_id null: keep what you have)."""
    svc.writer.seen(ctx.id, time.time())
    with svc.store.session() as s:
        row = s.execute(select(Package.id, Package.model_name, Package.model_version, Package.sha256,
                               Package.size_bytes, store.DesiredState.authorisation_json)
                        .join(store.DesiredState, store.DesiredState.package_id == Package.id)
                        .where(store.DesiredState.device_id == ctx.id)).first()
        personalise = personal_switch.personalise_for(s, ctx.id)
    keys = svc.current_keyset_version()
    if row is None:
        return api.DesiredState(device_id=ctx.id, poll_interval_s=svc.poll_interval_s, keyset_version=keys,
                                personalise=personalise)
    return api.DesiredState(device_id=ctx.id, package_id=row[0], model_name=row[1], model_version=row[2],
                            sha256=row[3], size_bytes=row[4], poll_interval_s=svc.poll_interval_s,
                            rollback_authorisation=json.loads(row[5]) if row[5] else None, keyset_version=keys,
                            personalise=personalise)


@router.get("/v1/devices/{device_id}/key-updates")
def device_key_updates(ctx: DeviceDep, svc: ServiceDep,
                       since: Annotated[int, Query(ge=0, lt=2**31)] = 0) -> list[api.KeyUpdate]:
    """Return the signed key-set updates after ``since`` (the device verifies each link itself)."""
    return [api.KeyUpdate(**u) for u in keyupdates.updates_since(svc.store, since)]


@router.post("/v1/devices/{device_id}/credential", status_code=201)
def rotate_credential(ctx: DeviceDep, svc: ServiceDep) -> api.NewCredential:
    """Issue this device a new credential; its first use retires the current one (on every worker within 1 s)."""
    return api.NewCredential(device_id=ctx.id, credential=credentials.issue(svc.store, ctx.id))


@router.get("/v1/devices/{device_id}/packages/{package_id}")
def package_manifest(package_id: str, ctx: DeviceDep, svc: ServiceDep) -> api.SignedManifest:
    """Return a package's signed manifest (exact bytes) and signature."""
    p = svc.allowed_package(ctx, package_id)
    return api.SignedManifest(package_id=p.id, manifest_json=p.manifest_json, signature_b64=p.signature_b64,
                              key_id=p.key_id, wrapped_key=grants.wrapped_for(svc.store, p.id, ctx.id))


@router.get("/v1/devices/{device_id}/packages/{package_id}/artifact", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def package_artifact(package_id: str, ctx: DeviceDep, svc: ServiceDep) -> Response:
    """Download a package's model file."""
    p = svc.allowed_package(ctx, package_id)
    return Response(p.artifact, media_type="application/octet-stream", headers={"X-Content-SHA256": p.sha256})


@router.post("/v1/devices/{device_id}/telemetry", status_code=202, response_model=api.Accepted,
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/TelemetryReport"}}}},
                 "parameters": [{"name": "authorization", "in": "header", "required": False,
                                 "schema": {"type": "string"}, "description": "Bearer tmo_dev_..."}]})
async def post_telemetry(device_id: str, request: Request, svc: ServiceDep) -> Response:
    """Accept one telemetry window; acknowledged only once committed (repeated seq is ignored)."""
    try:
        body = await request.body()
    except ClientDisconnect:  # the device went away mid-upload (crash, power loss): nothing to answer
        return Response(status_code=400)
    await svc.ingest_telemetry(device_id, request.headers.get("authorization"), body)
    return Response(ACCEPTED_BODY, status_code=202, media_type="application/json")


@router.post("/v1/devices/{device_id}/events", status_code=201)
def post_event(ev: api.DeploymentEventReport, ctx: DeviceDep, svc: ServiceDep) -> api.Accepted:
    """Record an install success, a rejection (with reason), a rollback or a load failure."""
    now = time.time()
    with svc.store.session() as s:
        p = s.get(Package, ev.package_id) if ev.package_id else None
        if ev.package_id and p is None:  # D11: events name real packages
            raise HTTPException(422, f"package {ev.package_id!r} does not exist")
        d = s.get(Device, ctx.id)
        if ev.kind in ("installed", "rolled_back") and p is not None and d is not None:
            # D2: a device cannot make itself "run" (and so download) a package it was never assigned
            ds = s.get(DesiredState, ctx.id)
            assigned = {ds.package_id if ds else None, d.current_package_id, d.previous_package_id}
            if p.id not in assigned or p.target != ctx.target:
                raise HTTPException(403, f"package {p.id!r} was never assigned to device {ctx.id!r}")
        s.add(DeploymentEvent(device_id=ctx.id, kind=ev.kind, package_id=ev.package_id,
                              model_version=ev.model_version, reason=ev.reason, at_unix_s=now))
        if ev.kind in ("installed", "rolled_back") and p is not None and d is not None \
                and d.current_package_id != p.id:
            d.previous_package_id, d.previous_version = d.current_package_id, d.current_version
            d.current_package_id, d.current_version = p.id, p.model_version
        s.execute(update(Device).where(Device.id == ctx.id).values(last_seen_unix_s=now))
    return api.Accepted()
