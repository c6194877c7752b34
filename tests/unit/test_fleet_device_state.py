"""A device following the key chain from untrusted server answers: good links applied and kept, bad ones refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tinymlops.fleet import device_state, keyset, packages
from tinymlops.fleet.answers import BadAnswer


def _follow(state: Path, current: keyset.KeySet, answer: Any) -> keyset.KeySet:
    asked: list[str] = []

    async def get_json(path: str, max_bytes: int) -> Any:
        asked.append(path)
        return answer

    out = asyncio.run(device_state.follow_keys(get_json, "/v1/devices/d", state, current))
    assert asked == [f"/v1/devices/d/key-updates?since={current.version}"]
    return out


def test_follow_keys_applies_verified_links_persists_them_and_stops_at_a_forged_one(tmp_path: Path) -> None:
    reg, state = tmp_path / "registry", tmp_path / "device"
    reg.mkdir()
    state.mkdir()
    original = packages.signing_key(reg)
    for _ in range(2):
        keyset.commit(keyset.plan_rotation(keyset.load_local(reg)))
    updates = keyset.load_local(reg).updates
    v0 = device_state.load_keyset(state, [original.public_key()])
    assert v0.version == 0
    # a forged third link (signed by a signing key, not the root) after two good ones
    good2 = keyset.apply_chain(v0, list(updates))
    forged = keyset.sign_update(keyset.KeySet(3, dict(good2.root), dict(good2.signing)), packages.signing_key(reg))
    got = _follow(state, v0, [*updates, forged])
    assert got.version == 2
    reloaded = device_state.load_keyset(state, [original.public_key()])  # what a restarted agent trusts
    assert reloaded.version == 2 and set(reloaded.signing) == set(good2.signing)
    assert {packages.key_id(k) for k in reloaded.trusted()} == set(good2.signing)
    # nothing new, a replay of old links, garbage: the key set stays where it is
    assert _follow(state, reloaded, []).version == 2
    assert _follow(state, reloaded, updates).version == 2
    assert _follow(state, reloaded, [{"payload_json": "[" * 5000}, 7]).version == 2
    with pytest.raises(BadAnswer):
        _follow(state, reloaded, {"not": "a list"})
    # a corrupted key-set file falls back to the provisioned keys (logged), never to "trust nothing" or a crash
    (state / device_state.KEYSET_FILE).write_text(json.dumps({"schema": "x"}))
    assert device_state.load_keyset(state, [original.public_key()]).version == 0


def test_credential_rotation_is_due_by_age() -> None:
    import time

    assert not device_state.rotation_due({"issued_unix_s": time.time()}, 3600)
    assert device_state.rotation_due({"issued_unix_s": time.time() - 7200}, 3600)
    assert device_state.rotation_due({}, 3600)  # unknown age (a credential from an older agent): rotate
    assert not device_state.rotation_due({}, None)
