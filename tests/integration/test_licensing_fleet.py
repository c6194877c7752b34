"""Offline licensing end to end with real processes: `tinymlops fleet serve`, `tinymlops agent`, `tinymlops license`.

A device runs a licensed package offline until its quota is used up and stops; it reconnects and the service
reconciles exactly; a device whose owner restored an old copy of its state directory is caught (forked chain).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from _fleet import Proc, serve_fleet, until, write_gw_target

from tinymlops.fleet import packages
from tinymlops.sim import demo_model
from tinymlops.sim.command import product_command
from tinymlops.sim.demo import free_port

pytestmark = pytest.mark.integration
MODEL = "kws-licensed"
QUOTA = 40


class Fleet:
    def __init__(self, root: Path) -> None:
        self.root, self.home = root, root / "home"
        self.env = {**os.environ, "TINYMLOPS_HOME": str(self.home)}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        write_gw_target(root / "targets")
        self.key = packages.signing_key(self._keys())
        self.server: Proc | None = None

    def _keys(self) -> Path:
        d = self.home / "keys"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def serve(self) -> None:
        self.server, _, token = serve_fleet(f"sqlite:///{self.root / 'fleet.db'}", self.env, "--poll-interval", "0.2",
                                            "--targets-dir", str(self.root / "targets"), port=self.port)
        self.op = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def stop_server(self) -> None:
        assert self.server is not None
        self.server.stop()
        self.op.close()

    def publish_licensed(self) -> str:
        manifest = demo_model.build_demo_package(self.root / "pkg", model_name=MODEL)
        artifact = (self.root / "pkg" / "model.onnx").read_bytes()
        bundle = packages.sign({**manifest, "model_version": "1", "target": "gw", "runtime": "onnxruntime",
                                "licence_required": True}, artifact, self.key)
        r = self.op.post("/v1/packages", json=bundle.upload_json())
        assert r.status_code == 201, r.text
        return bundle.id

    def enrol(self, device: str, package_id: str) -> str:
        tok = self.op.post("/v1/enrolment-tokens", json={"cohort": device, "count": 1}).json()["tokens"][0]
        self.op.put("/v1/desired-state", json={"package_id": package_id, "cohort": device}).raise_for_status()
        return tok

    def agent(self, device: str, token: str | None = None) -> Proc:
        from tinymlops.sim.simulator import write_token_file

        state = self.root / "dev" / device
        windows = self.root / "windows.npy"
        if not windows.is_file():
            np.save(windows, demo_model.draw(demo_model.VibrationParams(), 3, 400)[0].astype(np.float32))
        cmd = [*product_command("agent"), "--server", self.url, "--device-id", device, "--target", "gw",
               "--state-dir", str(state), "--trusted-key", str(self.home / "keys" / packages.PUBLIC_KEY_FILE),
               "--targets-dir", str(self.root / "targets"), "--input", str(windows), "--report-interval", "0.5",
               "--inference-interval", "0.005", "-v"]
        if token:
            cmd += ["--enrolment-token-file", str(write_token_file(state, token))]
        return Proc(cmd, self.env)

    def cli(self, *args: str) -> dict:
        p = subprocess.run([*product_command("license", *args), "--json"], env=self.env, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def licence_row(self, device: str) -> dict | None:
        rows = self.op.get("/v1/licences", params={"device_id": device}).json()
        return rows[-1] if rows else None


@pytest.fixture
def fleet(tmp_path: Path):
    f = Fleet(tmp_path)
    f.serve()
    yield f
    if f.server is not None and f.server.p.poll() is None:
        f.stop_server()


def test_offline_quota_exhaustion_then_exact_reconciliation(fleet: Fleet) -> None:
    t0 = time.monotonic()
    pid = fleet.publish_licensed()
    dev = "meter-1"
    agent = fleet.agent(dev, fleet.enrol(dev, pid))
    agent.wait_for("installed package")
    agent.wait_for("needs a licence and this device holds none")  # installed, refused: no licence yet
    until(lambda: fleet.op.get(f"/v1/licence-devices/{dev}").status_code == 200)
    issued = fleet.cli("issue", "--server", fleet.url, "--device", dev, "--model", MODEL, "--count", str(QUOTA),
                       "--customer", "acme")
    assert issued["count"] == QUOTA and issued["sequence"] == 1
    until(lambda: (fleet.licence_row(dev) or {}).get("accepted"))
    fleet.stop_server()  # from here on the device is offline

    agent.wait_for("is used up: 40 of 40 inferences")
    time.sleep(0.5)
    err = agent.stop()
    assert f"{QUOTA} inferences" in err.splitlines()[-1], err
    local = fleet.cli("status", "--state-dir", str(fleet.root / "dev" / dev), "--trusted-key",
                      str(fleet.home / "keys" / packages.PUBLIC_KEY_FILE))
    assert local["licences"][0]["used"] == QUOTA and local["licences"][0]["state"] == "used up"
    assert local["pending_receipts"] > 0

    fleet.serve()  # back online: the device uploads and the service reconciles exactly
    agent = fleet.agent(dev)
    until(lambda: (fleet.licence_row(dev) or {}).get("settled") == QUOTA)
    agent.stop()
    row = fleet.licence_row(dev)
    assert row is not None and row["used"] == QUOTA and row["unsettled"] == 0 and row["remaining"] == 0
    report = fleet.cli("report", "--server", fleet.url)
    device = report["customers"][0]["devices"][0]
    assert report["customers"][0]["customer"] == "acme" and report["customers"][0]["used"] == QUOTA
    assert device["tampered"] is False and report["tampered_devices"] == []
    print(f"offline quota test: {time.monotonic() - t0:.1f} s")


def test_a_restored_old_state_is_detected(fleet: Fleet) -> None:
    pid = fleet.publish_licensed()
    dev = "meter-2"
    state = fleet.root / "dev" / dev
    agent = fleet.agent(dev, fleet.enrol(dev, pid))
    agent.wait_for("holds none")
    until(lambda: fleet.op.get(f"/v1/licence-devices/{dev}").status_code == 200)
    fleet.cli("issue", "--server", fleet.url, "--device", dev, "--model", MODEL, "--count", "100000")
    until(lambda: (fleet.licence_row(dev) or {}).get("accepted"))
    agent.stop()
    shutil.copytree(state, fleet.root / "snapshot")  # the owner keeps a copy of the state directory

    agent = fleet.agent(dev)
    until(lambda: (fleet.licence_row(dev) or {}).get("used", 0) >= 50)
    agent.stop()
    honest = fleet.licence_row(dev)
    assert honest is not None

    shutil.rmtree(state)  # ... and restores it: the counter is back where it was
    shutil.copytree(fleet.root / "snapshot", state)
    agent = fleet.agent(dev)
    agent.wait_for("the service flagged this device's usage")
    agent.stop()
    report = fleet.cli("report", "--server", fleet.url)
    device = report["customers"][0]["devices"][0]
    assert device["tampered"] is True and device["findings"].get("fork", 0) >= 1, device
    assert report["tampered_devices"] == [dev]
    assert any(f["kind"] == "fork" and "restored" in f["detail"] for f in report["findings"])
    # nothing of the restored branch was counted: usage stays what the honest chain reported
    assert fleet.licence_row(dev)["used"] == honest["used"]  # type: ignore[index]
