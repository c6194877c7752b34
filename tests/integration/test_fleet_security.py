"""Fleet security against a real service and real agents: isolation, bad packages, private telemetry."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.data.config import VibrationParams
from tinymlops.fleet import agent, packages, service, store
from tinymlops.fleet.store import DesiredState, Package
from tinymlops.sim import demo_model
from tinymlops.sim.streams import SyntheticStream

pytestmark = pytest.mark.integration
SEED = 7  # the synthetic sensor stream every agent here reads


class Fleet:
    """A running service with a signed demo package for target ``gw`` and helpers to enrol and run agents."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.st = store.open_store(f"sqlite:///{root / 'fleet.db'}")
        self.op_token = service.create_operator_token(self.st)
        self.bodies: list[tuple[str, bytes]] = []
        self.server = service.BackgroundServer(self.st, poll_interval_s=0.2)
        self.server.app.add_middleware(_Capture, sink=self.bodies)
        self.server.start()
        self.url = self.server.url
        self.op = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.op_token}"})
        self.key = packages.signing_key(root)
        self.manifest = demo_model.build_demo_package(root / "pkg", model_name="sec")
        self.artifact = (root / "pkg" / "model.onnx").read_bytes()
        self.good = self.bundle("1")
        self.good_id = self.upload(self.good)

    def bundle(self, version: str, target: str = "gw", key: Ed25519PrivateKey | None = None) -> packages.Bundle:
        m = {**self.manifest, "model_version": version, "target": target, "runtime": "onnxruntime"}
        return packages.sign(m, self.artifact, key or self.key)

    def upload(self, bundle: packages.Bundle) -> str:
        r = self.op.post("/v1/packages", json=bundle.upload_json())
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def enrol(self, device_id: str, samples: bool = False, feedback: bool = False) -> str:
        tok = self.op.post("/v1/enrolment-tokens", json={"cohort": "c", "samples_opt_in": samples,
                                                         "feedback_opt_in": feedback}).json()["tokens"][0]
        r = httpx.post(f"{self.url}/v1/enrol", json={"enrolment_token": tok, "device_id": device_id, "target": "gw"})
        assert r.status_code == 201, r.text
        return r.json()["credential"]

    def agent_config(self, device_id: str, token: str | None = None, seconds: float = 1.5) -> agent.AgentConfig:
        return agent.AgentConfig(server=self.url, device_id=device_id, target="gw", runtime="onnxruntime",
                                 state_dir=self.root / "devices" / device_id, trusted_keys=[self.key.public_key()],
                                 enrolment_token=token, report_interval_s=0.3, inference_interval_s=0.01,
                                 duration_s=seconds)

    def run_agent(self, cfg: agent.AgentConfig) -> agent.Agent:
        a = agent.Agent(cfg, SyntheticStream(seed=SEED))
        asyncio.run(a.run())
        return a

    def close(self) -> None:
        self.op.close()
        self.server.stop()


class _Capture:
    """Record every request body the service receives (what left the devices)."""

    def __init__(self, app: Any, sink: list[tuple[str, bytes]]) -> None:
        self.app, self.sink = app, sink

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recv() -> Any:
            msg = await receive()
            if msg["type"] == "http.request":
                chunks.append(msg.get("body", b""))
                if not msg.get("more_body"):
                    self.sink.append((scope["path"], b"".join(chunks)))
            return msg

        await self.app(scope, recv, send)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    f = Fleet(tmp_path_factory.mktemp("fleet-sec"))
    yield f
    f.close()


def dev(fleet: Fleet, cred: str) -> httpx.Client:
    return httpx.Client(base_url=fleet.url, headers={"Authorization": f"Bearer {cred}"})


