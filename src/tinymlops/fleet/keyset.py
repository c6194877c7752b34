"""Signing-key rotation and revocation (TUF-style roles): a chain of signed, numbered key-set updates.

A key set names two roles: **root** keys may sign the next key-set update; **signing** keys may sign packages
(and rollback authorisations). ``revoked`` key ids are never trusted again. Version 0 is what a device was
provisioned with (``--trusted-key``): those keys hold both roles. Update ``n`` is valid on a device at version
``n - 1`` only if its version is exactly ``n`` (an old update replayed, a downgrade or a gap is refused), a root key
of version ``n - 1`` signed it, every key id matches its key, and it keeps every earlier revocation.

On the registry host (:func:`plan_rotation`, :func:`plan_revocation`, :func:`commit`): the first rotation moves
the original key to ``root.key`` (it then signs only key updates and can be moved offline) and makes a new
``package_signing.key``; older signing keys stay trusted (installed packages keep verifying) until revoked.
The chain lives in ``<home>/keys/keyset.json``; the fleet service relays it, devices verify every link.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tinymlops.errors import UsageError
from tinymlops.fleet import packages
from tinymlops.fleet.packages import PackageRejected, canonical_json, key_id, parse_manifest

SCHEMA = "tinymlops.keyset/1"
CHAIN_FILE = "keyset.json"
ROOT_KEY_FILE = "root.key"
ROOT_PUB_FILE = "root.pub"
MAX_KEYS = 64


class KeyUpdateRejected(Exception):
    """A key-set update failed verification; the message says why."""


def _raw_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


@dataclass(frozen=True)
class KeySet:
    """Who is trusted for what at one version of the chain."""

    version: int
    root: dict[str, Ed25519PublicKey]
    signing: dict[str, Ed25519PublicKey]
    revoked: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def initial(cls, keys: list[Ed25519PublicKey]) -> KeySet:
        """Return version 0: the provisioned keys, trusted as root and for signing."""
        by_id = {key_id(k): k for k in keys}
        return cls(0, dict(by_id), dict(by_id))

    def trusted(self) -> list[Ed25519PublicKey]:
        """Return the keys packages may be signed with."""
        return [k for kid, k in self.signing.items() if kid not in self.revoked]

    def payload(self) -> dict[str, Any]:
        """Return the JSON form (what an update signs, and what a device stores)."""
        return {"schema": SCHEMA, "version": self.version,
                "root": [{"key_id": i, "public_b64": _raw_b64(k)} for i, k in sorted(self.root.items())],
                "signing": [{"key_id": i, "public_b64": _raw_b64(k)} for i, k in sorted(self.signing.items())],
                "revoked": sorted(self.revoked)}

    @classmethod
    def from_payload(cls, payload: object) -> KeySet:
        """Parse a key set's JSON form (KeyUpdateRejected if malformed)."""
        if not isinstance(payload, dict) or payload.get("schema") != SCHEMA:
            raise KeyUpdateRejected(f"not a {SCHEMA} key set")
        version, revoked = payload.get("version"), payload.get("revoked")
        if type(version) is not int or not 0 <= version < 2**31:
            raise KeyUpdateRejected("key set version must be a non-negative integer")
        if not isinstance(revoked, list) or len(revoked) > 10 * MAX_KEYS or not all(
                isinstance(r, str) and len(r) <= 32 for r in revoked):
            raise KeyUpdateRejected("key set revoked must be a list of key ids")
        return cls(version, _keys(payload.get("root"), "root"), _keys(payload.get("signing"), "signing"),
                   frozenset(revoked))


