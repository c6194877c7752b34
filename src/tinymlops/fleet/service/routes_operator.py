"""Operator routes: enrolment tokens, devices, packages, desired state, personalisation, telemetry, deployment events."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from tinymlops.fleet import api, auth, grants, keyupdates, personal_switch, revocation, store
from tinymlops.fleet.keyset import KeyUpdateRejected
from tinymlops.fleet.safejson import UnsafeJSON, loads_bounded
from tinymlops.fleet.service.deps import Operator, ServiceDep
from tinymlops.fleet.store import Device, EnrolmentToken, Package
from tinymlops.monitor.reference import ReferenceProfile
from tinymlops.monitor.sketches import merge_all

router = APIRouter(tags=["operator"], dependencies=[Operator])


@router.post("/v1/enrolment-tokens", status_code=201)
def create_enrolment_tokens(req: api.EnrolmentTokenRequest, svc: ServiceDep) -> api.EnrolmentTokens:
    """Create one-time enrolment tokens for a cohort."""
    now = time.time()
    tokens = [auth.new_token(auth.ENROLMENT_PREFIX) for _ in range(req.count)]
    with svc.store.session() as s:
        s.add_all([EnrolmentToken(token_hash=auth.hash_token(t), cohort=req.cohort, labels=req.labels,
                                  samples_opt_in=req.samples_opt_in, feedback_opt_in=req.feedback_opt_in,
                                  created_unix_s=now, expires_unix_s=now + req.ttl_s) for t in tokens])
    return api.EnrolmentTokens(tokens=tokens, cohort=req.cohort, expires_unix_s=now + req.ttl_s)


@router.get("/v1/devices")
def devices(svc: ServiceDep, cohort: Annotated[str | None, Query(max_length=64)] = None,
            target: Annotated[str | None, Query(max_length=64)] = None) -> list[api.DeviceOut]:
    """List devices with current/previous/desired package and last seen."""
    return [api.DeviceOut(**d.as_dict()) for d in store.list_devices(svc.store, cohort, target)]


@router.get("/v1/devices/{device_id}")
def get_device(device_id: str, svc: ServiceDep) -> api.DeviceOut:
    """Return one device."""
    d = store.get_device(svc.store, device_id)
    if d is None:
        raise HTTPException(404, f"device {device_id!r} does not exist")
    return api.DeviceOut(**d.as_dict())


@router.post("/v1/devices/{device_id}/revoke")
def revoke_device(device_id: str, svc: ServiceDep) -> api.DeviceOut:
    """Revoke a device's credential (it can no longer call in)."""
    with svc.store.session() as s:
        d = s.get(Device, device_id)
        if d is None:
            raise HTTPException(404, f"device {device_id!r} does not exist")
        d.revoked = True
        revocation.bump(s)  # every worker drops its cached verdicts within EPOCH_CHECK_S
        svc.device_cache.pop(d.credential_hash, None)
    return get_device(device_id, svc)


@router.post("/v1/packages", status_code=201)
def upload_package(req: api.PackageUpload, svc: ServiceDep) -> api.PackageInfo:
    """Store a signed package (devices verify the signature; the service only relays it)."""
    try:
        manifest = loads_bounded(req.manifest_json, 4 * 1024 * 1024)
        artifact = base64.b64decode(req.artifact_b64, validate=True)
        base64.b64decode(req.signature_b64, validate=True)
    except (UnsafeJSON, ValueError, binascii.Error) as exc:
        raise HTTPException(422, f"manifest must be JSON and signature/artifact base64: {exc}") from None
    try:
        if not isinstance(manifest, dict):
            raise TypeError("manifest is not an object")
        ReferenceProfile.model_validate(manifest["reference"])
        fields = {k: str(manifest[k]) for k in ("model_name", "model_version", "format", "target", "sha256")}
        key_id = str(manifest.get("key_id", ""))[:32]
        variant = str(manifest.get("variant", ""))[:64]
    except (KeyError, TypeError, ValueError) as exc:
        raise HTTPException(422, f"manifest lacks a required field or a valid reference: {exc}") from None
    if any(len(v) > 128 for v in fields.values()):
        raise HTTPException(422, "manifest fields too long")
    from tinymlops.fleet.packages import package_id_for

    manifest_bytes = req.manifest_json.encode("utf-8")
    pid = package_id_for(manifest, manifest_bytes)
    with svc.store.session() as s:
        existing = s.get(Package, pid)
        if existing is None:
            s.add(Package(id=pid, model_name=fields["model_name"], model_version=fields["model_version"],
                          variant=variant, format=fields["format"], target=fields["target"],
                          sha256=fields["sha256"], size_bytes=len(artifact), manifest_json=req.manifest_json,
                          signature_b64=req.signature_b64, key_id=key_id, artifact=artifact,
                          created_unix_s=time.time()))
    info = store.get_package_row(svc.store, pid)
    return api.PackageInfo(**info)  # type: ignore[arg-type]


@router.get("/v1/device-keys")
def device_keys(svc: ServiceDep, device_id: Annotated[list[str], Query(max_length=100000)]) -> api.DeviceKeys:
    """Return devices' public encryption keys (to wrap an encrypted package's content key for them)."""
    return api.DeviceKeys(keys=grants.public_keys(svc.store, [d[:64] for d in device_id]))


@router.put("/v1/packages/{package_id}/keys")
def put_package_keys(package_id: str, req: api.PackageKeys, svc: ServiceDep) -> api.Accepted:
    """Store an encrypted package's content key wrapped per device (made on the registry host)."""
    if store.get_package_row(svc.store, package_id) is None:
        raise HTTPException(404, f"package {package_id!r} does not exist")
    known = set(grants.public_keys(svc.store, list(req.wraps)))
    if set(req.wraps) - known:
        raise HTTPException(422, f"devices without an encryption key: {sorted(set(req.wraps) - known)[:10]}")
    grants.store_wraps(svc.store, package_id, req.wraps)
    return api.Accepted()


