"""Operator roles and expiry, device-credential rotation, client-certificate <-> device-id binding (real service)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_fleet_security import SEED, Fleet
from test_fleet_tls import issue, make_ca

from tinymlops.fleet import agent, service, tls
from tinymlops.fleet.store import OperatorToken
from tinymlops.sim.streams import SyntheticStream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet-identity"))
    yield f
    f.close()


def _as(fleet: Fleet, token: str) -> httpx.Client:
    return httpx.Client(base_url=fleet.url, headers={"Authorization": f"Bearer {token}"})


def test_read_only_and_deploy_tokens_are_limited_and_expired_tokens_refused(fleet: Fleet) -> None:
    did = "role-dev"
    fleet.enrol(did)
    reader = _as(fleet, service.create_operator_token(fleet.st, "viewer", role="read"))
    deployer = _as(fleet, service.create_operator_token(fleet.st, "ci", role="deploy"))
    assert reader.get("/v1/devices").status_code == 200 and reader.get("/v1/packages").status_code == 200
    desired = {"package_id": fleet.good_id, "device_ids": [did]}
    refused = {
        "desired state": reader.put("/v1/desired-state", json=desired),
        "publish": reader.post("/v1/packages", json=fleet.bundle("7").upload_json()),
        "enrolment tokens": reader.post("/v1/enrolment-tokens", json={"cohort": "c"}),
        "revoke device": reader.post(f"/v1/devices/{did}/revoke"),
        "revoke device (deploy)": deployer.post(f"/v1/devices/{did}/revoke"),
    }
    assert {k: r.status_code for k, r in refused.items()} == dict.fromkeys(refused, 403)
    assert "role 'read'" in refused["desired state"].json()["detail"]
    assert deployer.put("/v1/desired-state", json=desired).status_code == 200
    assert deployer.post("/v1/packages", json=fleet.bundle("8").upload_json()).status_code == 201
    # expiry: valid now, 401 once past it (also for a verdict cached while it was valid)
    short = _as(fleet, service.create_operator_token(fleet.st, "short", role="admin", ttl_s=1.0))
    assert short.get("/v1/devices").status_code == 200
    time.sleep(1.2)
    r = short.get("/v1/devices")
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    # stored hashed, with role and expiry
    with fleet.st.session() as s:
        rows = {t.name: t for t in s.query(OperatorToken)}
    assert rows["viewer"].role == "read" and rows["short"].expires_unix_s is not None
    assert all(len(t.token_hash) == 64 and not t.token_hash.startswith("tmo_") for t in rows.values())
    for c in (reader, deployer, short):
        c.close()


def test_a_device_rotates_its_credential_and_the_old_one_stops_working(fleet: Fleet) -> None:
    did = "rot-dev"
    old = fleet.enrol(did)
    (fleet.root / "devices" / did).mkdir(parents=True)
    (fleet.root / "devices" / did / "credential.json").write_text(json.dumps(
        {"device_id": did, "credential": old, "issued_unix_s": time.time() - 3600}))
    fleet.op.put("/v1/desired-state", json={"package_id": fleet.good_id, "device_ids": [did]}).raise_for_status()
    cfg = fleet.agent_config(did, seconds=2.0)
    cfg.credential_max_age_s = 60.0  # the stored credential is an hour old: rotate at the first poll
    a = fleet.run_agent(cfg)
    assert a.credential is not None and a.credential["credential"] != old and a.reports_sent >= 1
    stored = json.loads((cfg.state_dir / "credential.json").read_text())
    assert stored["credential"] == a.credential["credential"]
    assert oct((cfg.state_dir / "credential.json").stat().st_mode & 0o777) == "0o600"
    time.sleep(0.6)  # one revocation-epoch read
    old_r = httpx.get(f"{fleet.url}/v1/devices/{did}/desired-state", headers={"Authorization": f"Bearer {old}"})
    new_r = httpx.get(f"{fleet.url}/v1/devices/{did}/desired-state",
                      headers={"Authorization": f"Bearer {stored['credential']}"})
    assert old_r.status_code == 403 and new_r.status_code == 200
    # a rotation whose answer was lost: the old credential keeps working until the new one is used
    cur = stored["credential"]
    lost = httpx.post(f"{fleet.url}/v1/devices/{did}/credential", headers={"Authorization": f"Bearer {cur}"})
    assert lost.status_code == 201
    assert httpx.get(f"{fleet.url}/v1/devices/{did}/desired-state",
                     headers={"Authorization": f"Bearer {cur}"}).status_code == 200
    # another device cannot rotate (or learn) this device's credential
    other = fleet.enrol("rot-other")
    assert httpx.post(f"{fleet.url}/v1/devices/{did}/credential",
                      headers={"Authorization": f"Bearer {other}"}).status_code == 403


def test_under_mutual_tls_a_device_certificate_only_acts_as_its_own_device(fleet: Fleet, tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "bind-ca")
    cert, key = issue(tmp_path, ca, "bind-server", server=True)
    a_cert, a_key = issue(tmp_path, ca, "bind-a", server=False)
    ssl_kwargs = tls.server_ssl_kwargs(cert, key, ca[2])
    fleet.op.put("/v1/desired-state", json={"package_id": fleet.good_id, "cohort": "bind"}).raise_for_status()
    with service.BackgroundServer(fleet.st, poll_interval_s=0.2, ssl=ssl_kwargs, bind_client_certs=True) as srv:
        as_a = tls.client_verify(srv.url, ca[2], a_cert, a_key)

        def enrol(did: str) -> httpx.Response:
            tok = fleet.op.post("/v1/enrolment-tokens", json={"cohort": "bind"}).json()["tokens"][0]
            return httpx.post(f"{srv.url}/v1/enrol", verify=as_a,
                              json={"enrolment_token": tok, "device_id": did, "target": "gw"})

        assert enrol("bind-b").status_code == 403  # A's certificate cannot enrol device B
        b_cred = fleet.enrol("bind-b")  # B enrolled through the plain-HTTP service (its credential leaked to A)
        r = httpx.get(f"{srv.url}/v1/devices/bind-b/desired-state", verify=as_a,
                      headers={"Authorization": f"Bearer {b_cred}"})
        assert r.status_code == 403 and "bind-a" in r.json()["detail"]
        t = httpx.post(f"{srv.url}/v1/devices/bind-b/telemetry", verify=as_a, content=b"{}",
                       headers={"Authorization": f"Bearer {b_cred}"})
        assert t.status_code == 403  # the telemetry fast path checks it too
        # device A with its own certificate: enrols, installs, reports
        tok = fleet.op.post("/v1/enrolment-tokens", json={"cohort": "bind"}).json()["tokens"][0]
        cfg = fleet.agent_config("bind-a", tok, seconds=2.0)
        cfg.server, cfg.verify = srv.url, as_a
        a = agent.Agent(cfg, SyntheticStream(seed=SEED))
        asyncio.run(a.run())
        assert a.credential is not None and a.installed is not None and a.reports_sent >= 1


def test_certificate_binding_holds_on_every_worker_of_fleet_serve(tmp_path: Path) -> None:
    """`fleet serve --workers 2 --tls-client-ca`: workers start (and stay up) and each one binds certificates."""
    import os
    import subprocess

    from tinymlops.fleet import store
    from tinymlops.sim.command import product_command
    from tinymlops.sim.demo import free_port

    ca = make_ca(tmp_path, "w-ca")
    cert, key = issue(tmp_path, ca, "w-server", server=True)
    a_cert, a_key = issue(tmp_path, ca, "w-dev-a", server=False)
    db = f"sqlite:///{tmp_path / 'f.db'}"
    token = service.create_operator_token(store.open_store(db))
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(product_command("fleet", "serve", "--db", db, "--port", str(port), "--workers", "2",
                                            "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca",
                                            str(ca[2])), stdout=log, stderr=log,
                            env={**os.environ, "TINYMLOPS_HOME": str(tmp_path / "home")})
    url = f"https://127.0.0.1:{port}"
    as_a = tls.client_verify(url, ca[2], a_cert, a_key)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", verify=as_a, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.5)
        op = {"Authorization": f"Bearer {token}"}
        codes = {}
        for did in ("w-dev-a", "w-dev-b"):
            tok = httpx.post(f"{url}/v1/enrolment-tokens", json={"cohort": "w"}, headers=op, verify=as_a).json()
            r = httpx.post(f"{url}/v1/enrol", verify=as_a, json={"enrolment_token": tok["tokens"][0],
                                                                  "device_id": did, "target": "host-onnxruntime"})
            codes[did] = r.status_code
        assert codes == {"w-dev-a": 201, "w-dev-b": 403}
        # a new connection each: the kernel spreads them over both workers; every one refuses B with A's certificate
        refused = [httpx.get(f"{url}/v1/devices/w-dev-b/desired-state", verify=as_a,
                             headers={"Authorization": "Bearer tmo_dev_x"}).status_code for _ in range(10)]
        assert refused == [403] * 10
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
