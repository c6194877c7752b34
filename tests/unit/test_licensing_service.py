"""Licence routes of the fleet service (in-process app): who may call what, and hostile or conflicting input."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from tinymlops.fleet import service, store
from tinymlops.licensing import chain, tokens
from tinymlops.licensing.meter import Meter


@pytest.fixture
def fleet(tmp_path: Path):
    st = store.open_store(f"sqlite:///{tmp_path / 'f.db'}")
    op_token = service.create_operator_token(st)
    reader = service.create_operator_token(st, name="reader", role="read")
    app = service.create_app(st=st)
    with TestClient(app) as client:
        creds = {}
        tok = client.post("/v1/enrolment-tokens", json={"cohort": "c", "count": 2},
                          headers={"Authorization": f"Bearer {op_token}"}).json()["tokens"]
        for did, t in zip(("dev-a", "dev-b"), tok, strict=True):
            creds[did] = client.post("/v1/enrol", json={"enrolment_token": t, "device_id": did, "target": "gw"}
                                     ).json()["credential"]
        yield client, st, op_token, reader, creds, tmp_path


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _register(client: TestClient, creds: dict[str, str], tmp_path: Path, did: str) -> Meter:
    vendor_pub = Ed25519PrivateKey.generate().public_key()
    m = Meter(tmp_path / did, did, [vendor_pub])
    r = client.put(f"/v1/devices/{did}/licence-key", json={"public_b64": chain.public_b64(m.chain.key)},
                   headers=_h(creds[did]))
    assert r.status_code == 200 and r.json() == {"registered": True}
    return m


def test_keys_are_registered_once_and_devices_stay_in_their_lane(fleet) -> None:
    client, _st, op, _reader, creds, tmp_path = fleet
    m = _register(client, creds, tmp_path, "dev-a")
    key = chain.public_b64(m.chain.key)
    again = client.put("/v1/devices/dev-a/licence-key", json={"public_b64": key}, headers=_h(creds["dev-a"]))
    assert again.json() == {"registered": False}
    other = chain.public_b64(Ed25519PrivateKey.generate())
    r = client.put("/v1/devices/dev-a/licence-key", json={"public_b64": other}, headers=_h(creds["dev-a"]))
    assert r.status_code == 409 and "keeps its key" in r.json()["detail"]
    r = client.put("/v1/devices/dev-a/licence-key", json={"public_b64": "A" * 44}, headers=_h(creds["dev-a"]))
    assert r.status_code in (409, 422)
    # device B can neither register for A, nor read A's licences, nor upload A's receipts
    for method, path, body in (("PUT", "/v1/devices/dev-a/licence-key", {"public_b64": other}),
                               ("GET", "/v1/devices/dev-a/licences", None),
                               ("POST", "/v1/devices/dev-a/receipts", {"receipts": []})):
        assert client.request(method, path, json=body, headers=_h(creds["dev-b"])).status_code == 403
    # devices cannot call operator routes; no credential at all: 401
    assert client.get("/v1/licences", headers=_h(creds["dev-a"])).status_code in (401, 403)
    assert client.get("/v1/licence-report").status_code == 401
    assert client.get("/v1/licence-devices/dev-a", headers=_h(op)).json()["next_sequence"] == 1


def test_licences_must_match_the_registered_key_and_come_in_sequence(fleet) -> None:
    client, _st, op, reader, creds, tmp_path = fleet
    m = _register(client, creds, tmp_path, "dev-a")
    vendor = Ed25519PrivateKey.generate()
    good = tokens.issue(vendor, device_id="dev-a", device_key_id=m.device_key_id, model_name="kws",
                        kind="per-query", count=10, sequence=1, customer="acme")
    assert client.post("/v1/licences", json=good, headers=_h(reader)).status_code == 403  # read-only token
    assert client.post("/v1/licences", json=good, headers=_h(op)).status_code == 201
    replay = client.post("/v1/licences", json=good, headers=_h(op))
    assert replay.status_code == 409 and "not above" in replay.json()["detail"]
    wrong_key = tokens.issue(vendor, device_id="dev-a", device_key_id="0" * 16, model_name="kws",
                             kind="per-query", count=10, sequence=2)
    assert client.post("/v1/licences", json=wrong_key, headers=_h(op)).status_code == 409
    no_key = tokens.issue(vendor, device_id="dev-b", device_key_id="1" * 16, model_name="kws", kind="unlimited",
                          sequence=1)
    r = client.post("/v1/licences", json=no_key, headers=_h(op))
    assert r.status_code == 409 and "start its agent online" in r.json()["detail"]
    ghost = tokens.issue(vendor, device_id="nobody", device_key_id="1" * 16, model_name="kws", kind="unlimited",
                         sequence=1)
    assert client.post("/v1/licences", json=ghost, headers=_h(op)).status_code == 422
    bad = client.post("/v1/licences", json={"payload_json": "[" * 3000, "signature_b64": ""}, headers=_h(op))
    assert bad.status_code == 422
    assert client.get("/v1/devices/dev-a/licences", headers=_h(creds["dev-a"])).json()["licences"] == [good]


def test_receipts_reconcile_and_hostile_uploads_are_refused(fleet) -> None:
    client, _st, op, _reader, creds, tmp_path = fleet
    vendor = Ed25519PrivateKey.generate()
    m = Meter(tmp_path / "dev-a", "dev-a", [vendor.public_key()])
    client.put("/v1/devices/dev-a/licence-key", json={"public_b64": chain.public_b64(m.chain.key)},
               headers=_h(creds["dev-a"]))
    tok = tokens.issue(vendor, device_id="dev-a", device_key_id=m.device_key_id, model_name="kws",
                       kind="per-query", count=100, sequence=1, customer="acme")
    client.post("/v1/licences", json=tok, headers=_h(op))
    m.accept(tok)
    for _ in range(37):
        m.charge("kws")
    m.close_block()
    wires = [r.wire() for r in m.chain.pending]
    url, h = "/v1/devices/dev-a/receipts", _h(creds["dev-a"])
    r = client.post(url, json={"receipts": wires, "now_unix_s": time.time()}, headers=h)
    assert r.status_code == 200 and r.json()["findings"] == [] and r.json()["acked_seq"] == m.chain.state.seq
    again = client.post(url, json={"receipts": wires}, headers=h).json()
    assert again["accepted"] == 0 and again["duplicates"] == len(wires)
    row = client.get("/v1/licences", params={"device_id": "dev-a"}, headers=_h(op)).json()[0]
    assert (row["used"], row["settled"], row["remaining"], row["accepted"]) == (37, 37, 63, True)
    # hostile bodies: too many receipts, oversized fields, wrong shapes -> 422, never 5xx
    assert client.post(url, json={"receipts": [wires[0]] * 1001}, headers=h).status_code == 422
    assert client.post(url, json={"receipts": [{"r": "x" * 5000, "s": ""}]}, headers=h).status_code == 422
    assert client.post(url, json={"receipts": [{"r": 1}], "extra": 1}, headers=h).status_code == 422
    forged = client.post(url, json={"receipts": [{"r": wires[-1]["r"].replace('"used":37', '"used":3'),
                                                  "s": wires[-1]["s"]}], "now_unix_s": time.time() - 86400},
                         headers=h).json()
    assert forged["accepted"] == 0 and {f["kind"] for f in forged["findings"]} == {"forged", "clock_skew"}
    # a branch from an old state, signed by the device's real key, sent at every sync: one finding per receipt
    other = chain.sign(m.chain.key, {"device_id": "dev-a", "seq": 1, "prev": m.chain.pending[0].hash,
                                     "ts": time.time(), "kind": "accept", "licence_id": "f" * 32, "lseq": 9})
    for _ in range(3):
        fork = client.post(url, json={"receipts": [other.wire()]}, headers=h).json()
        assert fork["accepted"] == 0 and [f["kind"] for f in fork["findings"]] == ["fork"]
    kinds = [f["kind"] for f in client.get("/v1/licence-findings", params={"device_id": "dev-a"},
                                           headers=_h(op)).json()]
    assert kinds.count("fork") == 1
    report = client.get("/v1/licence-report", headers=_h(op)).json()
    dev = report["customers"][0]["devices"][0]
    assert report["customers"][0]["used"] == 37 and dev["tampered"] is True and dev["findings"]["forged"] == 1
