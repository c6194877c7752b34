"""Schema-driven fuzzing of the fleet service: >= 1,000 generated requests from its own OpenAPI spec.

Valid and malformed (negative) cases for every operation, mostly with valid credentials and the enrolled
device's id so bodies reach the handlers; every answer must be < 500, and every 4xx must carry a message.
Then: telemetry the service acknowledged survives a restart of the service.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from _fleet import serve_fleet, write_gw_target
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

    # outside development mode the schema itself needs an operator token
    assert world["client"].get("/openapi.json").status_code == 401 and world["client"].get("/docs").status_code == 404
    schema = schemathesis.openapi.from_asgi("/openapi.json", world["app"],
                                            headers={"Authorization": f"Bearer {world['op']}"})
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
            b.add(np.zeros(len(ref.features)), np.array([0.7, 0.1, 0.1, 0.1]), 1.0, time.time())
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


HOSTILE_STRINGS = ["\x00", "a\x00b", "../../etc/passwd", "..", "' OR 1=1 --", "'; DROP TABLE devices;--",
                   "\U0001d54f" * 50, "\u202egnp.exe", "a" * 5000, "%00", "%2e%2e%2f", "NaN", "Infinity", "-1",
                   "1e309", str(2**200), "<script>alert(1)</script>", "${jndi:ldap://x}", " ", ""]


def _hostile_bodies(world: dict[str, Any]) -> list[bytes]:
    """Bodies no well-behaved client sends: deep nesting, NaN/Inf, huge ints and histograms, NUL/SQL strings."""
    import json

    from tinymlops.monitor.reference import ReferenceProfile
    from tinymlops.monitor.sketches import Sketch

    sk = Sketch.empty(ReferenceProfile.model_validate(world["manifest"]["reference"])).model_dump()
    huge_hist = {**sk, "feature_counts": [[0] * 200_000 for _ in sk["feature_counts"][:2]]}
    return [b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"[" * 200_000,
            b'{"seq": NaN, "package_id": "x", "sketch": {"n_inferences": Infinity}}',
            b'{"seq": ' + b"9" * 5000 + b', "package_id": "p"}',
            json.dumps({"seq": 2**70, "package_id": world["pid"], "sketch": sk}).encode(),
            json.dumps({"seq": 5, "package_id": world["pid"], "sketch": huge_hist}).encode(),
            json.dumps({"seq": 6, "package_id": world["pid"], "sketch": {**sk, "n_inferences": -5}}).encode(),
            json.dumps({"enrolment_token": "x\x00' OR '1'='1", "device_id": "a\x00", "target": "gw"}).encode(),
            json.dumps({"kind": "installed", "package_id": "../../x"}).encode(), b"\xff\xfe\x00garbage", b""]


def _chunked(n_mib: int) -> Any:
    for _ in range(n_mib):
        yield b"{" * (1 << 20)


@pytest.fixture(scope="module")
def served(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real ``tinymlops fleet serve`` process over a fresh database, with the fuzz package and device."""
    import os

    import httpx

    tmp = tmp_path_factory.mktemp("fleet-hostile")
    db = f"sqlite:///{tmp / 'fleet.db'}"
    proc, url, op = serve_fleet(db, {**os.environ, "TINYMLOPS_HOME": str(tmp / "home")}, "--targets-dir",
                                str(write_gw_target(tmp / "targets")))
    h = {"Authorization": f"Bearer {op}"}
    b = packages.sign({**world["manifest"], "model_version": "1", "target": "gw", "runtime": "onnxruntime"},
                      (world["root"] / "pkg" / "model.onnx").read_bytes(), packages.signing_key(world["root"]))
    pid = httpx.post(url + "/v1/packages", json=b.upload_json(), headers=h).json()["id"]
    tok = httpx.post(url + "/v1/enrolment-tokens", json={"feedback_opt_in": True}, headers=h).json()["tokens"][0]
    cred = httpx.post(url + "/v1/enrol", json={"enrolment_token": tok, "device_id": "fuzz-dev", "target": "gw"}
                      ).json()["credential"]
    httpx.put(url + "/v1/desired-state", json={"package_id": pid, "device_ids": ["fuzz-dev"]}, headers=h)
    yield {"url": url, "op": op, "dev": cred, "pid": pid, "pid_os": proc.p.pid, "db": db,
           "manifest": world["manifest"]}
    proc.stop()


