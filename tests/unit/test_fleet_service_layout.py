"""The fleet service is assembled from routers (health, operator, device) with shared dependencies.

Same routes as the single ``create_app`` function it replaced; every file of the fleet and simulation packages
stays small enough to read (< 450 lines, functions < 80 lines).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tinymlops.fleet import service, store
from tinymlops.fleet.service import (
    routes_device,
    routes_field,
    routes_health,
    routes_licence,
    routes_operator,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "tinymlops"
ROUTES = {
    ("GET", "/healthz"): "meta",
    ("POST", "/v1/enrolment-tokens"): "operator", ("GET", "/v1/devices"): "operator",
    ("GET", "/v1/devices/{device_id}"): "operator", ("POST", "/v1/devices/{device_id}/revoke"): "operator",
    ("POST", "/v1/packages"): "operator", ("GET", "/v1/packages"): "operator",
    ("PUT", "/v1/desired-state"): "operator", ("GET", "/v1/telemetry"): "operator",
    ("GET", "/v1/telemetry/merged"): "operator", ("GET", "/v1/events"): "operator",
    ("GET", "/v1/device-keys"): "operator", ("PUT", "/v1/packages/{package_id}/keys"): "operator",
    ("POST", "/v1/enrol"): "device", ("GET", "/v1/devices/{device_id}/desired-state"): "device",
    ("GET", "/v1/devices/{device_id}/packages/{package_id}"): "device",
    ("GET", "/v1/devices/{device_id}/packages/{package_id}/artifact"): "device",
    ("POST", "/v1/devices/{device_id}/telemetry"): "device", ("POST", "/v1/devices/{device_id}/events"): "device",
    ("POST", "/v1/key-updates"): "operator", ("GET", "/v1/key-updates"): "operator",
    ("PUT", "/v1/cohorts/{cohort}/personalise"): "operator", ("GET", "/v1/cohorts/personalise"): "operator",
    ("GET", "/v1/devices/{device_id}/key-updates"): "device", ("POST", "/v1/devices/{device_id}/credential"): "device",
    ("PUT", "/v1/devices/{device_id}/licence-key"): "licensing", ("GET", "/v1/devices/{device_id}/licences"): "licensing",
    ("POST", "/v1/devices/{device_id}/receipts"): "licensing", ("POST", "/v1/licences"): "licensing",
    ("GET", "/v1/licences"): "licensing", ("GET", "/v1/licence-devices/{device_id}"): "licensing",
    ("GET", "/v1/licence-findings"): "licensing", ("GET", "/v1/licence-report"): "licensing",
    ("GET", "/v1/devices/{device_id}/field-consent"): "field data",
    ("POST", "/v1/devices/{device_id}/field-samples"): "field data",
    ("PUT", "/v1/field-policy"): "field data", ("GET", "/v1/field-policy"): "field data",
    ("PUT", "/v1/devices/{device_id}/field-consent"): "field data", ("GET", "/v1/field-consents"): "field data",
    ("DELETE", "/v1/devices/{device_id}/field-samples"): "field data", ("GET", "/v1/field-forgets"): "field data",
    ("GET", "/v1/field-batches"): "field data",
}
MODULE = {"meta": routes_health, "operator": routes_operator, "device": routes_device, "licensing": routes_licence,
          "field data": routes_field}


def test_every_route_comes_from_its_router(tmp_path: Path) -> None:
    found = {}
    for tag, module in MODULE.items():
        for r in module.router.routes:
            for m in r.methods - {"HEAD"}:
                found[(m, r.path)] = tag
            assert r.endpoint.__module__ == module.__name__
    assert found == ROUTES
    app = service.create_app(st=store.open_store(f"sqlite:///{tmp_path / 'f.db'}"))
    served = {(m.upper(), path): op["tags"][0] for path, ops in app.openapi()["paths"].items()
              for m, op in ops.items()}
    assert served == ROUTES  # the app serves exactly the routers' routes, documented under their tags


def test_fleet_and_sim_files_and_functions_stay_small() -> None:
    too_long = []
    for p in [*(SRC / "fleet").rglob("*.py"), *(SRC / "sim").rglob("*.py")]:
        if "migrations" in p.parts:
            continue
        text = p.read_text()
        if len(text.splitlines()) > 450:
            too_long.append(f"{p.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    too_long.append(f"{p.name}:{node.name}: {n} lines")
    assert too_long == []