def test_devices_are_isolated_and_operator_endpoints_refuse_device_tokens(fleet: Fleet) -> None:
    c1, c2 = fleet.enrol("iso-1"), fleet.enrol("iso-2")
    fleet.op.put("/v1/desired-state", json={"package_id": fleet.good_id, "device_ids": ["iso-2"]}).raise_for_status()
    d1 = dev(fleet, c1)
    assert d1.get("/v1/devices/iso-1/desired-state").status_code == 200
    assert d1.get("/v1/devices/iso-2/desired-state").status_code == 403
    assert d1.get(f"/v1/devices/iso-2/packages/{fleet.good_id}").status_code == 403
    assert d1.get(f"/v1/devices/iso-1/packages/{fleet.good_id}").status_code == 403  # not its desired package
    report = {"seq": 1, "package_id": fleet.good_id, "sketch": empty_sketch(fleet)}
    assert d1.post("/v1/devices/iso-2/telemetry", json=report).status_code == 403
    assert d1.post("/v1/devices/iso-1/telemetry", json={**report, "device_id": "iso-2"}).status_code == 403
    assert d1.post("/v1/devices/iso-2/events", json={"kind": "installed"}).status_code == 403
    for method, path in [("GET", "/v1/devices"), ("POST", "/v1/enrolment-tokens"), ("GET", "/v1/events"),
                         ("PUT", "/v1/desired-state"), ("GET", "/v1/packages"),
                         ("GET", "/v1/telemetry?model_name=sec")]:
        assert d1.request(method, path, json={}).status_code == 403, path
        assert httpx.request(method, fleet.url + path, json={}).status_code == 401, path
    assert httpx.get(f"{fleet.url}/v1/devices/iso-1/desired-state",
                     headers={"Authorization": f"Bearer {fleet.op_token}"}).status_code == 403
    assert dev(fleet, c2).get("/v1/devices/iso-2/desired-state").json()["package_id"] == fleet.good_id
    # secrets are stored hashed only
    raw = (fleet.root / "fleet.db").read_bytes() + (fleet.root / "fleet.db-wal").read_bytes()
    assert c1.encode() not in raw and fleet.op_token.encode() not in raw


def test_enrolment_tokens_are_one_time_and_revocation_locks_a_device_out(fleet: Fleet) -> None:
    tok = fleet.op.post("/v1/enrolment-tokens", json={"cohort": "c"}).json()["tokens"][0]
    first = httpx.post(f"{fleet.url}/v1/enrol", json={"enrolment_token": tok, "device_id": "once-1", "target": "gw"})
    again = httpx.post(f"{fleet.url}/v1/enrol", json={"enrolment_token": tok, "device_id": "once-2", "target": "gw"})
    assert first.status_code == 201 and again.status_code == 403
    d = dev(fleet, first.json()["credential"])
    assert d.get("/v1/devices/once-1/desired-state").status_code == 200
    fleet.op.post("/v1/devices/once-1/revoke").raise_for_status()
    assert d.get("/v1/devices/once-1/desired-state").status_code == 403


def empty_sketch(fleet: Fleet) -> dict:
    from tinymlops.monitor.sketches import Sketch

    return Sketch.empty(fleet_reference(fleet)).model_dump()


def fleet_reference(fleet: Fleet) -> Any:
    from tinymlops.monitor.reference import ReferenceProfile

    return ReferenceProfile.model_validate(fleet.manifest["reference"])


def _bad_package(fleet: Fleet, kind: str) -> str:
    """Put a bad package where the device will fetch it; return its id."""
    if kind == "wrong-key":
        return fleet.upload(fleet.bundle("9", key=Ed25519PrivateKey.generate()))
    if kind == "tampered-manifest":
        b = fleet.bundle("5")
        m = json.loads(b.manifest_bytes)
        m["class_names"] = list(reversed(m["class_names"]))  # a signed manifest edited in transit
        return fleet.upload(packages.Bundle(packages.canonical_json(m), b.signature, b.artifact))
    b = fleet.bundle({"unsigned": "6", "tampered-artifact": "7", "wrong-target": "8"}[kind],
                     target="mcu" if kind == "wrong-target" else "gw")
    pid = fleet.upload(b)
    with fleet.st.session() as s:  # what a compromised store or a man in the middle would serve
        p = s.get(Package, pid)
        if kind == "unsigned":
            p.signature_b64 = ""
        elif kind == "tampered-artifact":
            p.artifact = p.artifact[:-8] + b"\x00" * 8
    return pid


@pytest.mark.parametrize("kind", ["unsigned", "tampered-manifest", "tampered-artifact", "wrong-key",
                                  "wrong-target"])
