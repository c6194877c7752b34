"""Fleet service: FastAPI app over the fleet store (devices, enrolment, packages, desired state, telemetry).

``create_app`` assembles the health, operator and device routers (``routes_*.py``) around one shared
:class:`~tinymlops.fleet.service.deps.Service`; ``BackgroundServer`` runs it in a thread (tests, benchmarks).
"""

from tinymlops.fleet.service.app import (
    DEFAULT_MAX_BODY_BYTES,
    BackgroundServer,
    create_app,
    create_app_from_env,
)
from tinymlops.fleet.service.context import (
    DeviceCtx,
    PackageCtx,
    check_sketch,
    create_operator_token,
    has_operator_token,
)
from tinymlops.fleet.service.deps import AUTH_CACHE_TTL_S, Service
from tinymlops.fleet.service.routes_device import ACCEPTED_BODY
from tinymlops.fleet.service.routes_health import API_VERSION
from tinymlops.fleet.service.writer import TelemetryWriter

__all__ = ["ACCEPTED_BODY", "API_VERSION", "AUTH_CACHE_TTL_S", "DEFAULT_MAX_BODY_BYTES", "BackgroundServer",
           "DeviceCtx", "PackageCtx", "Service", "TelemetryWriter", "check_sketch", "create_app",
           "create_app_from_env", "create_operator_token", "has_operator_token"]
