"""Shared FastAPI dependencies of the fleet service routers: one :class:`Service` per app, auth, caches, ingestion.

Two kinds of caller, two kinds of credential (``Authorization: Bearer ...``, only hashes stored):

* operators (``tmo_op_...``): the :func:`operator` dependency;
* devices (``tmo_dev_...``): the :func:`device` dependency; every device URL is ``/v1/devices/{device_id}/...``
  and the id must be the credential's own.

Verdicts are cached for :data:`AUTH_CACHE_TTL_S`; every revocation bumps a shared epoch
(:mod:`tinymlops.fleet.revocation`) that a thread in each worker reads every ``EPOCH_CHECK_S``, dropping its caches when it
moved, so a revocation takes effect on every worker within a second. The telemetry hot path authenticates on the
event loop without a thread hop when the cache is warm; concurrent misses are answered by one batched query
(:mod:`.lookup`), and cache expiries are spread so devices that came online together do not miss together.

A device may report telemetry only for a package it runs, ran just before, or is told to run (D3), with window
and feedback times within :data:`MAX_REPORT_AGE_S` in the past and :data:`MAX_CLOCK_SKEW_S` in the future (D10),
and feedback labels within the model's classes (D11).
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from tinymlops.fleet import api, auth, keyupdates, revocation
from tinymlops.fleet.certbind import scope_identities
from tinymlops.fleet.service.context import DeviceCtx, PackageCtx, check_sketch
from tinymlops.fleet.service.limits import FailureLimiter
from tinymlops.fleet.service.lookup import DeviceLookup, Found
from tinymlops.fleet.service.writer import TelemetryWriter
from tinymlops.fleet.store import DesiredState, Device, OperatorToken, Package, Store
from tinymlops.monitor.reference import ReferenceProfile
from tinymlops.monitor.sketches import edges_digest

#: a device's cached verdict and packages (positive answers only: a package no longer assigned stays reportable for
#: at most this long); revocations and credential rotations do not wait for it (the epoch drops the caches)
AUTH_CACHE_TTL_S = 60.0
MAX_REPORT_AGE_S = 30 * 86400.0
MAX_CLOCK_SKEW_S = 300.0


class Service:
    """The state every route shares: store, telemetry writer, settings and the auth/package caches."""

    def __init__(self, st: Store, poll_interval_s: float, known_targets: set[str] | None,
                 bind_client_certs: bool = False) -> None:
        self.store = st
        self.bind_client_certs = bind_client_certs  # mutual TLS: the certificate must name the device
        self.writer = TelemetryWriter(st)
        self.lookup = DeviceLookup(st)
        self.poll_interval_s = poll_interval_s
        self.known_targets = known_targets
        # token hash -> (device, expiry): with several workers a revocation reaches the others within the TTL
        self.device_cache: dict[str, tuple[DeviceCtx | None, float]] = {}
        # token hash -> (role or None if unknown/revoked, token expiry or None, cache expiry)
        self.operator_cache: dict[str, tuple[str | None, float | None, float]] = {}
        self.package_cache: dict[str, PackageCtx] = {}
        # device id -> (package ids it may report for, expiry): positive answers only, a miss asks the database
        self.assigned_cache: dict[str, tuple[frozenset[str], float]] = {}
        self._epoch = self._epoch_seen = revocation.current(st)
        self.keyset_version = keyupdates.latest_version(st)
        self._stop = threading.Event()
        threading.Thread(target=self._watch_epoch, name="revocation-epoch", daemon=True).start()
        self.limiter = FailureLimiter()

    async def check_revocations(self) -> None:
        """Drop the auth caches if any worker revoked something (the epoch is read by a watcher thread)."""
        if self._epoch_seen != self._epoch:
            self.device_cache.clear()
            self.operator_cache.clear()
            self._epoch_seen = self._epoch

    def _watch_epoch(self) -> None:
        """Read the revocation epoch every EPOCH_CHECK_S (off the request path: no request waits for it)."""
        while not self._stop.wait(revocation.EPOCH_CHECK_S):
            try:
                self._epoch = revocation.current(self.store)
                self.keyset_version = keyupdates.latest_version(self.store)
            except Exception:  # the database is briefly unavailable: keep the last epoch, try again
                continue

    def current_keyset_version(self) -> int:
        """Return the latest key-set version (as of the last epoch read: within a second across workers)."""
        return self.keyset_version

    def close(self) -> None:
        """Stop the epoch watcher and the telemetry writer (pending telemetry is committed)."""
        self._stop.set()
        self.lookup.close()
        self.writer.close()

    # ---- auth -----------------------------------------------------------------------------------------------

    def _lookup_operator(self, token_hash: str) -> tuple[str | None, float | None]:
        with self.store.session() as s:
            row = s.get(OperatorToken, token_hash)
            return (None, None) if row is None or row.revoked else (row.role, row.expires_unix_s)

    async def authenticate_operator(self, authorization: str | None, client: str | None = None,
                                    needed: str = "admin") -> str:
        """Return the token's role: 401 without a token or with an expired one, 403 unless it is a live operator
        token whose role allows ``needed`` (429 after repeated failures)."""
        token = auth.bearer(authorization)
        h = auth.hash_token(token) if token else None
        if token is None or h is None:  # no guess made: not charged
            raise HTTPException(401, "operator token required (Authorization: Bearer tmo_op_...)")
        keys = (f"ip:{client or '?'}", f"tok:{h}")
        await self.check_revocations()
        now = time.monotonic()
        hit = self.operator_cache.get(h)
        if hit is not None and hit[2] > now:
            role, expires = hit[0], hit[1]
        else:
            role, expires = await run_in_threadpool(self._lookup_operator, h)
            if len(self.operator_cache) > 10_000:
                self.operator_cache.clear()
            self.operator_cache[h] = (role, expires, now + AUTH_CACHE_TTL_S)
        expired = expires is not None and expires <= time.time()
        if role is None or expired:
            self.limiter.fail(*keys)
            self.limiter.check(*keys)
            if expired:
                raise HTTPException(401, "operator token expired", headers={"WWW-Authenticate": "Bearer"})
            raise HTTPException(403, "not an operator token")
        if not auth.role_allows(role, needed):
            raise HTTPException(403, f"this operator token has role {role!r}; the request needs {needed!r}")
        return role

    async def _lookup_device(self, token_hash: str) -> Found:
        """Resolve a credential that missed the cache (batched with concurrent misses) and cache the answer."""
        epoch = self._epoch
        found = await self.lookup.find(token_hash)
        if self._epoch != epoch:  # a revocation landed meanwhile: the answer may predate it, do not keep it
            return found
        if found.replaced is not None:  # first use of a rotated credential: the old one stops working now
            self.device_cache.pop(found.replaced, None)
        if len(self.device_cache) > 200_000:
            self.device_cache.clear()
        # spread the expiries: devices that came online together must not all miss again in the same second; the
        # verdict and the device's packages expire together, so one batched lookup refreshes both
        expiry = time.monotonic() + AUTH_CACHE_TTL_S * random.uniform(0.5, 1.0)
        self.device_cache[token_hash] = (found.ctx, expiry)
        if found.ctx is not None:
            self._cache_assigned(found.ctx.id, found.assigned, expiry)
        return found

    async def authenticate_device(self, device_id: str, authorization: str | None, client: str | None = None,
                                  cert_ids: frozenset[str] = frozenset()) -> DeviceCtx:
        """Return the calling device (401/403 unless its credential is live and its own ``device_id``, and under
        certificate binding unless its client certificate names ``device_id``; 429 after repeated failures)."""
        self.check_cert(device_id, cert_ids)
        token = auth.bearer(authorization)
        h = auth.hash_token(token) if token else None
        if token is None or h is None:
            raise HTTPException(401, "device credential required (Authorization: Bearer tmo_dev_...)")
        await self.check_revocations()
        # the hot path (telemetry) stays on the event loop: a thread hop per request halves throughput
        hit = self.device_cache.get(h)
        ctx = hit[0] if hit is not None and hit[1] > time.monotonic() else (await self._lookup_device(h)).ctx
        if ctx is None or ctx.id != device_id:
            # only failures touch the limiter: a valid credential is never refused because its address (a NAT,
            # a gateway) is shared with a guesser
            keys = (f"ip:{client or '?'}", f"tok:{h}")
            self.limiter.fail(*keys)
            self.limiter.check(*keys)
            raise HTTPException(403, "unknown or revoked device credential" if ctx is None
                                else "a device may only access its own resources")
        return ctx

    def check_cert(self, device_id: str, cert_ids: frozenset[str]) -> None:
        """Under certificate binding, refuse (403) a request whose client certificate does not name the device."""
        if self.bind_client_certs and device_id not in cert_ids:
            raise HTTPException(403, f"the client certificate ({', '.join(sorted(cert_ids))[:200] or 'none'}) "
                                     f"is not device {device_id[:64]!r}'s")

    # ---- packages -------------------------------------------------------------------------------------------

    def package_ctx(self, package_id: str) -> PackageCtx | None:
        """Return what telemetry checks need of a package (cached: packages are immutable)."""
        if package_id in self.package_cache:
            return self.package_cache[package_id]
        with self.store.session() as s:
            p = s.get(Package, package_id)
            if p is None:
                return None
            ref = ReferenceProfile.model_validate(json.loads(p.manifest_json)["reference"])
        ctx = PackageCtx(package_id, p.model_name, p.model_version, p.target, edges_digest(ref),
                         tuple(len(f.inner_edges) + 1 for f in ref.features), len(ref.class_names),
                         len(ref.confidence_inner_edges) + 1, len(ref.features))
        self.package_cache[package_id] = ctx
        return ctx

    def allowed_package(self, ctx: DeviceCtx, package_id: str) -> Package:
        """Return a package the device may download: its desired or current one (403/404 otherwise)."""
        with self.store.session() as s:
            d = s.get(Device, ctx.id)
            ds = s.get(DesiredState, ctx.id)
            allowed = {ds.package_id if ds else None, d.current_package_id if d else None}
            if package_id not in allowed:
                raise HTTPException(403, "a device may only download its desired or current package")
            p = s.get(Package, package_id)
            if p is None:
                raise HTTPException(404, f"package {package_id!r} does not exist")
            return p

    # ---- telemetry ------------------------------------------------------------------------------------------

    async def ingest_telemetry(self, device_id: str, authorization: str | None, body: bytes,
                               client: str | None = None, cert_ids: frozenset[str] = frozenset()) -> None:
        """Authenticate, validate and commit one report (HTTPException says why not)."""
        ctx = await self.authenticate_device(device_id, authorization, client, cert_ids)
        # parsed by pydantic-core straight from bytes: several times faster than FastAPI's json + validate
        try:
            report = api.TelemetryReport.model_validate_json(body)
        except ValidationError as exc:
            raise HTTPException(422, exc.errors(include_url=False, include_context=False,
                                                include_input=False)) from None
        pkg = self._check_report(ctx, report)
        if not await self.may_report_for(ctx.id, pkg.id, authorization):
            raise HTTPException(403, f"device {ctx.id!r} does not run package {pkg.id!r}")
        now = time.time()
        sk = report.sketch
        await self.writer.write({
            "device_id": ctx.id, "seq": report.seq, "model_name": pkg.model_name,
            "model_version": pkg.model_version, "package_id": pkg.id, "target": ctx.target, "cohort": ctx.cohort,
            "window_start_unix_s": sk.window_start if sk.window_start is not None else now,
            "window_end_unix_s": sk.window_end if sk.window_end is not None else now,
            "received_unix_s": now, "n_inferences": sk.n_inferences, "sketch_json": sk.model_dump_json(),
            "samples_json": json.dumps(report.samples) if report.samples is not None else None,
            "feedback_json": json.dumps([f.model_dump() for f in report.feedback])
            if report.feedback is not None else None,
        })

    def _cache_assigned(self, device_id: str, allowed: frozenset[str], expiry: float) -> None:
        if len(self.assigned_cache) > 200_000:
            self.assigned_cache.clear()
        if allowed:  # positive answers only
            self.assigned_cache[device_id] = (allowed, expiry)

    async def may_report_for(self, device_id: str, package_id: str, authorization: str | None) -> bool:
        """Return whether the device runs, just ran, or is told to run the package (cached when it does; a miss
        asks the database through the batched credential lookup, which refreshes the device's whole entry)."""
        hit = self.assigned_cache.get(device_id)
        if hit is not None and hit[1] > time.monotonic() and package_id in hit[0]:
            return True
        found = await self._lookup_device(auth.hash_token(auth.bearer(authorization) or ""))
        return found.ctx is not None and found.ctx.id == device_id and package_id in found.assigned

    def _check_report(self, ctx: DeviceCtx, report: api.TelemetryReport) -> PackageCtx:
        """Return the report's package if the device may send this report (HTTPException 403/422 if not)."""
        if report.device_id is not None and report.device_id != ctx.id:
            raise HTTPException(403, "a device may only post its own telemetry")
        if report.samples is not None and not ctx.samples_opt_in:
            raise HTTPException(403, "this device has not opted in to sending input samples")
        if report.feedback is not None and not ctx.feedback_opt_in:
            raise HTTPException(403, "this device has not opted in to sending feedback")
        pkg = self.package_ctx(report.package_id)
        if pkg is None:
            raise HTTPException(422, f"package {report.package_id!r} does not exist")
        if pkg.target != ctx.target:
            raise HTTPException(422, f"package {pkg.id!r} is for {pkg.target}, this device is a {ctx.target}")
        problem = check_sketch(report.sketch, pkg)
        if problem:
            raise HTTPException(422, f"sketch rejected: {problem}")
        if report.samples is not None and any(len(x) != pkg.n_features for x in report.samples):
            raise HTTPException(422, f"each sample must have {pkg.n_features} feature values")
        now = time.time()
        times = [t for t in (report.sketch.window_start, report.sketch.window_end) if t is not None]
        times += [f.timestamp for f in report.feedback or ()]
        if times and (min(times) < now - MAX_REPORT_AGE_S or max(times) > now + MAX_CLOCK_SKEW_S):
            raise HTTPException(422, "window or feedback time is more than 30 days old or in the future")
        if any(f.label >= pkg.n_classes or f.prediction >= pkg.n_classes for f in report.feedback or ()):
            raise HTTPException(422, f"feedback label or prediction outside the model's {pkg.n_classes} classes")
        return pkg


# ---- dependencies ---------------------------------------------------------------------------------------------


def service(request: Request) -> Service:
    """Return the app's :class:`Service`."""
    svc: Service = request.app.state.service
    return svc


ServiceDep = Annotated[Service, Depends(service)]


async def operator(request: Request, svc: ServiceDep,
                   authorization: Annotated[str | None, Header()] = None) -> None:
    """Require an operator token whose role allows the request (:func:`tinymlops.fleet.auth.required_role`)."""
    await svc.authenticate_operator(authorization, request.client.host if request.client else None,
                                    auth.required_role(request.method, request.scope["path"]))


async def device(device_id: str, request: Request, svc: ServiceDep,
                 authorization: Annotated[str | None, Header()] = None) -> DeviceCtx:
    """Require the credential of the device named in the path (and its client certificate under binding)."""
    return await svc.authenticate_device(device_id, authorization, request.client.host if request.client else None,
                                         scope_identities(request.scope))


Operator = Depends(operator)
DeviceDep = Annotated[DeviceCtx, Depends(device)]

