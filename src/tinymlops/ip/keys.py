"""The owner's IP secret and authenticated encryption of IP records (watermark keys, fingerprint ledgers).

The secret comes from ``$TINYMLOPS_IP_KEY`` (64 hex digits), ``$TINYMLOPS_IP_KEY_FILE``, or
``<home>/keys/ip_owner.key`` (generated with owner-only permissions on first use). Records are sealed with
AES-256-GCM under a key derived per purpose (HKDF-SHA256); the model name is bound as associated data, so a record
cannot be moved to another model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tinymlops import settings
from tinymlops.errors import ConfigError, UsageError

KEY_FILE = "ip_owner.key"
KEY_BYTES = 32


def _parse_key(text: str, where: str) -> bytes:
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ConfigError(f"{where}: expected {2 * KEY_BYTES} hex digits (a 256-bit IP key)")
    return raw


def owner_secret(create: bool = True) -> bytes:
    """Return the owner's IP secret (environment, key file, or the generated key under ``<home>/keys``)."""
    if os.environ.get("TINYMLOPS_IP_KEY"):
        return _parse_key(os.environ["TINYMLOPS_IP_KEY"], "$TINYMLOPS_IP_KEY")
    explicit = os.environ.get("TINYMLOPS_IP_KEY_FILE")
    path = Path(explicit) if explicit else settings.home() / "keys" / KEY_FILE
    if path.is_file():
        return _parse_key(path.read_text(encoding="utf-8"), str(path))
    if explicit or not create:
        raise ConfigError(f"{path}: IP key file not found (set $TINYMLOPS_IP_KEY_FILE or $TINYMLOPS_IP_KEY)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(KEY_BYTES).hex() + "\n")
    return _parse_key(path.read_text(encoding="utf-8"), str(path))


def key_id(secret: bytes) -> str:
    """Return a short public identifier of a secret (tells a wrong key from a corrupt record)."""
    return hashlib.sha256(b"tinymlops-ip-kid" + secret).hexdigest()[:16]


def derive(secret: bytes, purpose: str) -> bytes:
    """Derive a 256-bit key for one purpose (``watermark``, ``fingerprint/<model>``) from the owner secret."""
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=b"tinymlops-ip-v1", info=purpose.encode()).derive(secret)


def seal(obj: Any, purpose: str, bound_to: str, secret: bytes | None = None) -> bytes:
    """Encrypt a JSON-able object (AES-256-GCM; ``bound_to`` is authenticated as associated data)."""
    secret = secret if secret is not None else owner_secret()
    nonce = os.urandom(12)
    ct = AESGCM(derive(secret, purpose)).encrypt(nonce, json.dumps(obj).encode(), bound_to.encode())
    return json.dumps({"scheme": "aes-256-gcm/hkdf-sha256", "purpose": purpose, "bound_to": bound_to,
                       "key_id": key_id(secret), "nonce_b64": base64.b64encode(nonce).decode(),
                       "ciphertext_b64": base64.b64encode(ct).decode()}).encode()


def unseal(blob: bytes, purpose: str, bound_to: str, secret: bytes | None = None, where: str = "record") -> Any:
    """Decrypt a sealed record; raise UsageError naming the record when the key or binding is wrong."""
    secret = secret if secret is not None else owner_secret(create=False)
    try:
        env = json.loads(blob)
        nonce, ct = base64.b64decode(env["nonce_b64"]), base64.b64decode(env["ciphertext_b64"])
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{where}: not a sealed IP record") from None
    if env.get("key_id") != key_id(secret):
        raise UsageError(f"{where}: sealed under IP key {env.get('key_id')}, but the configured key is "
                         f"{key_id(secret)} (set $TINYMLOPS_IP_KEY_FILE to the owner's key)")
    try:
        plain = AESGCM(derive(secret, purpose)).decrypt(nonce, ct, bound_to.encode())
    except InvalidTag:
        raise UsageError(f"{where}: record does not authenticate for {bound_to!r} (tampered or another model's)"
                         ) from None
    return json.loads(plain)