@router.get("/v1/packages")
def list_packages(svc: ServiceDep,
                  model_name: Annotated[str | None, Query(max_length=128)] = None) -> list[api.PackageInfo]:
    """List stored packages (metadata only)."""
    return [api.PackageInfo(**row) for row in store.list_package_rows(svc.store, model_name)]


@router.put("/v1/desired-state")
def set_desired_state(req: api.DesiredStateRequest, svc: ServiceDep) -> api.DesiredStateUpdated:
    """Set the package that devices (by id) and/or a cohort should run."""
    if not req.device_ids and req.cohort is None:
        raise HTTPException(422, "give device_ids, a cohort, or both")
    try:
        authorisation = req.rollback_authorisation.model_dump_json() if req.rollback_authorisation else None
        updated = store.set_desired(svc.store, req.package_id, req.device_ids, req.cohort, req.reason, authorisation)
    except LookupError as exc:
        raise HTTPException(404 if "does not exist" in str(exc) else 409, str(exc)) from None
    return api.DesiredStateUpdated(updated=updated)


@router.put("/v1/cohorts/{cohort}/personalise")
def set_cohort_personalise(cohort: Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")],
                           req: api.PersonaliseRequest, svc: ServiceDep) -> api.PersonaliseSetting:
    """Switch on-device personalisation for a cohort (its devices learn it from their desired state)."""
    return api.PersonaliseSetting(**personal_switch.set_personalise(svc.store, cohort, req.enabled, req.reason))


@router.get("/v1/cohorts/personalise")
def cohort_personalise(svc: ServiceDep) -> list[api.PersonaliseSetting]:
    """List the cohorts' personalisation switches (a cohort not listed is off)."""
    return [api.PersonaliseSetting(**r) for r in personal_switch.list_settings(svc.store)]


@router.get("/v1/telemetry")
def telemetry(svc: ServiceDep, model_name: Annotated[str, Query(max_length=128)],
              version: Annotated[str | None, Query(max_length=32)] = None,
              target: Annotated[str | None, Query(max_length=64)] = None,
              cohort: Annotated[str | None, Query(max_length=64)] = None,
              device_id: Annotated[str | None, Query(max_length=64)] = None,
              since: Annotated[float | None, Query(allow_inf_nan=False)] = None,
              until: Annotated[float | None, Query(allow_inf_nan=False)] = None,
              limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> list[api.TelemetryOut]:
    """Return telemetry reports (sketches, and samples/feedback where devices opted in), oldest first."""
    recs = store.telemetry_window(svc.store, model_name, version, target, cohort, since, until, device_id)
    return [api.TelemetryOut(**r.__dict__) for r in recs[-limit:]]


@router.get("/v1/telemetry/merged")
def telemetry_merged(svc: ServiceDep, model_name: Annotated[str, Query(max_length=128)],
                     version: Annotated[str | None, Query(max_length=32)] = None,
                     target: Annotated[str | None, Query(max_length=64)] = None,
                     cohort: Annotated[str | None, Query(max_length=64)] = None,
                     since: Annotated[float | None, Query(allow_inf_nan=False)] = None,
                     until: Annotated[float | None, Query(allow_inf_nan=False)] = None) -> api.MergedTelemetry:
    """Merge the sketches of a window exactly (one version at a time: bins differ between versions)."""
    recs = store.telemetry_window(svc.store, model_name, version, target, cohort, since, until)
    digests = {r.sketch.edges_digest for r in recs}
    if len(digests) > 1:
        raise HTTPException(409, "reports span versions with different bins; pass version=")
    merged = merge_all([r.sketch for r in recs])
    return api.MergedTelemetry(
        reports=len(recs), devices=len({r.device_id for r in recs}), sketch=merged,
        latency_p50_ms=merged.latency_quantile_ms(0.5) if merged else None,
        latency_p95_ms=merged.latency_quantile_ms(0.95) if merged else None)


@router.get("/v1/events")
def events(svc: ServiceDep, since: Annotated[float | None, Query(allow_inf_nan=False)] = None,
           device_id: Annotated[str | None, Query(max_length=64)] = None,
           package_id: Annotated[str | None, Query(max_length=128)] = None) -> list[api.EventOut]:
    """Return deployment events (installed, rejected, rolled_back, load_failed), oldest first."""
    return [api.EventOut(**e) for e in store.deployment_events(svc.store, since, device_id, package_id)]


@router.post("/v1/key-updates", status_code=201)
def post_key_update(req: api.KeyUpdate, svc: ServiceDep) -> api.KeyUpdateStored:
    """Store the next signed key-set update (admin); devices fetch and verify it at their next poll."""
    try:
        version = keyupdates.store_update(svc.store, req.model_dump())
    except KeyUpdateRejected as exc:
        raise HTTPException(422, f"key update refused: {exc}") from None
    except keyupdates.UpdateConflict as exc:
        raise HTTPException(409, str(exc)) from None
    svc.keyset_version = max(svc.keyset_version, version)
    return api.KeyUpdateStored(version=version)


@router.get("/v1/key-updates")
def get_key_updates(svc: ServiceDep, since: Annotated[int, Query(ge=0, lt=2**31)] = 0) -> list[api.KeyUpdate]:
    """Return the stored key-set updates after ``since``, oldest first."""
    return [api.KeyUpdate(**u) for u in keyupdates.updates_since(svc.store, since)]
