"""Health route: liveness and the schema revision (no credential)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from tinymlops.fleet import store
from tinymlops.fleet.service.deps import ServiceDep

API_VERSION = "1"
router = APIRouter(tags=["meta"])


@router.get("/healthz")
def healthz(svc: ServiceDep) -> dict[str, Any]:
    """Report liveness and the schema revision."""
    return {"ok": True, "schema": store.schema_revision(svc.store.engine), "api": API_VERSION}
