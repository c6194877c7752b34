"""Signing-key rotation end to end: a real `tinymlops fleet serve` (2 workers), `tinymlops keys` commands and 20
agents (real HTTP, real onnxruntime). Devices provisioned with the original key follow two rotations through the
signed chain, install a package signed by a key they were never provisioned with, and all refuse a package signed
by the revoked key (while a package from the current key still installs)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tinymlops.fleet import agent, keyset, packages, service, store
from tinymlops.sim import demo_model
from tinymlops.sim.command import product_command
from tinymlops.sim.demo import free_port
from tinymlops.sim.streams import SyntheticStream

pytestmark = pytest.mark.integration
N_DEVICES = 20
TARGET = "host-onnxruntime"


def _wait(what: str, cond, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_a_key_rotation_reaches_20_devices_and_the_revoked_key_is_refused(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("TINYMLOPS_HOME", str(home))
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    st = store.open_store(db)
    token = service.create_operator_token(st, "keys-test")
    env = {"TINYMLOPS_HOME": str(home), "TINYMLOPS_FLEET_URL": "", "TINYMLOPS_OPERATOR_TOKEN": token}
    k0 = packages.signing_key(packages.keys_dir())  # what the devices are provisioned with
    manifest = demo_model.build_demo_package(tmp_path / "pkg", model_name="keys")
    artifact = (tmp_path / "pkg" / "model.onnx").read_bytes()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(product_command("fleet", "serve", "--db", db, "--port", str(port), "--workers", "2",
                                            "--poll-interval", "0.3"), stdout=log, stderr=log,
                            env={**os.environ, **env})
    op = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    stop = threading.Event()
    try:
        _wait("the fleet service", lambda: _healthy(url), 90)

        def ship(version: str, key) -> str:  # type: ignore[no-untyped-def]
            m = {**manifest, "model_version": version, "target": TARGET, "runtime": "onnxruntime"}
            r = op.post("/v1/packages", json=packages.sign(m, artifact, key).upload_json())
            assert r.status_code == 201, r.text
            pid = r.json()["id"]
            op.put("/v1/desired-state", json={"package_id": pid, "cohort": "k"}).raise_for_status()
            return pid

        def keys_cmd(*args: str) -> dict:  # type: ignore[type-arg]
            out = subprocess.run(product_command("keys", *args, "--server", url, "--json"), capture_output=True,
                                 env={**os.environ, **env}, timeout=120)
            assert out.returncode == 0, out.stderr.decode()
            return json.loads(out.stdout)

        v1 = ship("1", k0)
        tokens = op.post("/v1/enrolment-tokens", json={"cohort": "k", "count": N_DEVICES}).json()["tokens"]
        agents = [agent.Agent(agent.AgentConfig(
            server=url, device_id=f"kd-{i:02d}", target=TARGET, runtime="onnxruntime",
            state_dir=tmp_path / "devices" / f"kd-{i:02d}", trusted_keys=[k0.public_key()], enrolment_token=tok,
            report_interval_s=2.0, inference_interval_s=0.2, duration_s=240), SyntheticStream(seed=i))
            for i, tok in enumerate(tokens)]

        async def run_all() -> None:
            tasks = [asyncio.create_task(a.run()) for a in agents]
            while not stop.is_set():
                await asyncio.sleep(0.2)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        runner = threading.Thread(target=lambda: asyncio.run(run_all()), daemon=True)
        runner.start()

        def running(pid: str) -> bool:
            return sum(d.current_package_id == pid for d in store.list_devices(st, cohort="k")) == N_DEVICES

        _wait("v1 on every device", lambda: running(v1), 120)

        # rotation 1: K0 becomes root, K1 signs; devices trust K1 only through the signed update
        rotated = keys_cmd("rotate")
        k1 = packages.signing_key(packages.keys_dir())
        assert rotated["version"] == 1 and rotated["active"] == packages.key_id(k1.public_key())
        v2 = ship("2", k1)
        _wait("v2 (signed by the rotated-in key) on every device", lambda: running(v2), 120)

        # rotation 2 revokes K1 (it "leaked"): a package it signs is refused everywhere, K2's installs
        keys_cmd("rotate", "--revoke-current")
        k2 = packages.signing_key(packages.keys_dir())
        _wait("key set version 2 on every device", lambda: all(a.keyset.version == 2 for a in agents), 60)
        v3 = ship("3", k1)

        def refused_everywhere() -> bool:
            ev = store.deployment_events(st, package_id=v3)
            return len({e["device_id"] for e in ev if e["kind"] == "rejected"}) == N_DEVICES

        _wait("every device refusing the revoked key's package", refused_everywhere, 60)
        reasons = {e["reason"] for e in store.deployment_events(st, package_id=v3)}
        assert all("untrusted key" in r for r in reasons), reasons
        assert not any(e["kind"] == "installed" for e in store.deployment_events(st, package_id=v3))
        assert all(a.installed is not None and a.installed.package_id == v2 for a in agents)
        v4 = ship("4", k2)
        _wait("v4 (current key) on every device", lambda: running(v4), 120)

        # the chain each device stored, and the service refusing a replayed or forged update
        stored = json.loads((tmp_path / "devices" / "kd-07" / "keyset.json").read_text())
        assert stored["version"] == 2 and packages.key_id(k1.public_key()) in stored["revoked"]
        replay = keyset.load_local(home / "keys").updates[0]
        assert op.post("/v1/key-updates", json={**replay, "payload_json": replay["payload_json"].replace(
            '"version":1', '"version":3')}).status_code == 422  # altered: signature no longer verifies
        assert op.post("/v1/key-updates", json=keyset.load_local(home / "keys").updates[1]).status_code == 201  # same
        read_only = service.create_operator_token(st, "viewer", role="read")
        r = httpx.post(f"{url}/v1/key-updates", json=replay, headers={"Authorization": f"Bearer {read_only}"})
        assert r.status_code == 403
    finally:
        stop.set()
        op.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
