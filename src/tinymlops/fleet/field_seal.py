"""Sealing consented field samples: only the registry host can read them; the service stores ciphertext.

* The registry host keeps an X25519 **field key** (``<home>/keys/field_x25519.key``, 0600). Its public half goes to
  the service in a *statement* signed with the package signing key, so a device encrypts only to a key the
  registry vouched for (a service that swapped in its own key would fail the device's signature check).
* A device seals each window's reservoir for that key alone (ECIES like package keys: ephemeral X25519, HKDF-SHA256
  bound to device id, batch sequence and consent id, AES-256-GCM). The associated data binds the metadata the
  service sees (device, sequence, consent, count, key), so the service cannot relabel or reorder batches.
* The plaintext is a small JSON header (shape, labels, predictions, window) followed by float32 values; the opener
  bounds every size before it allocates (:data:`MAX_SAMPLES`, :data:`MAX_VALUES_PER_SAMPLE`).
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ALG = "X25519-HKDF-SHA256/A256GCM"
PURPOSE = "tinymlops.field-key/1"
FIELD_KEY_FILE = "field_x25519.key"
MAX_SAMPLES = 256  # per sealed batch (one window's reservoir)
MAX_VALUES_PER_SAMPLE = 65536
MAX_HEADER_BYTES = 16384
MAX_PLAINTEXT_BYTES = 1024 * 1024  # one batch: 256 windows of 1024 float32 values fit
MAX_CIPHERTEXT_BYTES = 60 + MAX_PLAINTEXT_BYTES  # what a service accepts per batch


class SealError(Exception):
    """A sealed batch or key statement is malformed, not for this key, or tampered with."""


def _raw(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public_raw: bytes) -> str:
    """Return the short fingerprint of a field public key (first 16 hex of its SHA-256)."""
    import hashlib

    return hashlib.sha256(public_raw).hexdigest()[:16]


def field_key(directory: Path | None = None) -> X25519PrivateKey:
    """Return the registry host's field key, creating it (mode 0600) on first use."""
    from tinymlops.fleet.crypto import x25519_key
    from tinymlops.fleet.packages import keys_dir

    return x25519_key((directory or keys_dir()) / FIELD_KEY_FILE)


def key_statement(key: X25519PrivateKey, signer: Ed25519PrivateKey) -> dict[str, str]:
    """Return the signed statement that vouches for the field key's public half (what the service relays)."""
    raw = _raw(key.public_key())
    body = json.dumps({"purpose": PURPOSE, "alg": ALG, "public_b64": base64.b64encode(raw).decode(),
                       "key_id": key_id_of(raw), "created_unix_s": round(time.time(), 3)},
                      sort_keys=True, separators=(",", ":")).encode()
    return {"statement_b64": base64.b64encode(body).decode(), "signature_b64": base64.b64encode(signer.sign(body)).decode()}


@dataclass(frozen=True)
class FieldKey:
    """A verified field public key."""

    key_id: str
    public_raw: bytes


