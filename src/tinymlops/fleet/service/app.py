"""Fleet service: the FastAPI app over the fleet store, assembled from routers (health, operator, device).

The routers (``routes_health``, ``routes_operator``, ``routes_device``) share one :class:`~.deps.Service` per
app (store, group-commit telemetry writer, auth and package caches) through FastAPI dependencies (``deps``).
Telemetry is acknowledged only after it is committed; sketches are checked against the package's reference bins
and for internal consistency before they are accepted. ``POST /v1/devices/{id}/telemetry`` is also served by a
thin ASGI fast path running the same ingestion (see :class:`_TelemetryFastPath`).
"""

from __future__ import annotations

import gc
import json
import re
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from tinymlops.fleet import store
from tinymlops.fleet.certbind import scope_identities
from tinymlops.fleet.service import (
    routes_device,
    routes_field,
    routes_health,
    routes_licence,
    routes_operator,
)
from tinymlops.fleet.service.deps import Service
from tinymlops.fleet.service.routes_device import ACCEPTED_BODY
from tinymlops.fleet.service.routes_health import API_VERSION
from tinymlops.fleet.store import Store

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


#: the cyclic GC while serving. Every keep-alive connection holds its last request's objects until its next report
#: (seconds later), so under Python's default (700, 10, 10) nearly all of them get promoted and the old generation
#: fills fast: with 5,000 devices per worker a full collection stopped the event loop for 85-260 ms every 1-2 s
#: (benchmarks/fleet.py, P5). With a large young generation those objects die by reference counting before a
#: collection sees them: at 200,000 no collection ran in a 40 s measured window (at 20,000-50,000, young
#: collections of 20-60 ms every 10-20 s per worker still showed in the p99). Memory is not at stake: only cyclic
#: garbage waits longer to be freed.
GC_THRESHOLDS = (200_000, 10, 10)
#: how long a thread that wants the GIL waits for the busy event loop to yield it (Python's default: 5 ms). The
#: telemetry writer and credential lookup threads wait once per database round trip; at 5 ms the group commit's
#: p95 was 25 ms under load, at 1 ms about 10 ms.
GIL_SWITCH_S = 0.001

