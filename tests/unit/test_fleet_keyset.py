"""Signing-key rotation chain and operator roles: the pure checks devices and the service run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.errors import UsageError
from tinymlops.fleet import auth, keyset, packages
from tinymlops.fleet.keyset import KeySet, KeyUpdateRejected


def _chain(tmp_path: Path) -> tuple[Ed25519PrivateKey, list[dict], KeySet]:
    """Provision (v0), rotate (v1), rotate revoking the current key (v2) on a registry host in tmp_path."""
    original = packages.signing_key(tmp_path)
    keyset.commit(keyset.plan_rotation(keyset.load_local(tmp_path)))
    keyset.commit(keyset.plan_rotation(keyset.load_local(tmp_path), revoke_current=True))
    local = keyset.load_local(tmp_path)
    return original, local.updates, local.current()


def test_a_device_follows_rotations_and_refuses_the_revoked_key(tmp_path: Path) -> None:
    original, updates, final = _chain(tmp_path)
    device = keyset.apply_chain(KeySet.initial([original.public_key()]), list(updates))
    assert device.version == 2 == final.version
    assert (tmp_path / keyset.ROOT_KEY_FILE).is_file() and packages.key_id(original.public_key()) in device.root
    active = packages.signing_key(tmp_path)
    trusted = {packages.key_id(k) for k in device.trusted()}
    assert packages.key_id(active.public_key()) in trusted and packages.key_id(original.public_key()) in trusted
    (revoked,) = device.revoked
    assert revoked not in trusted and revoked != packages.key_id(active.public_key())
    # the default key new devices are provisioned with is now the root (so they can follow the chain)
    assert packages.load_public_key(tmp_path / keyset.ROOT_PUB_FILE).public_bytes_raw() == \
        original.public_key().public_bytes_raw()


def test_replay_downgrade_gap_and_forgery_are_refused(tmp_path: Path) -> None:
    original, updates, _ = _chain(tmp_path)
    v0 = KeySet.initial([original.public_key()])
    v1 = keyset.apply_update(v0, updates[0])
    v2 = keyset.apply_update(v1, updates[1])
    with pytest.raises(KeyUpdateRejected, match="replay or downgrade"):
        keyset.apply_update(v2, updates[0])
    with pytest.raises(KeyUpdateRejected, match="gap"):
        keyset.apply_update(v0, updates[1])
    # a signing key (not root) cannot sign a key update, even a well-formed one
    rogue = packages.signing_key(tmp_path)
    forged = keyset.sign_update(KeySet(3, dict(v2.root), {**v2.signing}, v2.revoked), rogue)
    with pytest.raises(KeyUpdateRejected, match="not a root key"):
        keyset.apply_update(v2, forged)
    # altering the signed payload (here: un-revoking the revoked key) breaks the signature
    payload = json.loads(updates[1]["payload_json"])
    payload["revoked"] = []
    tampered = {**updates[1], "payload_json": packages.canonical_json(payload).decode()}
    with pytest.raises(KeyUpdateRejected, match="bad signature"):
        keyset.apply_update(v1, tampered)
    # even correctly signed by root, an update may not un-revoke a key
    root = keyset._root_key(keyset.load_local(tmp_path))
    unrevoke = keyset.sign_update(KeySet(3, dict(v2.root), dict(v2.signing), frozenset()), root)
    with pytest.raises(KeyUpdateRejected, match="un-revokes"):
        keyset.apply_update(v2, unrevoke)


def test_registry_side_refuses_unsafe_revocations(tmp_path: Path) -> None:
    packages.signing_key(tmp_path)
    keyset.commit(keyset.plan_rotation(keyset.load_local(tmp_path)))
    local = keyset.load_local(tmp_path)
    with pytest.raises(UsageError, match="signs new packages"):
        keyset.plan_revocation(local, local.active_id())
    with pytest.raises(UsageError, match="not a trusted signing key"):
        keyset.plan_revocation(local, "0" * 16)
    # the root key (the original) only loses its signing role: it still signs key updates
    root_id = next(iter(local.current().root))
    plan = keyset.plan_revocation(local, root_id)
    assert root_id not in plan.key_set.signing and root_id not in plan.key_set.revoked
    assert root_id in plan.key_set.root


def test_operator_roles() -> None:
    assert auth.required_role("GET", "/v1/devices") == "read"
    assert auth.required_role("PUT", "/v1/desired-state") == "deploy"
    assert auth.required_role("POST", "/v1/packages") == "deploy"
    assert auth.required_role("PUT", "/v1/packages/p-1/keys") == "deploy"
    assert auth.required_role("POST", "/v1/devices/d/revoke") == "admin"
    assert auth.required_role("POST", "/v1/key-updates") == "admin"
    assert auth.required_role("POST", "/v1/packages/x") == "admin"  # unknown writes default to admin
    assert auth.role_allows("admin", "deploy") and auth.role_allows("deploy", "read")
    assert not auth.role_allows("read", "deploy") and not auth.role_allows("deploy", "admin")
    assert not auth.role_allows("root", "read")
