"""The agent's licence hook: unlicensed packages untouched, licensed ones gated, hostile server answers harmless."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.fleet.agent_licence import LicenceHook, MeteredRunner
from tinymlops.licensing import tokens
from tinymlops.licensing.meter import LicenceRefused


class Runner:
    calls = 0

    def timed_predict(self, x: Any) -> tuple[Any, float]:
        Runner.calls += 1
        return x, 0.1

    def close(self) -> None:
        pass


class Answer:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code, self._body, self.text = status, body, str(body)[:100]

    def json(self) -> Any:
        return self._body


class FakeAgent:
    """What LicenceHook.sync uses of an Agent, answering with whatever a (possibly hostile) server says."""

    def __init__(self, installed: Any, licences: Any, receipts: Any = None) -> None:
        self.installed, self.device_path = installed, "/v1/devices/dev-1"
        self.licences, self.receipts = licences, receipts
        self.sent: list[Any] = []
        self.client = SimpleNamespace(put=self._put, post=self._post)

    def _url(self, path: str) -> str:
        return path

    def _headers(self) -> dict[str, str]:
        return {}

    async def _put(self, url: str, **kw: Any) -> Answer:
        return Answer(200, {"registered": True})

    async def _post(self, url: str, json: Any, **kw: Any) -> Answer:
        import json as json_module

        self.sent.append(json)
        if self.receipts is not None:
            return Answer(200, self.receipts)
        return Answer(200, {"acked_seq": json_module.loads(json["receipts"][-1]["r"])["seq"], "findings": []})

    async def _get_json(self, path: str, max_bytes: int) -> Any:
        return self.licences


def _installed(licensed: bool) -> Any:
    return SimpleNamespace(manifest={"model_name": "kws", **({"licence_required": True} if licensed else {})})


@pytest.fixture
def vendor() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _hook(tmp_path: Path, vendor: Ed25519PrivateKey) -> LicenceHook:
    return LicenceHook(SimpleNamespace(root=tmp_path, trusted_keys=[vendor.public_key()]), "dev-1")


def test_unlicensed_packages_are_untouched(tmp_path: Path, vendor: Ed25519PrivateKey) -> None:
    hook = _hook(tmp_path, vendor)
    r = Runner()
    assert hook.wrap(r, _installed(False)) is r and hook.admit(_installed(False))
    assert not (tmp_path / "licence").exists()  # nothing written until the first sync


def test_licensed_package_needs_a_licence_then_counts(tmp_path: Path, vendor: Ed25519PrivateKey,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    hook = _hook(tmp_path, vendor)
    wrapped = hook.wrap(Runner(), _installed(True))
    assert isinstance(wrapped, MeteredRunner)
    with caplog.at_level(logging.ERROR, "tinymlops.agent"):
        assert [hook.admit(_installed(True)) for _ in range(5)] == [False] * 5
    assert sum("holds none" in r.message for r in caplog.records) == 1  # said once, not per window
    with pytest.raises(LicenceRefused):
        wrapped.timed_predict(1)
    meter = hook.meter()
    assert meter is not None
    tok = tokens.issue(vendor, device_id="dev-1", device_key_id=meter.device_key_id, model_name="kws",
                       kind="per-query", count=3, sequence=1)
    agent = FakeAgent(_installed(True), {"licences": [tok]})
    asyncio.run(hook.sync(agent))
    assert hook.admit(_installed(True))
    Runner.calls = 0
    for _ in range(3):
        wrapped.timed_predict(1)
    with pytest.raises(LicenceRefused, match="used up: 3 of 3"):
        wrapped.timed_predict(1)
    assert Runner.calls == 3 and not hook.admit(_installed(True))
    asyncio.run(hook.sync(agent))  # uploads the receipts; the acknowledgement drops them
    assert agent.sent and meter.chain.pending == []


@pytest.mark.parametrize("answer", [
    None, [], {"licences": "x"}, {"licences": [1, "x", {"payload_json": "[" * 4000, "signature_b64": ""}]},
    {"licences": [{"payload_json": "{}", "signature_b64": "!!"}] * 1500},
])
def test_hostile_licence_answers_change_nothing(tmp_path: Path, vendor: Ed25519PrivateKey, answer: Any) -> None:
    hook = _hook(tmp_path, vendor)
    asyncio.run(hook.sync(FakeAgent(_installed(True), answer)))  # logged, never raised
    meter = hook.meter()
    assert meter is not None and meter.licences == {} and not hook.admit(_installed(True))


def test_hostile_receipt_answers_keep_the_receipts(tmp_path: Path, vendor: Ed25519PrivateKey) -> None:
    hook = _hook(tmp_path, vendor)
    for answer in ({"acked_seq": "all"}, {"acked_seq": 10**12, "findings": "x"}, [], {"findings": [1] * 10}):
        asyncio.run(hook.sync(FakeAgent(_installed(True), {"licences": []}, answer)))
    meter = hook.meter()
    assert meter is not None
    # an acknowledgement beyond what was sent acknowledges only what was sent
    assert meter.chain.acked_seq <= meter.chain.state.seq