def verify_statement(statement: object, trusted: list[Ed25519PublicKey]) -> FieldKey:
    """Check a key statement's signature against the device's trusted signing keys (SealError if it fails)."""
    if not isinstance(statement, dict):
        raise SealError("field key statement is not an object")
    try:
        body = base64.b64decode(str(statement.get("statement_b64", ""))[:4096], validate=True)
        sig = base64.b64decode(str(statement.get("signature_b64", ""))[:256], validate=True)
    except ValueError:
        raise SealError("field key statement is not base64") from None
    for k in trusted:
        try:
            k.verify(sig, body)
            break
        except InvalidSignature:
            continue
    else:
        raise SealError("field key statement is not signed by a trusted key")
    try:
        doc = json.loads(body)
        raw = base64.b64decode(doc["public_b64"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise SealError("field key statement is malformed") from None
    if doc.get("purpose") != PURPOSE or doc.get("alg") != ALG or len(raw) != 32 or doc.get("key_id") != key_id_of(raw):
        raise SealError("field key statement names another purpose, algorithm or key")
    return FieldKey(doc["key_id"], raw)


def _aad(device_id: str, seq: int, consent_id: str, count: int, key_id: str) -> bytes:
    return json.dumps([device_id, seq, consent_id, count, key_id], separators=(",", ":")).encode()


def _kek(shared: bytes, eph_pub: bytes, pub: bytes, device_id: str, seq: int, consent_id: str) -> bytes:
    info = f"tinymlops.field/1|{device_id}|{seq}|{consent_id}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + pub, info=info).derive(shared)


def seal(key: FieldKey, device_id: str, seq: int, consent_id: str, X: np.ndarray, labels: list[int],
         predictions: list[int], window: tuple[float, float]) -> dict[str, Any]:
    """Encrypt one window's labelled samples for the field key; return the upload body."""
    X = np.ascontiguousarray(X, dtype="<f4")
    n = len(labels)
    if X.shape[0] != n or len(predictions) != n or not 0 < n <= MAX_SAMPLES:
        raise SealError(f"a batch holds 1..{MAX_SAMPLES} samples with one label and prediction each")
    header = json.dumps({"shape": list(X.shape), "labels": labels, "predictions": predictions,
                         "window": [float(window[0]), float(window[1])]}, separators=(",", ":")).encode()
    plaintext = struct.pack("<I", len(header)) + header + X.tobytes()
    if len(plaintext) > MAX_PLAINTEXT_BYTES or len(header) > MAX_HEADER_BYTES:
        raise SealError(f"a batch of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT_BYTES}: use a smaller reservoir")
    eph = X25519PrivateKey.generate()
    eph_pub = _raw(eph.public_key())
    kek = _kek(eph.exchange(X25519PublicKey.from_public_bytes(key.public_raw)), eph_pub, key.public_raw, device_id,
               seq, consent_id)
    nonce = os.urandom(12)
    ct = AESGCM(kek).encrypt(nonce, plaintext, _aad(device_id, seq, consent_id, n, key.key_id))
    return {"seq": seq, "consent_id": consent_id, "count": n, "key_id": key.key_id,
            "window_start_unix_s": float(window[0]), "window_end_unix_s": float(window[1]),
            "ciphertext_b64": base64.b64encode(eph_pub + nonce + ct).decode()}


@dataclass(frozen=True)
class OpenedBatch:
    """A decrypted batch: raw inputs (n x window shape), true labels and the device's predictions."""

    X: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    window: tuple[float, float]


def open_batch(key: X25519PrivateKey, blob: bytes, device_id: str, seq: int, consent_id: str, count: int,
               key_id: str) -> OpenedBatch:
    """Decrypt and check one stored batch with the registry's field key (SealError if anything is off)."""
    pub = _raw(key.public_key())
    if key_id != key_id_of(pub):
        raise SealError(f"batch was sealed for field key {key_id}, this host holds {key_id_of(pub)}")
    if not 44 < len(blob) <= MAX_CIPHERTEXT_BYTES:
        raise SealError(f"sealed batch of {len(blob)} bytes")
    eph_pub, nonce, ct = blob[:32], blob[32:44], blob[44:]
    try:
        kek = _kek(key.exchange(X25519PublicKey.from_public_bytes(eph_pub)), eph_pub, pub, device_id, seq, consent_id)
        plain = AESGCM(kek).decrypt(nonce, ct, _aad(device_id, seq, consent_id, count, key_id))
    except Exception:  # InvalidTag, a low-order point
        raise SealError("batch does not decrypt (tampered, or not sealed for this device/sequence/consent)") from None
    try:
        (hlen,) = struct.unpack_from("<I", plain)
        if hlen > MAX_HEADER_BYTES:
            raise ValueError("header too large")
        h = json.loads(plain[4:4 + hlen])
        shape = [int(v) for v in h["shape"]]
        labels = np.asarray(h["labels"], dtype=np.int64)
        preds = np.asarray(h["predictions"], dtype=np.int64)
        window = (float(h["window"][0]), float(h["window"][1]))
    except (ValueError, KeyError, TypeError, IndexError, struct.error):
        raise SealError("batch plaintext is malformed") from None
    per_sample = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if (not shape or shape[0] != count or len(labels) != count or len(preds) != count or len(shape) > 4
            or min(shape) < 1 or per_sample > MAX_VALUES_PER_SAMPLE or len(plain) != 4 + hlen + 4 * count * per_sample):
        raise SealError("batch plaintext does not match its declared count and shape")
    X = np.frombuffer(plain, dtype="<f4", offset=4 + hlen).reshape(shape).astype(np.float32)
    if not np.all(np.isfinite(X)) or (labels < 0).any() or (preds < 0).any():
        raise SealError("batch holds non-finite values or negative labels")
    return OpenedBatch(X, labels, preds, window)
