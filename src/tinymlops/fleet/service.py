"""Fleet service: FastAPI app over the fleet store (devices, enrolment, packages, desired state, telemetry).

Two kinds of caller, two kinds of credential (``Authorization: Bearer ...``, only hashes stored):

* operators (``tmo_op_...``): enrolment tokens, packages, desired state, device list, telemetry and events;
* devices (``tmo_dev_...``, received once at enrolment with a one-time enrolment token): every device URL is
  ``/v1/devices/{device_id}/...`` and the id must be the credential's own, so a device reads only its own
  desired state, downloads only packages it is told to run, and posts only its own telemetry and events.

Telemetry is acknowledged only after it is committed: a writer thread commits queued reports in groups (one
transaction per batch), which is what lets one SQLite file ingest thousands of reports per second. Sketches are
checked against the package's reference bins and for internal consistency before they are accepted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import queue
import re
import threading
import time
from dataclasses import dataclass
from itertools import chain
from typing import Annotated, Any, cast
from urllib.parse import unquote

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import Table, func, select, update
from sqlalchemy.exc import IntegrityError
from starlette.requests import ClientDisconnect

from tinymlops.fleet import api, auth, store
from tinymlops.fleet.store import (
    CohortDesiredState,
    DeploymentEvent,
    Device,
    EnrolmentToken,
    OperatorToken,
    Package,
    Store,
    Telemetry,
)
from tinymlops.monitor.reference import ReferenceProfile
from tinymlops.monitor.sketches import LATENCY_EDGES_MS, Sketch, edges_digest, merge_all

API_VERSION = "1"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
ACCEPTED_BODY = b'{"accepted":true}'
AUTH_CACHE_TTL_S = 30.0


# --------------------------------------------------------------------------------------------------------------
# operator tokens (bootstrap)
# --------------------------------------------------------------------------------------------------------------


def create_operator_token(st: Store, name: str = "operator") -> str:
    """Create an operator token and return it (only its hash is stored)."""
    token = auth.new_token(auth.OPERATOR_PREFIX)
    with st.session() as s:
        s.add(OperatorToken(token_hash=auth.hash_token(token), name=name, created_unix_s=time.time(),
                            revoked=False))
    return token


def has_operator_token(st: Store) -> bool:
    """Return whether any live operator token exists."""
    with st.session() as s:
        return bool(s.scalar(select(func.count()).select_from(OperatorToken).where(OperatorToken.revoked.is_(False))))


# --------------------------------------------------------------------------------------------------------------
# caches and the group-commit writer
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceCtx:
    id: str
    target: str
    cohort: str
    samples_opt_in: bool
    feedback_opt_in: bool


@dataclass(frozen=True)
class PackageCtx:
    id: str
    model_name: str
    model_version: str
    target: str
    digest: str
    feature_bins: tuple[int, ...]
    n_classes: int
    confidence_bins: int
    n_features: int


class TelemetryWriter:
    """Commits queued telemetry rows and last-seen updates in batches; resolves each report once committed."""

    def __init__(self, st: Store, max_batch: int = 1000, linger_s: float = 0.003) -> None:
        self.store = st
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="telemetry-writer", daemon=True)
        self._thread.start()

    async def write(self, row: dict[str, Any]) -> None:
        """Queue a telemetry row and wait until it is committed (raises what the commit raised)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((row, loop, fut))
        await fut

    def seen(self, device_id: str, at_unix_s: float) -> None:
        """Record that a device called in (no need to wait for it)."""
        self._q.put(((device_id, at_unix_s), None, None))

    def close(self) -> None:
        """Drain the queue and stop the thread."""
        self._q.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._q.get()
            if item is None:
                break
            batch = [item]
            # linger briefly so a burst shares one transaction: fewer, larger commits cost far less CPU
            deadline = time.monotonic() + self.linger_s
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            error: BaseException | None = None
            try:
                self._commit(batch)
            except Exception as exc:  # reported to every waiting request, the writer keeps going
                error = exc
            # one wake-up per event loop and batch, not per report (each is a syscall on the loop's self-pipe)
            by_loop: dict[Any, list[asyncio.Future[None]]] = {}
            for _payload, loop, fut in batch:
                if fut is not None:
                    by_loop.setdefault(loop, []).append(fut)
            for loop, futs in by_loop.items():
                loop.call_soon_threadsafe(_resolve_all, futs, error)

    def _commit(self, batch: list[Any]) -> None:
        rows = [p for p, _l, f in batch if f is not None]
        seen: dict[str, float] = {}
        for p, _l, f in batch:
            did, ts = (p["device_id"], p["received_unix_s"]) if f is not None else p
            seen[did] = max(ts, seen.get(did, 0.0))
        with self.store.engine.begin() as conn:
            if rows:
                conn.execute(_insert_ignore(conn.dialect.name), rows)
            dev = cast("Table", Device.__table__)
            from sqlalchemy import bindparam

            conn.execute(update(dev).where(dev.c.id == bindparam("did")).values(
                last_seen_unix_s=bindparam("ts")), [{"did": d, "ts": t} for d, t in seen.items()])