class _ServingRuntime:
    """Applies GC_THRESHOLDS and GIL_SWITCH_S while at least one service of this process serves (a process may run
    several, e.g. in tests); the last one to stop restores the process's own settings."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.before = (gc.get_threshold(), sys.getswitchinterval())  # replaced by the first service to start

    def __enter__(self) -> None:
        with self.lock:
            if self.count == 0:
                self.before = (gc.get_threshold(), sys.getswitchinterval())
                gc.set_threshold(*GC_THRESHOLDS)
                sys.setswitchinterval(GIL_SWITCH_S)
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.count -= 1
            if self.count == 0:
                gc.set_threshold(*self.before[0])
                sys.setswitchinterval(self.before[1])


_serving_runtime = _ServingRuntime()


ENROL_BODY_BYTES = 16 * 1024
EVENT_BODY_BYTES = 64 * 1024
TELEMETRY_BODY_BYTES = 8 * 1024 * 1024
OPERATOR_BODY_BYTES = 16 * 1024 * 1024


class _BodyLimit:
    """Bound every request body by counting the bytes as they arrive (413), whatever ``Content-Length`` says.

    A chunked upload declares no length, so the body is read here with a running count and replayed to the app
    only if it stayed under the limit of its endpoint; requests other than enrolment must carry a bearer token
    before a single body byte is read. (Telemetry is counted by the fast path itself.)
    """

    def __init__(self, app: Any, max_body_bytes: int, svc: Service) -> None:
        self.app, self.max, self.svc = app, max_body_bytes, svc

    def _limit(self, method: str, path: str) -> int:
        if path == "/v1/enrol":
            return ENROL_BODY_BYTES
        if method == "POST" and path == "/v1/packages":
            return self.max
        if path.startswith("/v1/devices/") and path.endswith("/events"):
            return EVENT_BODY_BYTES
        return min(self.max, OPERATOR_BODY_BYTES)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or (
                scope["method"] == "POST" and _TELEMETRY_PATH.match(scope["path"])):
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["method"], scope["path"])
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _send_json(send, 413, {"detail": f"request body larger than {limit} bytes"})
            return
        if scope["path"] != "/v1/enrol" and b"authorization" not in headers:
            await _send_json(send, 401, {"detail": "credential required (Authorization: Bearer ...)"})
            return
        if limit > OPERATOR_BODY_BYTES:  # only operators may send a package's worth: check before reading it
            client = scope.get("client")
            try:
                await self.svc.authenticate_operator(headers[b"authorization"].decode("latin-1"),
                                                     client[0] if client else None, "deploy")
            except HTTPException as exc:
                await _send_json(send, exc.status_code, {"detail": exc.detail}, exc.headers)
                return
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_json(send, 413, {"detail": f"request body larger than {limit} bytes"})
                return
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


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
        client = scope.get("client")
        try:
            await self.fastapi_app.state.service.ingest_telemetry(unquote(m.group(1)), auth_header, b"".join(chunks),
                                                                  client[0] if client else None,
                                                                  scope_identities(scope))
        except HTTPException as exc:
            await _send_json(send, exc.status_code, {"detail": exc.detail}, exc.headers)
            return
        await _send_raw(send, 202, ACCEPTED_BODY)


async def _send_raw(send: Any, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Any, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
    await _send_raw(send, status, json.dumps(payload, default=str).encode(), headers)


def create_app_from_env() -> FastAPI:
    """Build the app from ``TINYMLOPS_FLEET_*`` variables (uvicorn factory for multi-worker serving).

    The schema must already be migrated (``tinymlops fleet serve`` does it once before starting workers).
    """
    import os

    targets = os.environ.get("TINYMLOPS_FLEET_TARGETS")
    return create_app(st=Store(os.environ.get("TINYMLOPS_FLEET_DB") or None, migrate_schema=False),
                      poll_interval_s=float(os.environ.get("TINYMLOPS_FLEET_POLL_S", "5")),
                      known_targets=set(targets.split(",")) if targets else None,
                      dev_mode=os.environ.get("TINYMLOPS_FLEET_DEV") == "1",
                      bind_client_certs=os.environ.get("TINYMLOPS_FLEET_BIND_CERTS") == "1")


def create_app(url: str | None = None, st: Store | None = None, poll_interval_s: float = 5.0,
               known_targets: set[str] | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               dev_mode: bool = False, bind_client_certs: bool = False) -> FastAPI:
    """Build the service over a store (opened from ``url`` if not given; default :func:`settings.fleet_db_url`).

    Outside ``dev_mode`` there is no ``/docs`` page and ``/openapi.json`` needs an operator token.
    ``bind_client_certs`` (mutual TLS, served with :class:`~tinymlops.fleet.certbind.CertBindingProtocol`): a
    device's client certificate must name its device id.
    """
    svc = Service(st or store.open_store(url), poll_interval_s, known_targets, bind_client_certs)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        # everything imported and built so far lives as long as the server: keep it out of the cyclic GC's scans
        gc.collect()
        gc.freeze()
        with _serving_runtime:
            try:
                yield
            finally:
                svc.close()

    # FastAPI's built-in OpenTelemetry hooks cost a provider lookup per request; this service exports none
    docs = {} if dev_mode else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="tinymlops fleet service", version=API_VERSION, lifespan=lifespan, **docs,  # type: ignore[arg-type]
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="Devices enrol, pull their desired model package, and report privacy-preserving "
                              "telemetry sketches; operators manage packages, desired state and enrolment.")
    app.state.service = svc
    app.state.store = svc.store
    app.state.writer = svc.writer
    for router in (routes_health.router, routes_operator.router, routes_device.router, routes_licence.router,
                   routes_field.router):
        app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # never echo the input back: it may hold NaN/Infinity (not JSON) or megabytes of the attacker's body
        errors = [{"type": e.get("type"), "loc": [str(x)[:64] for x in e.get("loc", ())], "msg": str(e.get("msg"))}
                  for e in exc.errors()[:20]]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(IntegrityError)
    async def integrity(_request: Request, exc: IntegrityError) -> JSONResponse:
        return JSONResponse({"detail": f"conflicts with stored data: {str(exc.orig).splitlines()[0]}"},
                            status_code=409)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    if not dev_mode:
        from tinymlops.fleet.service.deps import Operator

        @app.get("/openapi.json", include_in_schema=False, dependencies=[Operator])
        def openapi_doc() -> dict[str, Any]:
            return app.openapi()

    app.add_middleware(_TelemetryFastPath, fastapi_app=app, max_body_bytes=min(max_body_bytes, TELEMETRY_BODY_BYTES))
    app.add_middleware(_BodyLimit, max_body_bytes=max_body_bytes, svc=svc)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """Return the OpenAPI document, with the telemetry body's schema (the route reads raw bytes) filled in."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        from tinymlops.fleet import api

        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema = api.TelemetryReport.model_json_schema(ref_template="#/components/schemas/{model}")
        comps = spec.setdefault("components", {}).setdefault("schemas", {})
        comps.update(schema.pop("$defs", {}))
        comps["TelemetryReport"] = schema
        app.openapi_schema = spec
    return app.openapi_schema


class BackgroundServer:
    """A fleet service on a loopback port in a background thread (demo, simulator, tests)."""

    def __init__(self, st: Store, host: str = "127.0.0.1", port: int = 0, ssl: dict[str, Any] | None = None,
                 **app_kwargs: Any) -> None:
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.store = st
        self.url = f"{'https' if ssl else 'http'}://{host}:{port}"
        self.app = create_app(st=st, **app_kwargs)
        extra: dict[str, Any] = {}
        if app_kwargs.get("bind_client_certs") and "http" not in (ssl or {}):
            from tinymlops.fleet.certbind import CertBindingProtocol

            extra["http"] = CertBindingProtocol
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level="warning",
                                                     access_log=False, lifespan="on", **(ssl or {}), **extra))
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
