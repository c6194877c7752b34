"""Schema-driven fuzzing of the fleet service: >= 1,000 generated requests from its own OpenAPI spec.

Valid and malformed (negative) cases for every operation, mostly with valid credentials and the enrolled
device's id so bodies reach the handlers; every answer must be < 500, and every 4xx must carry a message.
Then: telemetry the service acknowledged survives a restart of the service.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from tinymlops.fleet import packages, service, store
from tinymlops.sim import demo_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXAMPLES_PER_MODE = 40


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fleet-fuzz")
    url = f"sqlite:///{root / 'fleet.db'}"
    st = store.open_store(url)
    op_token = service.create_operator_token(st)
    app = service.create_app(st=st)
    client = TestClient(app)
    client.__enter__()
    h = {"Authorization": f"Bearer {op_token}"}
    manifest = demo_model.build_demo_package(root / "pkg", model_name="fuzz")
    b = packages.sign({**manifest, "model_version": "1", "target": "gw", "runtime": "onnxruntime"},
                      (root / "pkg" / "model.onnx").read_bytes(), packages.signing_key(root))
    pid = client.post("/v1/packages", json=b.upload_json(), headers=h).json()["id"]
    tok = client.post("/v1/enrolment-tokens", json={"samples_opt_in": True, "feedback_opt_in": True},
                      headers=h).json()["tokens"][0]
    cred = client.post("/v1/enrol", json={"enrolment_token": tok, "device_id": "fuzz-dev", "target": "gw"}
                       ).json()["credential"]
    client.put("/v1/desired-state", json={"package_id": pid, "device_ids": ["fuzz-dev"]}, headers=h)
    w = {"root": root, "url": url, "st": st, "app": app, "client": client, "op": op_token, "dev": cred,
         "pid": pid, "manifest": manifest}
    yield w
    client.__exit__(None, None, None)


def test_generated_requests_never_cause_server_errors(world: dict[str, Any]) -> None:
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", world["app"])
    rng = random.Random(0)
    seen: dict[str, int] = {}
    failures: list[str] = []

    def check(case: Any) -> None:
        path = case.operation.path
        device_op = path.startswith("/v1/devices/{device_id}/") and "revoke" not in path
        headers = dict(case.headers or {})
        if rng.random() < 0.85:  # mostly authenticated, so bodies reach the handlers
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers["Authorization"] = f"Bearer {world['dev'] if device_op else world['op']}"
            if device_op and case.path_parameters is not None and rng.random() < 0.9:
                case.path_parameters["device_id"] = "fuzz-dev"
        case.headers = headers
        resp = case.call()
        seen[path] = seen.get(path, 0) + 1
        if resp.status_code >= 500:
            failures.append(f"{case.method} {path} -> {resp.status_code}: {resp.text[:300]}")
        elif resp.status_code >= 400:
            try:
                detail = resp.json().get("detail")
            except ValueError:
                detail = None
            if not detail:
                failures.append(f"{case.method} {path} -> {resp.status_code} without a message")

    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode)

            @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case: Any) -> None:
                check(case)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (e.g. GET /healthz has no inputs)
                continue
    total = sum(seen.values())
    print(f"fuzzed {total} requests over {len(seen)} operations")
    assert not failures, "\n".join(failures[:20])
    assert total >= 1000
    assert len(seen) >= 15


def test_acknowledged_telemetry_survives_a_service_restart(world: dict[str, Any]) -> None:
    from tinymlops.monitor.reference import ReferenceProfile
    from tinymlops.monitor.sketches import SketchBuilder

    ref = ReferenceProfile.model_validate(world["manifest"]["reference"])
    import numpy as np

    acked = []
    st = store.open_store(world["url"])
    with service.BackgroundServer(st) as srv:
        import httpx

        d = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {world['dev']}"})
        for seq in range(1000, 1020):
            b = SketchBuilder(ref)
            b.add(np.zeros(len(ref.features)), np.array([0.7, 0.1, 0.1, 0.1]), 1.0, 100.0 + seq)
            r = d.post("/v1/devices/fuzz-dev/telemetry", json={"seq": seq, "package_id": world["pid"],
                                                                "sketch": b.flush().model_dump()})
            if r.status_code == 202:
                acked.append(seq)
        d.close()
    st.dispose()
    assert len(acked) == 20
    reopened = store.open_store(world["url"])  # a new engine: what a restarted service sees
    got = {r.seq for r in store.telemetry_window(reopened, "fuzz", device_id="fuzz-dev")}
    assert set(acked) <= got
    assert Path(world["root"] / "fleet.db").is_file()