def _resolve_all(futs: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in futs:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


def _insert_ignore(dialect: str) -> Any:
    """Return an INSERT into telemetry that skips a repeated (device_id, seq) (retries are idempotent)."""
    table = cast("Table", Telemetry.__table__)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=["device_id", "seq"])
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=["device_id", "seq"])
    return table.insert()


def check_sketch(sk: Sketch, pkg: PackageCtx) -> str | None:
    """Return why a sketch cannot be accepted for a package (None if it is consistent)."""
    n = sk.n_inferences
    if sk.edges_digest != pkg.digest:
        return f"sketch bins {sk.edges_digest!r} differ from the package's reference bins {pkg.digest!r}"
    if len(sk.feature_counts) != pkg.n_features or len(sk.nonfinite_counts) != pkg.n_features:
        return f"sketch has {len(sk.feature_counts)} features, the package has {pkg.n_features}"
    if tuple(map(len, sk.feature_counts)) != pkg.feature_bins:
        return "feature histograms do not have the reference's number of bins"
    if len(sk.prediction_counts) != pkg.n_classes or len(sk.confidence_counts) != pkg.confidence_bins:
        return "prediction or confidence histogram has the wrong length"
    if len(sk.latency_counts) != len(LATENCY_EDGES_MS) + 1:
        return "latency histogram has the wrong length"
    lists = [*sk.feature_counts, sk.nonfinite_counts, sk.prediction_counts, sk.confidence_counts,
             sk.latency_counts]
    # one flat pass in C (chain, min, max): this check runs on every report
    flat = [n, sk.errors, sk.rejections, sk.peak_memory_bytes, *chain.from_iterable(lists)]
    if min(flat) < 0:
        return "counts must not be negative"
    if max(flat) > 2**53:
        return "counts out of range"
    if list(map(sum, sk.feature_counts)) != [n - nf for nf in sk.nonfinite_counts]:
        return "each feature histogram (plus non-finite count) must sum to n_inferences"
    if sum(sk.prediction_counts) != n or sum(sk.confidence_counts) != n or sum(sk.latency_counts) != n:
        return "prediction, confidence and latency histograms must sum to n_inferences"
    floats = [sk.latency_max_ms, sk.energy_uj_total, sk.window_start or 0.0, sk.window_end or 0.0]
    if any(not (abs(f) < 1e15) for f in floats) or sk.latency_max_ms < 0 or sk.energy_uj_total < 0:
        return "latency, energy and window times must be finite and non-negative"
    if (sk.window_start is None) != (sk.window_end is None):
        return "window_start and window_end go together"
    if sk.window_start is not None and sk.window_end is not None and sk.window_start > sk.window_end:
        return "window_start is after window_end"
    return None


# --------------------------------------------------------------------------------------------------------------
# app factory
# --------------------------------------------------------------------------------------------------------------


