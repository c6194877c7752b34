"""Licence tokens: what a device may run, how much and until when, signed on the registry host.

A token is canonical JSON (schema ``tinymlops.licence/1``) plus an Ed25519 signature by a key the device already
trusts for packages (``package_signing.key``, never on the fleet server: a compromised server cannot mint
licences). The schema field keeps a token from ever being taken for a manifest or a rollback authorisation.
Fields: ``licence_id``, ``device_id`` and ``device_key_id`` (the device's receipt key: the licence is bound to the
device that signs its usage), ``model_name``, ``kind``, ``count`` (per-query), ``grace_count``, ``expires_unix_s``,
``grace_s``, ``sequence`` (per device, strictly increasing: a device accepts a new licence only above the highest
one it accepted), ``customer`` and ``issued_unix_s``.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SCHEMA = "tinymlops.licence/1"
KINDS = ("per-query", "subscription", "unlimited")
MAX_TOKEN_BYTES = 4096
MAX_COUNT = 10**15
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_HEX = re.compile(r"^[0-9a-f]+$")


class LicenceInvalid(ValueError):
    """A licence token is malformed, not signed by a trusted key, or not for this device."""


def canonical(obj: Any) -> bytes:
    """Serialise deterministically (sorted keys, no whitespace, no NaN) for signing and hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return the 16-hex fingerprint of an Ed25519 public key (same as the package signing key ids)."""
    from tinymlops.fleet.packages import key_id as package_key_id

    return package_key_id(public_key)


@dataclass(frozen=True)
class Licence:
    """A verified licence (what the device and the service act on)."""

    licence_id: str
    device_id: str
    device_key_id: str
    model_name: str
    kind: str
    count: int | None
    grace_count: int
    expires_unix_s: float | None
    grace_s: float
    sequence: int
    customer: str
    issued_unix_s: float
    key_id: str

    @property
    def limit(self) -> int | None:
        """Return the most inferences the device may serve under it (count + grace), None if uncounted."""
        return None if self.count is None else self.count + self.grace_count

    def ends_unix_s(self) -> float | None:
        """Return when the device must stop serving under it (expiry + grace), None if it never expires."""
        return None if self.expires_unix_s is None else self.expires_unix_s + self.grace_s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(v: object) -> float | None:
    """Return a JSON number as a float (None for anything else, booleans included)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def parse_payload(payload: object) -> Licence:
    """Check a token payload's fields, types and bounds; return the licence (LicenceInvalid says what is wrong)."""
    if not isinstance(payload, dict) or payload.get("schema") != SCHEMA:
        raise LicenceInvalid(f"not a {SCHEMA} token")
    p = payload
    for k in ("licence_id", "device_key_id", "key_id"):
        if not isinstance(p.get(k), str) or not _HEX.fullmatch(p[k]) or not 16 <= len(p[k]) <= 64:
            raise LicenceInvalid(f"licence field {k!r} must be 16-64 lowercase hex digits")
    for k in ("device_id", "model_name"):
        if not isinstance(p.get(k), str) or not _NAME.fullmatch(p[k]):
            raise LicenceInvalid(f"licence field {k!r} must be a plain name of 1-128 characters")
    if not isinstance(p.get("customer"), str) or len(p["customer"]) > 128:
        raise LicenceInvalid("licence field 'customer' must be a string of at most 128 characters")
    kind = p.get("kind")
    if kind not in KINDS:
        raise LicenceInvalid(f"licence kind {str(kind)[:40]!r}: expected one of {', '.join(KINDS)}")
    count, grace = p.get("count"), p.get("grace_count")
    if kind == "per-query":
        if type(count) is not int or not 0 < count <= MAX_COUNT:
            raise LicenceInvalid("a per-query licence needs a positive integer count")
    elif count is not None:
        raise LicenceInvalid(f"a {kind} licence has no count")
    if type(grace) is not int or not 0 <= grace <= MAX_COUNT:
        raise LicenceInvalid("licence grace_count must be a non-negative integer")
    expires, grace_s = _num(p.get("expires_unix_s")), _num(p.get("grace_s"))
    if kind == "subscription" and p.get("expires_unix_s") is None:
        raise LicenceInvalid("a subscription licence needs an expiry")
    if kind == "unlimited" and p.get("expires_unix_s") is not None:
        raise LicenceInvalid("an unlimited licence has no expiry")
    if p.get("expires_unix_s") is not None and (expires is None or not 0 < expires < 1e11):
        raise LicenceInvalid("licence expires_unix_s must be a unix time")
    if grace_s is None or not 0 <= grace_s <= 365 * 86400:
        raise LicenceInvalid("licence grace_s must be 0-31536000 seconds")
    seq, issued = p.get("sequence"), _num(p.get("issued_unix_s"))
    if type(seq) is not int or not 0 < seq < 2**53:
        raise LicenceInvalid("licence sequence must be a positive integer")
    if issued is None or not 0 < issued < 1e11:
        raise LicenceInvalid("licence issued_unix_s must be a unix time")
    return Licence(p["licence_id"], p["device_id"], p["device_key_id"], p["model_name"], kind, count, grace,
                   expires, grace_s, seq, p["customer"], issued, p["key_id"])


def issue(key: Ed25519PrivateKey, *, device_id: str, device_key_id: str, model_name: str, kind: str,
          sequence: int, count: int | None = None, grace_count: int = 0, expires_unix_s: float | None = None,
          grace_s: float = 0.0, customer: str = "", now: float | None = None) -> dict[str, str]:
    """Sign a licence; return the token ``{"payload_json", "signature_b64"}`` (LicenceInvalid if a field is wrong)."""
    payload = {"schema": SCHEMA, "licence_id": uuid.uuid4().hex, "device_id": device_id,
               "device_key_id": device_key_id, "model_name": model_name, "kind": kind, "count": count,
               "grace_count": grace_count, "expires_unix_s": expires_unix_s, "grace_s": float(grace_s),
               "sequence": sequence, "customer": customer, "issued_unix_s": time.time() if now is None else now,
               "key_id": key_id(key.public_key())}
    parse_payload(payload)
    body = canonical(payload)
    return {"payload_json": body.decode(), "signature_b64": base64.b64encode(key.sign(body)).decode()}


def verify(token: object, trusted_keys: list[Ed25519PublicKey]) -> Licence:
    """Verify a token's signature against trusted keys and its fields; return the licence (LicenceInvalid if not)."""
    from tinymlops.fleet.safejson import UnsafeJSON, loads_bounded

    if not isinstance(token, dict) or not isinstance(token.get("payload_json"), str) \
            or not isinstance(token.get("signature_b64"), str):
        raise LicenceInvalid("licence token must carry payload_json and signature_b64 strings")
    body = token["payload_json"].encode("utf-8", "replace")
    try:
        payload = loads_bounded(body, MAX_TOKEN_BYTES)
        signature = base64.b64decode(token["signature_b64"], validate=True)
    except (UnsafeJSON, ValueError) as exc:
        raise LicenceInvalid(f"licence token is not readable: {exc}") from None
    if not isinstance(payload, dict) or canonical(payload) != body:
        raise LicenceInvalid("licence payload is not canonical JSON")
    lic = parse_payload(payload)
    key = {key_id(k): k for k in trusted_keys}.get(lic.key_id)
    if key is None:
        raise LicenceInvalid(f"licence signed by an untrusted key {lic.key_id!r}")
    try:
        key.verify(signature, body)
    except InvalidSignature:
        raise LicenceInvalid("licence has a bad signature (altered, or signed with another key)") from None
    return lic
