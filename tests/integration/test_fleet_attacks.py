"""Regression tests for the defects an attack on the fleet service and agent found (issue 12, D2-D12).

Real service (uvicorn on loopback), real agents running the demo ONNX model; a hostile server is the real service
behind a middleware that rewrites chosen answers, as a compromised server or a man in the middle would.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _fleet import Proc, serve_fleet
from test_fleet_security import SEED, Fleet, dev, fleet_reference

from tinymlops.fleet import agent, packages, service, store
from tinymlops.sim.streams import SyntheticStream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet-attack"))
    yield f
    f.close()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _sketch_at(fleet: Fleet, t: float) -> dict:
    import numpy as np

    from tinymlops.monitor.sketches import SketchBuilder

    b = SketchBuilder(fleet_reference(fleet))
    nf = len(fleet.manifest["preprocessing"]["feature_names"])
    b.add(np.zeros(nf), np.array([0.7, 0.1, 0.1, 0.1]), 2.0, t)
    return b.flush().model_dump()


def test_d2_a_device_cannot_claim_a_package_it_was_never_assigned(fleet: Fleet) -> None:
    other_target = fleet.upload(fleet.bundle("3", target="mcu"))
    same_target = fleet.upload(fleet.bundle("4"))
    d = dev(fleet, fleet.enrol("claim-1"))
    for pid in (other_target, same_target):
        r = d.post("/v1/devices/claim-1/events", json={"kind": "installed", "package_id": pid})
        assert r.status_code == 403, r.text
        assert d.get(f"/v1/devices/claim-1/packages/{pid}").status_code == 403
        assert d.get(f"/v1/devices/claim-1/packages/{pid}/artifact").status_code == 403
    row = fleet.op.get("/v1/devices/claim-1").json()
    assert row["current_package_id"] is None
    assert fleet.op.get("/v1/events", params={"device_id": "claim-1"}).json() == []


def test_d3_telemetry_only_for_a_package_the_device_runs(fleet: Fleet) -> None:
    mine, cred = fleet.good_id, fleet.enrol("tel-1")
    fleet.op.put("/v1/desired-state", json={"package_id": mine, "device_ids": ["tel-1"]}).raise_for_status()
    other = fleet.upload(fleet.bundle("7"))  # same target, same bins: the skew the defect allowed
    d = dev(fleet, cred)
    sk = _sketch_at(fleet, time.time())
    assert d.post("/v1/devices/tel-1/telemetry", json={"seq": 1, "package_id": other, "sketch": sk}).status_code == 403
    assert d.post("/v1/devices/tel-1/telemetry", json={"seq": 2, "package_id": mine, "sketch": sk}).status_code == 202
    assert store.telemetry_window(fleet.st, "sec", version="7") == []


def test_d10_d11_times_labels_and_unknown_packages_are_refused_and_not_stored(fleet: Fleet) -> None:
    cred = fleet.enrol("val-1", feedback=True)
    fleet.op.put("/v1/desired-state", json={"package_id": fleet.good_id, "device_ids": ["val-1"]})
    d, now = dev(fleet, cred), time.time()
    for t in (1e12, 0.0, now - 40 * 86400):  # year 33,000, 1970, older than the 30 days a device may buffer
        r = d.post("/v1/devices/val-1/telemetry", json={"seq": 10, "package_id": fleet.good_id,
                                                         "sketch": _sketch_at(fleet, t)})
        assert r.status_code == 422 and "time" in r.text, (t, r.text)
    fb = {"timestamp": now, "prediction": 0, "label": 99999}
    r = d.post("/v1/devices/val-1/telemetry", json={"seq": 11, "package_id": fleet.good_id,
                                                     "sketch": _sketch_at(fleet, now), "feedback": [fb]})
    assert r.status_code == 422 and "classes" in r.text
    for kind in ("rejected", "installed", "load_failed"):
        r = d.post("/v1/devices/val-1/events", json={"kind": kind, "package_id": "no-such-package"})
        assert r.status_code == 422
    assert store.telemetry_window(fleet.st, "sec", device_id="val-1") == []
    assert fleet.op.get("/v1/events", params={"device_id": "val-1"}).json() == []
    ok = {"seq": 12, "package_id": fleet.good_id, "sketch": _sketch_at(fleet, now),
          "feedback": [{**fb, "label": 3}]}
    assert d.post("/v1/devices/val-1/telemetry", json=ok).status_code == 202


def test_d4_a_huge_chunked_body_is_cut_off_without_growing_the_server(fleet: Fleet) -> None:
    sent = [0]

    def body() -> Iterator[bytes]:
        chunk = b"x" * (1 << 20)
        for _ in range(300):  # 300 MiB, no Content-Length
            sent[0] += len(chunk)
            yield chunk

    rss0 = _rss_mb()
    for path in ("/v1/enrol", "/v1/packages", "/v1/devices/x/events", "/v1/devices/x/telemetry"):
        try:
            r = httpx.post(fleet.url + path, content=body(), headers={"Authorization": "Bearer x"}, timeout=30)
            assert r.status_code in (401, 403, 413), (path, r.status_code)
        except httpx.HTTPError:
            pass  # the server closed the connection once it had answered: the body was not read
    assert sent[0] > 300 * (1 << 20)  # at least one whole body went out (uvicorn drains what it discards)
    assert _rss_mb() - rss0 < 50  # the server (in this process) kept at most a limit's worth of each
    assert httpx.get(fleet.url + "/healthz").status_code == 200


def test_d5_deep_nesting_is_a_client_error_not_a_crash(fleet: Fleet) -> None:
    deep = '{"a":' * 20000 + "1" + "}" * 20000
    r = fleet.op.post("/v1/packages", json={"manifest_json": deep, "signature_b64": "AAAA", "artifact_b64": "AAAA"})
    assert r.status_code == 422 and "deeper" in r.text
    r = httpx.post(fleet.url + "/v1/enrol", content=b"[" * 10000 + b"]" * 10000,
                   headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500
    assert fleet.op.get("/v1/packages").status_code == 200  # the connection pool and server are fine


class _Hostile:
    """The real service, except for the answers the test chose to replace (``mode``)."""

    def __init__(self, app: Any, state: dict[str, Any]) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        mode, path = self.state.get("mode"), scope.get("path", "")
        if scope["type"] == "http" and mode == "garbage" and path.endswith("/desired-state"):
            await _answer(send, [b"<html>not json{"])
        elif scope["type"] == "http" and mode == "deep" and path.endswith("/desired-state"):
            await _answer(send, [b"[" * 100000])
        elif scope["type"] == "http" and mode == "shape" and path.endswith("/desired-state"):
            await _answer(send, [b'{"package_id": ["x"], "poll_interval_s": "NaN"}'])
        elif scope["type"] == "http" and mode == "huge" and "/packages/" in path and not path.endswith("artifact"):
            chunk = b" " * (1 << 20)
            try:
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json")]})
                for _ in range(400):  # a 400 MiB manifest answer
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    self.state["sent"] = self.state.get("sent", 0) + len(chunk)
                await send({"type": "http.response.body", "body": b"{}"})
            except Exception:  # the agent hung up
                pass
        else:
            await self.app(scope, receive, send)


async def _answer(send: Any, chunks: list[bytes]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    for c in chunks:
        await send({"type": "http.response.body", "body": c, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_d6_d7_the_agent_survives_any_server_answer_and_keeps_serving(fleet: Fleet,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    state: dict[str, Any] = {}
    rss0 = _rss_mb()
    hostile = service.BackgroundServer(fleet.st, poll_interval_s=0.1)
    hostile.app.add_middleware(_Hostile, state=state)
    hostile.start()
    try:
        fleet.op.put("/v1/desired-state", json={"package_id": fleet.good_id, "cohort": "hostile"})
        tok = fleet.op.post("/v1/enrolment-tokens", json={"cohort": "hostile"}).json()["tokens"][0]
        cfg = fleet.agent_config("hostile-1", tok, seconds=11.0)  # room for a slow CI machine: see script()
        cfg.server = hostile.url
        a = agent.Agent(cfg, SyntheticStream(seed=SEED))
        newer = fleet.upload(fleet.bundle("8"))
        seen: dict[str, int] = {}

        def script() -> None:
            time.sleep(1.0)
            for mode in ("garbage", "deep", "shape"):
                state["mode"] = mode
                time.sleep(1.0)
                seen[mode] = a.inferences
            fleet.op.put("/v1/desired-state", json={"package_id": newer, "device_ids": ["hostile-1"]})
            state["mode"] = "huge"
            deadline = time.monotonic() + 6.0  # until the agent has asked for the 400 MiB manifest (and cut it)
            while time.monotonic() < deadline and not state.get("sent"):
                time.sleep(0.2)
            time.sleep(1.0)
            seen["huge"] = a.inferences

        t = threading.Thread(target=script)
        t.start()
        asyncio.run(a.run())
        t.join()
    finally:
        hostile.stop()
    assert a.installed is not None and a.installed.package_id == fleet.good_id  # still the model it had
    assert 0 < seen["garbage"] < seen["deep"] < seen["shape"] < seen["huge"] < a.inferences  # never stopped
    assert a.reports_sent >= 5
    # the agent stopped reading the 400 MiB manifest at its cap (agent and server share this process)
    assert state["sent"] > 0 and _rss_mb() - rss0 < 100
    assert any("larger than" in r.getMessage() and "/packages/" in r.getMessage() for r in caplog.records)
    assert any("not valid JSON" in r.getMessage() for r in caplog.records)


def test_d9_downgrade_refused_and_an_authorised_rollback_accepted(fleet: Fleet) -> None:
    v5, v6 = fleet.upload(fleet.bundle("5")), fleet.upload(fleet.bundle("6"))
    fleet.op.put("/v1/desired-state", json={"package_id": v6, "cohort": "rb"})
    tok = fleet.op.post("/v1/enrolment-tokens", json={"cohort": "rb"}).json()["tokens"][0]
    cfg = fleet.agent_config("rb-1", tok, seconds=1.0)
    assert fleet.run_agent(cfg).installed.package_id == v6
    cfg.enrolment_token = None
    fleet.op.put("/v1/desired-state", json={"package_id": v5, "device_ids": ["rb-1"]}).raise_for_status()
    a = fleet.run_agent(cfg)
    assert a.installed.package_id == v6 and v5 in a.rejected
    events = fleet.op.get("/v1/events", params={"device_id": "rb-1"}).json()
    assert any(e["kind"] == "rejected" and "downgrade refused" in e["reason"] for e in events)
    auth = json.loads(packages.rollback_authorisation_for(fleet.st, v5, v6, key=fleet.key))
    fleet.op.put("/v1/desired-state", json={"package_id": v5, "device_ids": ["rb-1"],
                                            "rollback_authorisation": auth}).raise_for_status()
    assert fleet.run_agent(cfg).installed.package_id == v5


def _serve(tmp: Path, workers: int) -> tuple[Proc, str, str]:
    return serve_fleet(f"sqlite:///{tmp / 'w.db'}", {**os.environ, "TINYMLOPS_HOME": str(tmp / "home")},
                       "--workers", str(workers))


def test_d12_revocation_reaches_every_worker_within_a_second(tmp_path: Path) -> None:
    from tinymlops.sim.command import product_command

    proc, url, op_token = _serve(tmp_path, workers=2)
    try:
        op = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {op_token}"})
        tok = op.post("/v1/enrolment-tokens", json={}).json()["tokens"][0]
        cred = httpx.post(url + "/v1/enrol", json={"enrolment_token": tok, "device_id": "w-1",
                                                   "target": "nucleo-l4r5zi"}).json()["credential"]
        h = {"Authorization": f"Bearer {cred}"}
        for _ in range(40):  # warm both workers' caches: one new connection per request
            assert httpx.get(f"{url}/v1/devices/w-1/desired-state", headers=h).status_code == 200
        op.post("/v1/devices/w-1/revoke").raise_for_status()
        t_revoked, last_ok = time.monotonic(), None
        while time.monotonic() - t_revoked < 3.0:
            if httpx.get(f"{url}/v1/devices/w-1/desired-state", headers=h).status_code == 200:
                last_ok = time.monotonic() - t_revoked
        assert last_ok is None or last_ok < 1.0, last_ok
        # an operator token revoked from the CLI fails on every worker within a second too
        (tmp_path / "op2").write_text(subprocess.run(
            [*product_command("fleet", "operator-token"), "--db", f"sqlite:///{tmp_path / 'w.db'}", "--name", "ci"],
            env={**os.environ, "TINYMLOPS_HOME": str(tmp_path / "home")}, capture_output=True, text=True,
            check=True).stdout.strip())
        h2 = {"Authorization": f"Bearer {(tmp_path / 'op2').read_text()}"}
        for _ in range(40):
            assert httpx.get(f"{url}/v1/devices", headers=h2).status_code == 200
        subprocess.run([*product_command("fleet", "operator-token-revoke"), "--db", f"sqlite:///{tmp_path / 'w.db'}",
                        "--token-file", str(tmp_path / "op2")], env={**os.environ, "TINYMLOPS_HOME": str(tmp_path / "home")},
                       check=True, capture_output=True)
        t_revoked, last_ok = time.monotonic(), None
        while time.monotonic() - t_revoked < 3.0:
            if httpx.get(f"{url}/v1/devices", headers=h2).status_code == 200:
                last_ok = time.monotonic() - t_revoked
        assert last_ok is None or last_ok < 1.0, last_ok
        assert op.get("/v1/devices").status_code == 200  # the other operator token still works
    finally:
        proc.stop()


def test_guessing_tokens_is_rate_limited_with_retry_after_and_valid_callers_are_not(fleet: Fleet) -> None:
    from tinymlops.fleet.service.limits import BURST

    svc = fleet.server.app.state.service
    svc.limiter._buckets.clear()
    try:
        codes = [httpx.post(f"{fleet.url}/v1/enrol", json={"enrolment_token": f"guess-{i}", "device_id": f"g-{i}",
                                                            "target": "gw"}).status_code for i in range(60)]
        # the bucket refills at 1 failure/s while the guesses go on, so a few later ones get a 403 again
        assert codes[: int(BURST) - 1] == [403] * (int(BURST) - 1) and 429 in codes[int(BURST) - 1:int(BURST) + 3]
        assert codes.count(429) >= 30
        r = httpx.get(f"{fleet.url}/v1/devices", headers={"Authorization": "Bearer tmo_op_guess"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        r = httpx.get(f"{fleet.url}/v1/devices/x/desired-state", headers={"Authorization": "Bearer tmo_dev_guess"})
        assert r.status_code == 429 and "Retry-After" in r.headers
        assert fleet.op.get("/v1/devices").status_code == 200  # a valid (cached) operator token still works
    finally:
        svc.limiter._buckets.clear()


def test_schema_and_docs_need_an_operator_token_outside_development_mode(fleet: Fleet) -> None:
    assert httpx.get(f"{fleet.url}/openapi.json").status_code == 401
    assert httpx.get(f"{fleet.url}/docs").status_code == 404
    assert fleet.op.get("/openapi.json").json()["info"]["title"] == "tinymlops fleet service"
    dev_app = service.create_app(st=fleet.st, dev_mode=True)
    from fastapi.testclient import TestClient

    with TestClient(dev_app) as c:
        assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200