def test_hostile_requests_never_cause_server_errors_or_store_invalid_data(served: dict[str, Any]) -> None:
    """>= 1,000 hostile requests (with the schema-driven ones above: >= 2,000) against a real server process."""
    from urllib.parse import quote

    import httpx

    from tinymlops.fleet.service.deps import MAX_CLOCK_SKEW_S, MAX_REPORT_AGE_S

    client = httpx.Client(base_url=served["url"], timeout=60)
    from tinymlops.fleet.service import create_app

    ops = [(m.upper(), path) for path, item in create_app(served["db"]).openapi()["paths"].items() for m in item]
    rss0 = _rss_mb(served["pid_os"])
    failures: list[str] = []
    n = 0
    bodies = _hostile_bodies(served)
    creds = [None, served["op"], served["dev"]]

    def call(method: str, u: str, **kw: Any) -> httpx.Response | None:
        nonlocal n
        n += 1
        try:
            r = client.request(method, u, **kw)
        except httpx.HTTPError as exc:  # a connection the server closed after a 413 is fine; a reset is not
            if "content" in kw and not isinstance(kw["content"], bytes):
                return None
            failures.append(f"{method} {u[:80]!r}: {exc!r}")
            return None
        if r.status_code >= 500:
            failures.append(f"{method} {u[:80]!r} -> {r.status_code}: {r.text[:200]}")
        return r

    for method, path in ops:
        own = path.replace("{device_id}", "fuzz-dev").replace("{package_id}", served["pid"])
        for i, s in enumerate(HOSTILE_STRINGS):
            url = path.replace("{device_id}", quote(s, safe="") or "x").replace("{package_id}",
                                                                                quote(s, safe="") or "x")
            q = {"model_name": s, "version": s, "since": s, "device_id": s, "cohort": s, "limit": s}
            for cred in creds:
                headers = {"Authorization": f"Bearer {cred}"} if cred else {}
                body = bodies[i % len(bodies)] if method in ("POST", "PUT") else None
                call(method, url, headers=headers, content=body)
                call(method, own, params=q, headers=headers, content=body)
        if method in ("POST", "PUT"):
            for cred in creds:
                headers = {"Authorization": f"Bearer {cred}", "Content-Type": "application/json"} if cred else {}
                for body in bodies:
                    call(method, own, content=body, headers=headers)
                r = call(method, own, content=_chunked(80), headers=headers)  # chunked, no Content-Length
                if r is not None and r.status_code not in (401, 403, 413, 429):
                    failures.append(f"{method} {own} chunked 80 MiB -> {r.status_code}")
    growth = _rss_mb(served["pid_os"]) - rss0
    print(f"hostile: {n} requests, server RSS growth {growth:.0f} MB")
    assert not failures, "\n".join(failures[:20])
    assert n >= 1000
    assert growth < 100
    # nothing stored fails validation
    from tinymlops.fleet.service.context import check_sketch
    from tinymlops.fleet.service.deps import Service

    st = store.open_store(served["db"])
    svc = Service(st, 5.0, None)
    now = time.time()
    for rec in store.telemetry_window(st, "fuzz"):
        pkg = svc.package_ctx(rec.package_id or "")
        assert pkg is not None and check_sketch(rec.sketch, pkg) is None
        assert now - MAX_REPORT_AGE_S <= rec.window_end_unix_s <= now + MAX_CLOCK_SKEW_S
        for fb in rec.feedback or []:
            assert 0 <= fb["label"] < pkg.n_classes and 0 <= fb["prediction"] < pkg.n_classes
    known = {p["id"] for p in store.list_package_rows(st)}
    for ev in store.deployment_events(st):
        assert ev["package_id"] is None or ev["package_id"] in known
    svc.close()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