def test_bad_packages_are_rejected_reported_and_the_old_model_keeps_serving(fleet: Fleet, kind: str) -> None:
    did = f"rej-{kind}"
    token = fleet.op.post("/v1/enrolment-tokens", json={"cohort": "rej"}).json()["tokens"][0]
    fleet.op.put("/v1/desired-state", json={"package_id": fleet.good_id, "cohort": "rej"})
    cfg = fleet.agent_config(did, token, seconds=1.0)
    # the cohort's desired package is set before enrolment, so the device gets it at enrolment
    a = fleet.run_agent(cfg)
    assert a.installed is not None and a.installed.package_id == fleet.good_id
    bad = _bad_package(fleet, kind)
    with fleet.st.session() as s:
        s.merge(DesiredState(device_id=did, package_id=bad, reason=f"test {kind}", set_unix_s=time.time()))
    t_bad = time.time()
    cfg.enrolment_token = None
    b = fleet.run_agent(cfg)
    assert b.installed is not None and b.installed.package_id == fleet.good_id  # old model kept
    assert bad in b.rejected
    events = fleet.op.get("/v1/events", params={"device_id": did}).json()
    rejected = [e for e in events if e["kind"] == "rejected" and e["package_id"] == bad]
    assert len(rejected) == 1 and rejected[0]["reason"]
    later = store.telemetry_window(fleet.st, "sec", device_id=did, since=t_bad)
    assert later and all(r.package_id == fleet.good_id for r in later)  # still serving, still reporting
    assert sum(r.sketch.n_inferences for r in later) > 0
    assert sum(r.sketch.rejections for r in later) == 1
    assert not (cfg.state_dir / "packages" / bad).exists()


def _numbers(obj: Any) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    if isinstance(obj, float):
        return [obj]
    return []


def _leaked(fleet: Fleet, device_id: str, n_inferences: int, seed: int) -> int:
    """Count float values the device sent that equal one of its raw inputs or model features."""
    from tinymlops import preprocessing
    from tinymlops.data.vibration import stream

    spec = preprocessing.FittedPreprocessing(**fleet.manifest["preprocessing"])
    it = stream(VibrationParams(), seed)
    windows = np.stack([next(it)[0] for _ in range(n_inferences)])
    # inputs and features are float32 on the device: a leaked value is exactly one of these numbers, while
    # measured figures (latency, energy, times) are float64 and essentially never float32-representable
    private = set(np.concatenate([windows.reshape(-1), preprocessing.transform(spec, windows).reshape(-1)]
                                 ).astype(np.float64).tolist()) - {0.0}
    sent = [v for path, body in fleet.bodies if path.startswith(f"/v1/devices/{device_id}/") and body
            for v in _numbers(json.loads(body))]
    return sum(1 for v in sent if v in private)


def test_default_telemetry_contains_no_raw_input_values(fleet: Fleet) -> None:
    fleet.op.put("/v1/desired-state", json={"package_id": fleet.good_id, "cohort": "c"})
    private_cfg = fleet.agent_config("priv-default", fleet.op.post(
        "/v1/enrolment-tokens", json={"cohort": "c"}).json()["tokens"][0], seconds=1.5)
    a = fleet.run_agent(private_cfg)
    assert a.reports_sent >= 2 and a.inferences >= 20
    assert _leaked(fleet, "priv-default", a.inferences, SEED) == 0
    stored = store.telemetry_window(fleet.st, "sec", device_id="priv-default")
    assert stored and all(r.samples is None and r.feedback is None for r in stored)

    # the same check does see inputs when a device opts in to the reservoir sample (so it can fail)
    tok = fleet.op.post("/v1/enrolment-tokens", json={"cohort": "c", "samples_opt_in": True,
                                                     "feedback_opt_in": True}).json()["tokens"][0]
    opt_cfg = fleet.agent_config("priv-optin", tok, seconds=1.5)
    b = fleet.run_agent(opt_cfg)
    assert _leaked(fleet, "priv-optin", b.inferences, SEED) > 0
    stored = store.telemetry_window(fleet.st, "sec", device_id="priv-optin")
    samples = [x for r in stored for x in (r.samples or [])]
    assert samples and all(len(x) == len(fleet.manifest["preprocessing"]["feature_names"]) for x in samples)
    assert max(len(r.samples or []) for r in stored) <= opt_cfg.reservoir_size
    assert any(r.feedback for r in stored)


