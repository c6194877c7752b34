"""Consented field data in the fleet service (in-process app) and the agent's field hook.

Consent is recorded (who, when, scope) and revocable; only an active consent admits a sealed batch; replays,
other consents, old keys and hostile sizes are refused; the service holds ciphertext only; forget deletes and
audits; the agent keeps nothing and sends nothing without consent, a signed key and local permission.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fastapi.testclient import TestClient

from tinymlops.fleet import field, field_seal, service, store
from tinymlops.fleet.agent_field import REFUSE_FILE, FieldHook


@pytest.fixture
def fleet(tmp_path: Path):
    st = store.open_store(f"sqlite:///{tmp_path / 'f.db'}")
    op = service.create_operator_token(st, name="alice")
    reader = service.create_operator_token(st, name="reader", role="read")
    signer, fkey = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    with TestClient(service.create_app(st=st)) as client:
        toks = client.post("/v1/enrolment-tokens", json={"cohort": "line-b", "count": 2}, headers=_h(op)).json()
        creds = {did: client.post("/v1/enrol", json={"enrolment_token": t, "device_id": did, "target": "gw"}
                                  ).json()["credential"] for did, t in zip(("d1", "d2"), toks["tokens"], strict=True)}
        r = client.put("/v1/field-policy", headers=_h(op),
                       json={"key_statement": field_seal.key_statement(fkey, signer), "reservoir_size": 8})
        assert r.status_code == 200, r.text
        yield SimpleNamespace(client=client, st=st, op=op, reader=reader, creds=creds, signer=signer, fkey=fkey)


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _batch(f: Any, did: str, consent_id: str, seq: int, n: int = 4) -> dict[str, Any]:
    key = field_seal.verify_statement(field.policy(f.st)["key_statement"], [f.signer.public_key()])
    X = np.arange(n * 6, dtype=np.float32).reshape(n, 6)
    now = time.time()
    return field_seal.seal(key, did, seq, consent_id, X, [1] * n, [0] * n, (now - 1, now))


def test_consent_is_recorded_revocable_and_gates_uploads(fleet) -> None:
    c = fleet.client
    assert c.get("/v1/devices/d1/field-consent", headers=_h(fleet.creds["d1"])).json() == {"consent": None}
    # no consent: a batch sealed under a made-up consent id is refused and nothing is stored
    r = c.post("/v1/devices/d1/field-samples", json=_batch(fleet, "d1", "0" * 16, 1), headers=_h(fleet.creds["d1"]))
    assert r.status_code == 409 and field.batches(fleet.st) == []
    # only admin tokens may grant; the grant records who and when
    assert c.put("/v1/devices/d1/field-consent", json={"grant": True}, headers=_h(fleet.reader)).status_code == 403
    g = c.put("/v1/devices/d1/field-consent", json={"grant": True}, headers=_h(fleet.op)).json()
    assert g["granted_by"] == "alice" and g["active"] and g["scope"] == "labelled-samples"
    ans = c.get("/v1/devices/d1/field-consent", headers=_h(fleet.creds["d1"])).json()
    assert ans["consent"]["consent_id"] == g["consent_id"] and ans["reservoir_size"] == 8
    ok = c.post("/v1/devices/d1/field-samples", json=_batch(fleet, "d1", g["consent_id"], 5),
                headers=_h(fleet.creds["d1"]))
    assert ok.status_code == 200 and ok.json()["accepted"] == 4
    stored = field.batches(fleet.st)
    assert len(stored) == 1 and stored[0]["cohort"] == "line-b"
    blob = base64.b64decode(stored[0]["ciphertext_b64"])
    assert np.arange(24, dtype=np.float32).tobytes()[8:40] not in blob  # ciphertext only
    opened = field_seal.open_batch(fleet.fkey, blob, "d1", 5, g["consent_id"], 4, stored[0]["key_id"])
    assert opened.X.shape == (4, 6) and opened.labels.tolist() == [1, 1, 1, 1]
    # replay (same or lower sequence), another device's credential, a batch for another device: refused
    for seq in (5, 4):
        r = c.post("/v1/devices/d1/field-samples", json=_batch(fleet, "d1", g["consent_id"], seq),
                   headers=_h(fleet.creds["d1"]))
        assert r.status_code == 409 and "replay" in r.json()["detail"]
    assert c.post("/v1/devices/d1/field-samples", json=_batch(fleet, "d1", g["consent_id"], 9),
                  headers=_h(fleet.creds["d2"])).status_code == 403
    # revoked: the device learns it and uploads are refused again
    rv = c.put("/v1/devices/d1/field-consent", json={"grant": False}, headers=_h(fleet.op)).json()
    assert rv["revoked_by"] == "alice" and not rv["active"]
    assert c.get("/v1/devices/d1/field-consent", headers=_h(fleet.creds["d1"])).json() == {"consent": None}
    assert c.post("/v1/devices/d1/field-samples", json=_batch(fleet, "d1", g["consent_id"], 10),
                  headers=_h(fleet.creds["d1"])).status_code == 409
    assert len(c.get("/v1/field-consents?device_id=d1", headers=_h(fleet.reader)).json()) == 1


def test_hostile_batches_are_refused(fleet) -> None:
    c = fleet.client
    g = c.put("/v1/devices/d1/field-consent", json={"grant": True}, headers=_h(fleet.op)).json()
    good = _batch(fleet, "d1", g["consent_id"], 7)
    for bad in ({**good, "count": 10**6}, {**good, "ciphertext_b64": "A" * (2 * field_seal.MAX_CIPHERTEXT_BYTES)},
                {**good, "window_start_unix_s": 1.0}, {**good, "window_end_unix_s": time.time() + 86400},
                {**good, "key_id": "f" * 16}, {**good, "extra": 1}, {**good, "seq": -1}):
        r = c.post("/v1/devices/d1/field-samples", json=bad, headers=_h(fleet.creds["d1"]))
        assert r.status_code in (409, 413, 422), (bad.keys(), r.status_code)
    assert field.batches(fleet.st) == []
    # a service that relabels a batch (count, sequence, consent) makes it undecryptable on the registry host
    blob = base64.b64decode(good["ciphertext_b64"])
    for args in (("d1", 7, g["consent_id"], 3), ("d1", 8, g["consent_id"], 4), ("d2", 7, g["consent_id"], 4)):
        with pytest.raises(field_seal.SealError):
            field_seal.open_batch(fleet.fkey, blob, *args, good["key_id"])


def test_forget_deletes_revokes_and_audits(fleet) -> None:
    c = fleet.client
    g = c.put("/v1/devices/d1/field-consent", json={"grant": True}, headers=_h(fleet.op)).json()
    g2 = c.put("/v1/devices/d2/field-consent", json={"grant": True}, headers=_h(fleet.op)).json()
    for seq in (1, 2):
        c.post("/v1/devices/d1/field-samples", json=_batch(fleet, "d1", g["consent_id"], seq),
               headers=_h(fleet.creds["d1"]))
    c.post("/v1/devices/d2/field-samples", json=_batch(fleet, "d2", g2["consent_id"], 1), headers=_h(fleet.creds["d2"]))
    assert c.delete("/v1/devices/d1/field-samples", headers=_h(fleet.reader)).status_code == 403
    audit = c.delete("/v1/devices/d1/field-samples", headers=_h(fleet.op)).json()
    assert audit == {**audit, "device_id": "d1", "requested_by": "alice", "batches_deleted": 2, "samples_deleted": 8,
                     "consents_revoked": 1}
    assert {b["device_id"] for b in c.get("/v1/field-batches", headers=_h(fleet.reader)).json()} == {"d2"}
    assert c.get("/v1/field-forgets", headers=_h(fleet.reader)).json()[0]["device_id"] == "d1"
    assert c.delete("/v1/devices/nope/field-samples", headers=_h(fleet.op)).status_code == 404


def test_retention_and_quota_bound_what_is_kept(fleet) -> None:
    c = fleet.client
    field.set_policy(fleet.st, field.policy(fleet.st)["key_statement"], max_samples_per_device=8, retention_s=100)
    g = c.put("/v1/devices/d1/field-consent", json={"grant": True}, headers=_h(fleet.op)).json()
    for seq in (1, 2, 3):
        c.post("/v1/devices/d1/field-samples", json=_batch(fleet, "d1", g["consent_id"], seq),
               headers=_h(fleet.creds["d1"]))
    assert [b["seq"] for b in field.batches(fleet.st)] == [2, 3]  # quota 8 samples: the oldest batch went
    assert field.prune(fleet.st, now=time.time() + 101) == 2 and field.batches(fleet.st) == []


class _Agent:
    """What FieldHook.sync uses of an Agent, backed by the in-process service."""

    def __init__(self, f: Any, did: str, trusted: list[Any]) -> None:
        self.f, self.device_path, self.did = f, f"/v1/devices/{did}", did
        self.keyset = SimpleNamespace(trusted=lambda: trusted)
        self.client = SimpleNamespace(post=self._post)

    def _url(self, path: str) -> str:
        return path

    def _headers(self) -> dict[str, str]:
        return _h(self.f.creds[self.did])

    async def _post(self, url: str, json: Any, headers: dict[str, str]) -> Any:
        return self.f.client.post(url, json=json, headers=headers)

    async def _get_json(self, path: str, max_bytes: int) -> Any:
        r = self.f.client.get(path, headers=self._headers())
        r.raise_for_status()
        return r.json()


def _run(hook: FieldHook, agent: _Agent, n: int) -> None:
    asyncio.run(hook.sync(agent))
    for i in range(n):
        hook.add(np.full(6, float(i), dtype=np.float32), i % 3, 0)
    hook.close_window()
    asyncio.run(hook.sync(agent))


def test_agent_sends_nothing_without_consent_and_a_bounded_sample_with_it(fleet, tmp_path: Path) -> None:
    agent = _Agent(fleet, "d1", [fleet.signer.public_key()])
    hook = FieldHook(tmp_path / "dev", "d1")
    _run(hook, agent, 100)
    assert hook.samples == [] and hook.queue == [] and hook.sent_batches == 0 and field.batches(fleet.st) == []
    fleet.client.put("/v1/devices/d1/field-consent", json={"grant": True}, headers=_h(fleet.op))
    _run(hook, agent, 100)
    stored = field.batches(fleet.st)
    assert hook.sent_batches == 1 and [b["count"] for b in stored] == [8]  # reservoir of 8 out of 100
    # locally refused: nothing kept, nothing sent, although the service still says yes
    (tmp_path / "dev" / "field").mkdir(parents=True, exist_ok=True)
    (tmp_path / "dev" / "field" / REFUSE_FILE).touch()
    _run(hook, agent, 100)
    assert len(field.batches(fleet.st)) == 1 and hook.queue == []


def test_agent_refuses_a_key_the_registry_did_not_sign(fleet, tmp_path: Path) -> None:
    fleet.client.put("/v1/devices/d1/field-consent", json={"grant": True}, headers=_h(fleet.op))
    agent = _Agent(fleet, "d1", [Ed25519PrivateKey.generate().public_key()])  # trusts another signer
    hook = FieldHook(tmp_path / "dev", "d1")
    _run(hook, agent, 50)
    assert not hook.active and field.batches(fleet.st) == []


def test_sealed_plaintext_is_bounded_before_allocation() -> None:
    fkey = X25519PrivateKey.generate()
    key = field_seal.verify_statement(field_seal.key_statement(fkey, signer := Ed25519PrivateKey.generate()),
                                      [signer.public_key()])
    sealed = field_seal.seal(key, "d", 1, "c" * 16, np.zeros((2, 3), np.float32), [0, 1], [0, 0], (0.0, 1.0))
    blob = base64.b64decode(sealed["ciphertext_b64"])
    assert field_seal.open_batch(fkey, blob, "d", 1, "c" * 16, 2, key.key_id).X.shape == (2, 3)
    with pytest.raises(field_seal.SealError, match="smaller reservoir"):
        field_seal.seal(key, "d", 2, "c" * 16, np.zeros((256, 2048), np.float32), [0] * 256, [0] * 256, (0, 1))
    statement = field_seal.key_statement(fkey, signer)
    doc = json.loads(base64.b64decode(statement["statement_b64"]))
    forged = {**statement, "statement_b64": base64.b64encode(json.dumps({**doc, "key_id": "0" * 16}).encode()).decode()}
    with pytest.raises(field_seal.SealError, match="not signed"):
        field_seal.verify_statement(forged, [signer.public_key()])


def test_export_pages_through_the_service(fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymlops.fleet import field_export
    from tinymlops.fleet.service import routes_field

    c = fleet.client
    g = c.put("/v1/devices/d1/field-consent", json={"grant": True}, headers=_h(fleet.op)).json()
    for seq in (1, 2, 3):
        c.post("/v1/devices/d1/field-samples", json=_batch(fleet, "d1", g["consent_id"], seq),
               headers=_h(fleet.creds["d1"]))
    assert c.get("/v1/field-batches?limit=51", headers=_h(fleet.reader)).status_code == 422
    assert len(c.get("/v1/field-batches?limit=2", headers=_h(fleet.reader)).json()) == 2
    calls = []

    class Server:  # the OperatorClient surface collect() uses, on the in-process service
        def _call(self, method: str, path: str, params: dict) -> Any:
            calls.append(params["after_id"])
            return c.get(path, params={**params, "limit": 2}, headers=_h(fleet.reader)).json()

    monkeypatch.setattr(field_seal, "field_key", lambda _d=None: fleet.fkey)
    data = field_export.collect(server=Server())
    assert len(data) == 12 and len(calls) == 3 and calls[0] == 0  # pages of 2, 1, then an empty page
    assert routes_field.MAX_BATCHES_PER_PAGE == 50


@pytest.mark.parametrize("answer", [[], "x", {"consent": "yes"}, {"consent": {"consent_id": 5}},
                                    {"consent": {"consent_id": "a" * 16}},  # no key statement
                                    {"consent": {"consent_id": "a" * 16}, "key_statement": {"statement_b64": "!"}}])
def test_hostile_consent_answers_leave_the_hook_idle(tmp_path: Path, answer: Any) -> None:
    hook = FieldHook(tmp_path, "d1")

    class Agent:
        device_path, keyset = "/v1/devices/d1", SimpleNamespace(trusted=lambda: [])

        async def _get_json(self, path: str, max_bytes: int) -> Any:
            return answer

    asyncio.run(hook.sync(Agent()))  # logged, never raised
    hook.add(np.zeros(4), 1, 0)
    hook.close_window()
    assert not hook.active and hook.samples == [] and hook.queue == []