class _BodyLimit:
    """Refuse requests whose declared body is larger than the limit (413) before reading them."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app, self.max = app, max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for k, v in scope.get("headers", []):
                if k == b"content-length" and (not v.isdigit() or int(v) > self.max):
                    resp = JSONResponse({"detail": f"request body larger than {self.max} bytes"}, status_code=413)
                    await resp(scope, receive, send)
                    return
        await self.app(scope, receive, send)


_TELEMETRY_PATH = re.compile(r"^/v1/devices/([^/]+)/telemetry$")


class _TelemetryFastPath:
    """Serve ``POST /v1/devices/{id}/telemetry`` without the framework's routing and dependency machinery.

    The same ``ingest_telemetry`` runs as in the documented FastAPI route; skipping Starlette/FastAPI request
    handling roughly halves the CPU per report on the ingestion hot path (benchmarks/fleet.py, P5).
    """

    def __init__(self, app: Any, fastapi_app: FastAPI, max_body_bytes: int) -> None:
        self.app, self.fastapi_app, self.max = app, fastapi_app, max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        m = _TELEMETRY_PATH.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if m is None:
            await self.app(scope, receive, send)
            return
        auth_header = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth_header = v.decode("latin-1")
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return  # the device went away mid-upload: nothing to answer
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max:
                await _send_json(send, 413, {"detail": f"request body larger than {self.max} bytes"})
                return
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        try:
            await self.fastapi_app.state.ingest_telemetry(unquote(m.group(1)), auth_header, b"".join(chunks))
        except HTTPException as exc:
            await _send_json(send, exc.status_code, {"detail": exc.detail})
            return
        await _send_raw(send, 202, ACCEPTED_BODY)


async def _send_raw(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Any, status: int, payload: Any) -> None:
    await _send_raw(send, status, json.dumps(payload, default=str).encode())


def create_app_from_env() -> FastAPI:
    """Build the app from ``TINYMLOPS_FLEET_*`` variables (uvicorn factory for multi-worker serving).

    The schema must already be migrated (``tinymlops fleet serve`` does it once before starting workers).
    """
    import os

    targets = os.environ.get("TINYMLOPS_FLEET_TARGETS")
    return create_app(st=Store(os.environ.get("TINYMLOPS_FLEET_DB") or None, migrate_schema=False),
                      poll_interval_s=float(os.environ.get("TINYMLOPS_FLEET_POLL_S", "5")),
                      known_targets=set(targets.split(",")) if targets else None)


def create_app(url: str | None = None, st: Store | None = None, poll_interval_s: float = 5.0,
               known_targets: set[str] | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """Build the service over a store (opened from ``url`` if not given; default SQLite in the home)."""
    st = st or store.open_store(url)
    writer = TelemetryWriter(st)
    # token hash -> (device, expiry): with several workers a revocation reaches the others within the TTL
    device_cache: dict[str, tuple[DeviceCtx | None, float]] = {}
    operator_cache: dict[str, tuple[bool, float]] = {}  # token hash -> (valid, expiry)
    package_cache: dict[str, PackageCtx] = {}

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        import gc

        # everything imported and built so far lives as long as the server: keep it out of the cyclic GC's
        # scans, whose full collections otherwise show up as latency spikes under load
        gc.collect()
        gc.freeze()
        yield
        writer.close()

    # FastAPI's built-in OpenTelemetry hooks cost a provider lookup per request; this service exports none
    app = FastAPI(title="tinymlops fleet service", version=API_VERSION, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="Devices enrol, pull their desired model package, and report privacy-preserving "
                              "telemetry sketches; operators manage packages, desired state and enrolment.")
    app.state.store = st
    app.state.writer = writer

    # ---- auth dependencies ----------------------------------------------------------------------------------

    def lookup_operator(token_hash: str) -> bool:
        with st.session() as s:
            row = s.get(OperatorToken, token_hash)
            return row is not None and not row.revoked

    async def operator(authorization: Annotated[str | None, Header()] = None) -> None:
        token = auth.bearer(authorization)
        if token is None:
            raise HTTPException(401, "operator token required (Authorization: Bearer tmo_op_...)")
        h = auth.hash_token(token)
        hit = operator_cache.get(h)
        if hit is not None and hit[1] > time.monotonic():
            ok = hit[0]
        else:
            ok = await run_in_threadpool(lookup_operator, h)
            if len(operator_cache) > 10_000:
                operator_cache.clear()
            operator_cache[h] = (ok, time.monotonic() + AUTH_CACHE_TTL_S)
        if not ok:
            raise HTTPException(403, "not an operator token")

    def lookup_device(token_hash: str) -> DeviceCtx | None:
        with st.session() as s:
            d = s.scalar(select(Device).where(Device.credential_hash == token_hash))
            ctx = None if d is None or d.revoked else DeviceCtx(d.id, d.target, d.cohort, d.samples_opt_in,
                                                                d.feedback_opt_in)
        if len(device_cache) > 200_000:
            device_cache.clear()
        device_cache[token_hash] = (ctx, time.monotonic() + AUTH_CACHE_TTL_S)
        return ctx

    async def device(device_id: str, authorization: Annotated[str | None, Header()] = None) -> DeviceCtx:
        token = auth.bearer(authorization)
        if token is None:
            raise HTTPException(401, "device credential required (Authorization: Bearer tmo_dev_...)")
        h = auth.hash_token(token)
        # the hot path (telemetry) stays on the event loop: a thread hop per request halves throughput
        hit = device_cache.get(h)
        ctx = hit[0] if hit is not None and hit[1] > time.monotonic() else await run_in_threadpool(lookup_device, h)
        if ctx is None:
            raise HTTPException(403, "unknown or revoked device credential")
        if ctx.id != device_id:
            raise HTTPException(403, "a device may only access its own resources")
        return ctx

    def package_ctx(package_id: str) -> PackageCtx | None:
        if package_id in package_cache:
            return package_cache[package_id]
        with st.session() as s:
            p = s.get(Package, package_id)
            if p is None:
                return None
            ref = ReferenceProfile.model_validate(json.loads(p.manifest_json)["reference"])
        ctx = PackageCtx(package_id, p.model_name, p.model_version, p.target, edges_digest(ref),
                         tuple(len(f.inner_edges) + 1 for f in ref.features), len(ref.class_names),
                         len(ref.confidence_inner_edges) + 1, len(ref.features))
        package_cache[package_id] = ctx
        return ctx

    Operator = Depends(operator)

    # ---- health ---------------------------------------------------------------------------------------------

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, Any]:
        """Report liveness and the schema revision."""
        return {"ok": True, "schema": store.schema_revision(st.engine), "api": API_VERSION}

    # ---- operators ------------------------------------------------------------------------------------------

    @app.post("/v1/enrolment-tokens", tags=["operator"], status_code=201, dependencies=[Operator])
    def create_enrolment_tokens(req: api.EnrolmentTokenRequest) -> api.EnrolmentTokens:
        """Create one-time enrolment tokens for a cohort."""
        now = time.time()
        tokens = [auth.new_token(auth.ENROLMENT_PREFIX) for _ in range(req.count)]
        with st.session() as s:
            s.add_all([EnrolmentToken(token_hash=auth.hash_token(t), cohort=req.cohort, labels=req.labels,
                                      samples_opt_in=req.samples_opt_in, feedback_opt_in=req.feedback_opt_in,
                                      created_unix_s=now, expires_unix_s=now + req.ttl_s) for t in tokens])
        return api.EnrolmentTokens(tokens=tokens, cohort=req.cohort, expires_unix_s=now + req.ttl_s)

    @app.get("/v1/devices", tags=["operator"], dependencies=[Operator])
    def devices(cohort: Annotated[str | None, Query(max_length=64)] = None,
                target: Annotated[str | None, Query(max_length=64)] = None) -> list[api.DeviceOut]:
        """List devices with current/previous/desired package and last seen."""
        return [api.DeviceOut(**d.as_dict()) for d in store.list_devices(st, cohort, target)]

    @app.get("/v1/devices/{device_id}", tags=["operator"], dependencies=[Operator])
    def get_device(device_id: str) -> api.DeviceOut:
        """Return one device."""
        d = store.get_device(st, device_id)
        if d is None:
            raise HTTPException(404, f"device {device_id!r} does not exist")
        return api.DeviceOut(**d.as_dict())

    @app.post("/v1/devices/{device_id}/revoke", tags=["operator"], dependencies=[Operator])
    def revoke_device(device_id: str) -> api.DeviceOut:
        """Revoke a device's credential (it can no longer call in)."""
        with st.session() as s:
            d = s.get(Device, device_id)
            if d is None:
                raise HTTPException(404, f"device {device_id!r} does not exist")
            d.revoked = True
            device_cache.pop(d.credential_hash, None)  # other workers notice within AUTH_CACHE_TTL_S
        return get_device(device_id)

    @app.post("/v1/packages", tags=["operator"], status_code=201, dependencies=[Operator])
    def upload_package(req: api.PackageUpload) -> api.PackageInfo:
        """Store a signed package (devices verify the signature; the service only relays it)."""
        try:
            manifest = json.loads(req.manifest_json)
            artifact = base64.b64decode(req.artifact_b64, validate=True)
            base64.b64decode(req.signature_b64, validate=True)
        except (ValueError, binascii.Error) as exc:
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
        with st.session() as s:
            existing = s.get(Package, pid)
            if existing is None:
                s.add(Package(id=pid, model_name=fields["model_name"], model_version=fields["model_version"],
                              variant=variant, format=fields["format"], target=fields["target"],
                              sha256=fields["sha256"], size_bytes=len(artifact), manifest_json=req.manifest_json,
                              signature_b64=req.signature_b64, key_id=key_id, artifact=artifact,
                              created_unix_s=time.time()))
        info = store.get_package_row(st, pid)
        return api.PackageInfo(**info)  # type: ignore[arg-type]

    @app.get("/v1/packages", tags=["operator"], dependencies=[Operator])
    def list_packages(model_name: Annotated[str | None, Query(max_length=128)] = None) -> list[api.PackageInfo]:
        """List stored packages (metadata only)."""
        q = select(Package.id)
        if model_name is not None:
            q = q.where(Package.model_name == model_name)
        with st.session() as s:
            ids = list(s.scalars(q.order_by(Package.created_unix_s)))
        return [api.PackageInfo(**store.get_package_row(st, i)) for i in ids]  # type: ignore[arg-type]

    @app.put("/v1/desired-state", tags=["operator"], dependencies=[Operator])
    def set_desired_state(req: api.DesiredStateRequest) -> api.DesiredStateUpdated:
        """Set the package that devices (by id) and/or a cohort should run."""
        if not req.device_ids and req.cohort is None:
            raise HTTPException(422, "give device_ids, a cohort, or both")
        try:
            updated = store.set_desired(st, req.package_id, req.device_ids, req.cohort, req.reason)
        except LookupError as exc:
            raise HTTPException(404 if "does not exist" in str(exc) else 409, str(exc)) from None
        return api.DesiredStateUpdated(updated=updated)

    @app.get("/v1/telemetry", tags=["operator"], dependencies=[Operator])
    def telemetry(model_name: Annotated[str, Query(max_length=128)],
                  version: Annotated[str | None, Query(max_length=32)] = None,
                  target: Annotated[str | None, Query(max_length=64)] = None,
                  cohort: Annotated[str | None, Query(max_length=64)] = None,
                  device_id: Annotated[str | None, Query(max_length=64)] = None,
                  since: Annotated[float | None, Query(allow_inf_nan=False)] = None,
                  until: Annotated[float | None, Query(allow_inf_nan=False)] = None,
                  limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> list[api.TelemetryOut]:
        """Return telemetry reports (sketches, and samples/feedback where devices opted in), oldest first."""
        recs = store.telemetry_window(st, model_name, version, target, cohort, since, until, device_id)
        return [api.TelemetryOut(**r.__dict__) for r in recs[-limit:]]

    @app.get("/v1/telemetry/merged", tags=["operator"], dependencies=[Operator])
    def telemetry_merged(model_name: Annotated[str, Query(max_length=128)],
                         version: Annotated[str | None, Query(max_length=32)] = None,
                         target: Annotated[str | None, Query(max_length=64)] = None,
                         cohort: Annotated[str | None, Query(max_length=64)] = None,
                         since: Annotated[float | None, Query(allow_inf_nan=False)] = None,
                         until: Annotated[float | None, Query(allow_inf_nan=False)] = None) -> api.MergedTelemetry:
        """Merge the sketches of a window exactly (one version at a time: bins differ between versions)."""
        recs = store.telemetry_window(st, model_name, version, target, cohort, since, until)
        digests = {r.sketch.edges_digest for r in recs}
        if len(digests) > 1:
            raise HTTPException(409, "reports span versions with different bins; pass version=")
        merged = merge_all([r.sketch for r in recs])
        return api.MergedTelemetry(
            reports=len(recs), devices=len({r.device_id for r in recs}), sketch=merged,
            latency_p50_ms=merged.latency_quantile_ms(0.5) if merged else None,
            latency_p95_ms=merged.latency_quantile_ms(0.95) if merged else None)

    @app.get("/v1/events", tags=["operator"], dependencies=[Operator])
    def events(since: Annotated[float | None, Query(allow_inf_nan=False)] = None,
               device_id: Annotated[str | None, Query(max_length=64)] = None,
               package_id: Annotated[str | None, Query(max_length=128)] = None) -> list[api.EventOut]:
        """Return deployment events (installed, rejected, rolled_back, load_failed), oldest first."""
        return [api.EventOut(**e) for e in store.deployment_events(st, since, device_id, package_id)]

    # ---- devices --------------------------------------------------------------------------------------------

    @app.post("/v1/enrol", tags=["device"], status_code=201)
    def enrol(req: api.EnrolRequest) -> api.EnrolResponse:
        """Exchange a one-time enrolment token for this device's own credential."""
        if known_targets is not None and req.target not in known_targets:
            raise HTTPException(422, f"unknown target {req.target!r}; known: {sorted(known_targets)}")
        now = time.time()
        h = auth.hash_token(req.enrolment_token)
        credential = auth.new_token(auth.DEVICE_PREFIX)
        with st.session() as s:
            tok = s.get(EnrolmentToken, h)
            if tok is None or tok.used_unix_s is not None or tok.expires_unix_s < now:
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
            cohort, samples, feedback = tok.cohort, tok.samples_opt_in, tok.feedback_opt_in
            s.flush()
            cd = s.get(CohortDesiredState, cohort)
            cd_pkg = s.get(Package, cd.package_id) if cd else None
            cd_target = cd_pkg.target if cd_pkg else None
        if cd is not None and cd_target == req.target:
            store.set_desired(st, cd.package_id, [req.device_id], reason=f"cohort {cohort}: {cd.reason}")
        return api.EnrolResponse(device_id=req.device_id, credential=credential, target=req.target,
                                 cohort=cohort, samples_opt_in=samples, feedback_opt_in=feedback)

    @app.get("/v1/devices/{device_id}/desired-state", tags=["device"])
    def desired_state(ctx: DeviceCtx = Depends(device)) -> api.DesiredState:
        """Return the package this device should run (package_id null: keep what you have)."""
        writer.seen(ctx.id, time.time())
        with st.session() as s:
            row = s.execute(select(Package.id, Package.model_name, Package.model_version, Package.sha256,
                                   Package.size_bytes)
                            .join(store.DesiredState, store.DesiredState.package_id == Package.id)
                            .where(store.DesiredState.device_id == ctx.id)).first()
        if row is None:
            return api.DesiredState(device_id=ctx.id, poll_interval_s=poll_interval_s)
        return api.DesiredState(device_id=ctx.id, package_id=row[0], model_name=row[1], model_version=row[2],
                                sha256=row[3], size_bytes=row[4], poll_interval_s=poll_interval_s)

    def allowed_package(ctx: DeviceCtx, package_id: str) -> Package:
        with st.session() as s:
            d = s.get(Device, ctx.id)
            ds = s.get(store.DesiredState, ctx.id)
            allowed = {ds.package_id if ds else None, d.current_package_id if d else None}
            if package_id not in allowed:
                raise HTTPException(403, "a device may only download its desired or current package")
            p = s.get(Package, package_id)
            if p is None:
                raise HTTPException(404, f"package {package_id!r} does not exist")
            return p

    @app.get("/v1/devices/{device_id}/packages/{package_id}", tags=["device"])
    def package_manifest(package_id: str, ctx: DeviceCtx = Depends(device)) -> api.SignedManifest:
        """Return a package's signed manifest (exact bytes) and signature."""
        p = allowed_package(ctx, package_id)
        return api.SignedManifest(package_id=p.id, manifest_json=p.manifest_json, signature_b64=p.signature_b64,
                                  key_id=p.key_id)

    @app.get("/v1/devices/{device_id}/packages/{package_id}/artifact", tags=["device"],
             response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
    def package_artifact(package_id: str, ctx: DeviceCtx = Depends(device)) -> Response:
        """Download a package's model file."""
        p = allowed_package(ctx, package_id)
        return Response(p.artifact, media_type="application/octet-stream",
                        headers={"X-Content-SHA256": p.sha256})

    @app.post("/v1/devices/{device_id}/telemetry", tags=["device"], status_code=202, response_model=api.Accepted,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/TelemetryReport"}}}},
                  "parameters": [{"name": "authorization", "in": "header", "required": False,
                                  "schema": {"type": "string"}, "description": "Bearer tmo_dev_..."}]})
    async def post_telemetry(device_id: str, request: Request) -> Response:
        """Accept one telemetry window; acknowledged only once committed (repeated seq is ignored)."""
        try:
            body = await request.body()
        except ClientDisconnect:  # the device went away mid-upload (crash, power loss): nothing to answer
            return Response(status_code=400)
        await ingest_telemetry(device_id, request.headers.get("authorization"), body)
        return Response(ACCEPTED_BODY, status_code=202, media_type="application/json")

    async def ingest_telemetry(device_id: str, authorization: str | None, body: bytes) -> None:
        """Authenticate, validate and commit one report (HTTPException says why not)."""
        ctx = await device(device_id, authorization)
        # parsed by pydantic-core straight from bytes: several times faster than FastAPI's json + validate
        try:
            report = api.TelemetryReport.model_validate_json(body)
        except ValidationError as exc:
            raise HTTPException(422, exc.errors(include_url=False, include_context=False,
                                                include_input=False)) from None
        if report.device_id is not None and report.device_id != ctx.id:
            raise HTTPException(403, "a device may only post its own telemetry")
        if report.samples is not None and not ctx.samples_opt_in:
            raise HTTPException(403, "this device has not opted in to sending input samples")
        if report.feedback is not None and not ctx.feedback_opt_in:
            raise HTTPException(403, "this device has not opted in to sending feedback")
        pkg = package_ctx(report.package_id)
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
        sk = report.sketch
        await writer.write({
            "device_id": ctx.id, "seq": report.seq, "model_name": pkg.model_name,
            "model_version": pkg.model_version, "package_id": pkg.id, "target": ctx.target, "cohort": ctx.cohort,
            "window_start_unix_s": sk.window_start if sk.window_start is not None else now,
            "window_end_unix_s": sk.window_end if sk.window_end is not None else now,
            "received_unix_s": now, "n_inferences": sk.n_inferences, "sketch_json": sk.model_dump_json(),
            "samples_json": json.dumps(report.samples) if report.samples is not None else None,
            "feedback_json": json.dumps([f.model_dump() for f in report.feedback])
            if report.feedback is not None else None,
        })

    app.state.ingest_telemetry = ingest_telemetry

    @app.post("/v1/devices/{device_id}/events", tags=["device"], status_code=201)
    def post_event(ev: api.DeploymentEventReport, ctx: DeviceCtx = Depends(device)) -> api.Accepted:
        """Record an install success, a rejection (with reason), a rollback or a load failure."""
        now = time.time()
        with st.session() as s:
            s.add(DeploymentEvent(device_id=ctx.id, kind=ev.kind, package_id=ev.package_id,
                                  model_version=ev.model_version, reason=ev.reason, at_unix_s=now))
            if ev.kind in ("installed", "rolled_back") and ev.package_id:
                p = s.get(Package, ev.package_id)
                if p is None:
                    raise HTTPException(422, f"package {ev.package_id!r} does not exist")
                d = s.get(Device, ctx.id)
                if d is not None and d.current_package_id != p.id:
                    d.previous_package_id, d.previous_version = d.current_package_id, d.current_version
                    d.current_package_id, d.current_version = p.id, p.model_version
            s.execute(update(Device).where(Device.id == ctx.id).values(last_seen_unix_s=now))
        return api.Accepted()

    @app.exception_handler(IntegrityError)
    async def integrity(_request: Request, exc: IntegrityError) -> JSONResponse:
        return JSONResponse({"detail": f"conflicts with stored data: {str(exc.orig).splitlines()[0]}"},
                            status_code=409)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes)
            schema = api.TelemetryReport.model_json_schema(ref_template="#/components/schemas/{model}")
            comps = spec.setdefault("components", {}).setdefault("schemas", {})
            comps.update(schema.pop("$defs", {}))
            comps["TelemetryReport"] = schema
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_TelemetryFastPath, fastapi_app=app, max_body_bytes=max_body_bytes)
    app.add_middleware(_BodyLimit, max_body_bytes=max_body_bytes)
    return app


class BackgroundServer:
    """A fleet service on a loopback port in a background thread (demo, simulator, tests)."""

    def __init__(self, st: Store, host: str = "127.0.0.1", port: int = 0, **app_kwargs: Any) -> None:
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.store = st
        self.url = f"http://{host}:{port}"
        self.app = create_app(st=st, **app_kwargs)
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level="warning",
                                                     access_log=False, lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, name=f"fleet-service-{port}", daemon=True)

    def start(self, timeout_s: float = 20.0) -> BackgroundServer:
        """Start serving and wait until the port accepts requests."""
        self._thread.start()
        t_end = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > t_end or not self._thread.is_alive():
                raise RuntimeError(f"fleet service did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving (pending telemetry is committed first)."""
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