def test_samples_are_refused_from_devices_that_did_not_opt_in(fleet: Fleet) -> None:
    cred = fleet.enrol("noopt")
    fleet.op.put("/v1/desired-state", json={"package_id": fleet.good_id, "device_ids": ["noopt"]})
    sk = empty_sketch(fleet)
    d = dev(fleet, cred)
    assert d.post("/v1/devices/noopt/telemetry", json={"seq": 1, "package_id": fleet.good_id, "sketch": sk,
                                                       "samples": [[0.0] * 36]}).status_code == 403
    ok = d.post("/v1/devices/noopt/telemetry", json={"seq": 2, "package_id": fleet.good_id, "sketch": sk})
    assert ok.status_code == 202


def test_a_package_damaged_on_the_device_is_rolled_back_reported_and_repaired(fleet: Fleet) -> None:
    did = "heal-1"
    token = fleet.op.post("/v1/enrolment-tokens", json={"cohort": "heal"}).json()["tokens"][0]
    v2 = fleet.upload(fleet.bundle("2"))
    fleet.op.put("/v1/desired-state", json={"package_id": fleet.good_id, "cohort": "heal"})
    cfg = fleet.agent_config(did, token, seconds=0.8)
    fleet.run_agent(cfg)
    cfg.enrolment_token = None
    fleet.op.put("/v1/desired-state", json={"package_id": v2, "device_ids": [did]}).raise_for_status()
    assert fleet.run_agent(cfg).installed.package_id == v2
    model = cfg.state_dir / "packages" / v2 / "model.onnx"
    model.write_bytes(model.read_bytes()[:-16])  # flash corruption while powered off
    a = fleet.run_agent(cfg)
    kinds = [(e["kind"], e["package_id"]) for e in fleet.op.get("/v1/events", params={"device_id": did}).json()]
    assert kinds == [("installed", fleet.good_id), ("installed", v2), ("rolled_back", fleet.good_id),
                     ("installed", v2)]
    assert a.installed.package_id == v2  # the desired package was fetched again, verified and installed
    dev_row = fleet.op.get(f"/v1/devices/{did}").json()
    assert dev_row["current_package_id"] == v2 and dev_row["previous_package_id"] == fleet.good_id


def test_a_retried_report_is_stored_once_and_bad_sketches_are_refused(fleet: Fleet) -> None:
    cred = fleet.enrol("retry-1")
    fleet.op.put("/v1/desired-state", json={"package_id": fleet.good_id, "device_ids": ["retry-1"]})
    from tinymlops.monitor.sketches import SketchBuilder

    b = SketchBuilder(fleet_reference(fleet))
    nf = len(fleet.manifest["preprocessing"]["feature_names"])
    b.add(np.zeros(nf), np.array([0.7, 0.1, 0.1, 0.1]), 2.0, time.time())  # D10: a plausible window time
    report = {"seq": 42, "package_id": fleet.good_id, "sketch": b.flush().model_dump()}
    d = dev(fleet, cred)
    assert [d.post("/v1/devices/retry-1/telemetry", json=report).status_code for _ in range(3)] == [202] * 3
    assert [r.seq for r in store.telemetry_window(fleet.st, "sec", device_id="retry-1")] == [42]
    inconsistent = json.loads(json.dumps(report))
    inconsistent["seq"] = 43
    inconsistent["sketch"]["prediction_counts"][0] += 5  # counts that do not add up
    r = d.post("/v1/devices/retry-1/telemetry", json=inconsistent)
    assert r.status_code == 422 and "n_inferences" in r.json()["detail"]
    wrong_bins = json.loads(json.dumps(report))
    wrong_bins["seq"] = 44
    wrong_bins["sketch"]["edges_digest"] = "0" * 16  # made on another package's bins
    assert d.post("/v1/devices/retry-1/telemetry", json=wrong_bins).status_code == 422
    assert [r.seq for r in store.telemetry_window(fleet.st, "sec", device_id="retry-1")] == [42]