def _keys(entries: object, role: str) -> dict[str, Ed25519PublicKey]:
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_KEYS:
        raise KeyUpdateRejected(f"key set {role} must list 1-{MAX_KEYS} keys")
    out: dict[str, Ed25519PublicKey] = {}
    for e in entries:
        try:
            raw = base64.b64decode(str(e["public_b64"]), validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (KeyError, TypeError, ValueError):
            raise KeyUpdateRejected(f"key set {role} holds a malformed key") from None
        if e.get("key_id") != key_id(key):
            raise KeyUpdateRejected(f"key set {role} key id {str(e.get('key_id'))[:40]!r} does not match its key")
        out[key_id(key)] = key
    return out


def sign_update(next_set: KeySet, root_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return the signed update that moves devices to ``next_set`` (signed by a root key of the previous set)."""
    body = canonical_json({**next_set.payload(), "created_unix_s": time.time()})
    return {"payload_json": body.decode(), "key_id": key_id(root_key.public_key()),
            "signature_b64": base64.b64encode(root_key.sign(body)).decode()}


def apply_update(current: KeySet, update: object) -> KeySet:
    """Return the key set after ``update`` if it is the valid next link of the chain (KeyUpdateRejected if not)."""
    if not isinstance(update, dict):
        raise KeyUpdateRejected("key update is not an object")
    try:
        body = str(update["payload_json"]).encode("utf-8")
        sig = base64.b64decode(str(update["signature_b64"]), validate=True)
        payload = parse_manifest(body)
    except (KeyError, ValueError, PackageRejected):
        raise KeyUpdateRejected("malformed key update") from None
    nxt = KeySet.from_payload(payload)
    if nxt.version != current.version + 1:
        what = "an old update (replay or downgrade)" if nxt.version <= current.version else "a gap in the chain"
        raise KeyUpdateRejected(f"key update version {nxt.version} after {current.version}: {what}")
    kid = update.get("key_id")
    signer = current.root.get(kid) if isinstance(kid, str) and kid not in current.revoked else None
    if signer is None:
        raise KeyUpdateRejected(f"key update {nxt.version} signed by {str(kid)[:40]!r}, not a root key of "
                                f"version {current.version}")
    try:
        signer.verify(sig, body)
    except InvalidSignature:
        raise KeyUpdateRejected(f"key update {nxt.version} has a bad signature") from None
    if not current.revoked <= nxt.revoked:
        raise KeyUpdateRejected(f"key update {nxt.version} un-revokes a key")
    if nxt.revoked & (set(nxt.root) | set(nxt.signing)):
        raise KeyUpdateRejected(f"key update {nxt.version} trusts a revoked key")
    return nxt


def apply_chain(current: KeySet, updates: list[object]) -> KeySet:
    """Apply updates in order (KeyUpdateRejected at the first bad link)."""
    for u in updates:
        current = apply_update(current, u)
    return current


# --------------------------------------------------------------------------------------------------------------
# registry host: <home>/keys/{root.key, package_signing.key, keyset.json}
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LocalKeys:
    """The registry host's chain: the version-0 key and the signed updates since."""

    directory: Path
    initial: Ed25519PublicKey
    updates: list[dict[str, Any]]

    def current(self) -> KeySet:
        try:
            return apply_chain(KeySet.initial([self.initial]), list(self.updates))
        except KeyUpdateRejected as exc:
            raise UsageError(f"{self.directory / CHAIN_FILE}: key chain does not verify: {exc}") from None

    def active_id(self) -> str:
        return key_id(packages.signing_key(self.directory).public_key())


def load_local(directory: Path | None = None) -> LocalKeys:
    """Return the registry host's key chain (version 0 is today's signing key before the first rotation)."""
    d = directory or packages.keys_dir()
    path = d / CHAIN_FILE
    if not path.is_file():
        return LocalKeys(d, packages.signing_key(d).public_key(), [])
    try:
        data = json.loads(path.read_text())
        initial = Ed25519PublicKey.from_public_bytes(base64.b64decode(data["initial_b64"], validate=True))
        updates = data["updates"]
        if not isinstance(updates, list):
            raise TypeError("updates is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a key chain file: {exc}") from None
    return LocalKeys(d, initial, updates)


def _root_key(local: LocalKeys) -> Ed25519PrivateKey:
    path = local.directory / ROOT_KEY_FILE
    if path.is_file():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise UsageError(f"{path}: not an Ed25519 private key")
        return key
    return packages.signing_key(local.directory)  # before the first rotation the signing key is the root


@dataclass
class Plan:
    """A signed update not yet committed locally (publish it first, then :func:`commit`)."""

    local: LocalKeys
    update: dict[str, Any]
    new_signing_key: Ed25519PrivateKey | None = None

    @property
    def key_set(self) -> KeySet:
        return KeySet.from_payload(json.loads(self.update["payload_json"]))


def plan_rotation(local: LocalKeys, revoke_current: bool = False) -> Plan:
    """Plan a new signing key (older ones stay trusted unless ``revoke_current`` revokes today's)."""
    cur, root = local.current(), _root_key(local)
    new = Ed25519PrivateKey.generate()
    signing = {**cur.signing, key_id(new.public_key()): new.public_key()}
    revoked = set(cur.revoked)
    if revoke_current:
        active = local.active_id()
        if active in cur.root:
            raise UsageError(f"key {active} is the root key: it cannot be revoked (rotate without --revoke-current)")
        signing.pop(active, None)
        revoked.add(active)
    nxt = KeySet(cur.version + 1, dict(cur.root), signing, frozenset(revoked))
    return Plan(local, sign_update(nxt, root), new)


def plan_revocation(local: LocalKeys, kid: str) -> Plan:
    """Plan revoking a signing key: packages it signed are refused from then on.

    The root key cannot be revoked (no root rotation): revoking it only removes its signing role.
    """
    cur = local.current()
    if kid not in cur.signing:
        raise UsageError(f"key {kid!r} is not a trusted signing key (see `tinymlops keys list`)")
    if kid == local.active_id():
        raise UsageError(f"key {kid} signs new packages: run `tinymlops keys rotate --revoke-current` instead")
    if len(cur.signing) == 1:
        raise UsageError(f"key {kid} is the only signing key")
    signing = {k: v for k, v in cur.signing.items() if k != kid}
    revoked = cur.revoked if kid in cur.root else cur.revoked | {kid}
    return Plan(local, sign_update(KeySet(cur.version + 1, dict(cur.root), signing, frozenset(revoked)),
                                   _root_key(local)))


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    tmp.replace(path)


def commit(plan: Plan) -> KeySet:
    """Record a planned update on the registry host (and install its new signing key); return the new key set."""
    from tinymlops.fleet.install import atomic_write

    d = plan.local.directory
    if not (d / ROOT_KEY_FILE).is_file():  # first rotation: today's key becomes the root (signs key updates only)
        root = packages.signing_key(d)
        _write_private(d / ROOT_KEY_FILE, root)
        (d / ROOT_PUB_FILE).write_bytes(packages.public_key_pem(root.public_key()))
    chain = {"initial_b64": _raw_b64(plan.local.initial), "updates": [*plan.local.updates, plan.update]}
    atomic_write(d / CHAIN_FILE, json.dumps(chain, indent=1).encode())
    if plan.new_signing_key is not None:
        _write_private(d / packages.PRIVATE_KEY_FILE, plan.new_signing_key)
        (d / packages.PUBLIC_KEY_FILE).write_bytes(packages.public_key_pem(plan.new_signing_key.public_key()))
    return plan.key_set
