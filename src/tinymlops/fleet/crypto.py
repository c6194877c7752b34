"""Per-device model encryption: the model's IP stays ciphertext everywhere but inside the device that runs it.

* Each device makes an X25519 key pair at enrolment (``<state>/device_x25519.key``, mode 0600, never sent); the
  service stores only its public key.
* A package built with ``encrypt=True`` carries the artifact encrypted once with a random AES-256-GCM content key
  (CEK); the signed manifest names the plaintext's and the ciphertext's sha256. The CEK stays on the registry host
  (``<home>/keys/content/<package_id>.key``, 0600); the service and its database hold only ciphertext.
* When a device is assigned the package, the operator side wraps the CEK for that device alone (ECIES: ephemeral
  X25519, HKDF-SHA256 bound to device id and package id, AES-256-GCM) and uploads the wrap. Another device — or an
  attacker holding the captured ciphertext, wrap and manifest — cannot unwrap it.
* The device unwraps and decrypts into memory when it opens the model (a 0600 file removed as soon as the runtime
  has loaded it, for runtimes that only open paths).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ALG = "X25519-HKDF-SHA256/A256GCM"
DEVICE_KEY_FILE = "device_x25519.key"
_ARTIFACT_AAD = b"tinymlops.artifact/1"


class DecryptionFailed(Exception):
    """The content key or artifact cannot be decrypted with this device's key (not assigned, or tampered)."""


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def device_key(state_dir: Path) -> X25519PrivateKey:
    """Return the device's X25519 private key, creating it (mode 0600) on first use."""
    return x25519_key(Path(state_dir) / DEVICE_KEY_FILE)


def x25519_key(path: Path) -> X25519PrivateKey:
    """Return the raw X25519 private key stored at ``path``, creating it (mode 0600, fsynced) on first use."""
    if path.is_file():
        return X25519PrivateKey.from_private_bytes(path.read_bytes())
    key = X25519PrivateKey.generate()
    _write_private(path, key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                           serialization.NoEncryption()))
    return key


def public_b64(key: X25519PrivateKey) -> str:
    """Return the base64 of a private key's raw public key (what the device sends at enrolment)."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def encrypt_artifact(artifact: bytes) -> tuple[bytes, bytes]:
    """Encrypt a model once with a fresh AES-256-GCM content key; return (nonce + ciphertext, content key)."""
    cek, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    return nonce + AESGCM(cek).encrypt(nonce, artifact, _ARTIFACT_AAD), cek


def decrypt_artifact(blob: bytes, cek: bytes) -> bytes:
    """Decrypt what :func:`encrypt_artifact` produced (DecryptionFailed if the key or bytes are wrong)."""
    try:
        return AESGCM(cek).decrypt(blob[:12], blob[12:], _ARTIFACT_AAD)
    except Exception:  # InvalidTag, wrong key length
        raise DecryptionFailed("artifact does not decrypt with this content key") from None


def _kek(shared: bytes, eph_pub: bytes, dev_pub: bytes, device_id: str, package_id: str) -> bytes:
    info = f"tinymlops.wrap/1|{device_id}|{package_id}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + dev_pub, info=info).derive(shared)


def wrap_key(cek: bytes, device_public_b64: str, device_id: str, package_id: str) -> str:
    """Wrap a content key for one device (ephemeral X25519 + HKDF + AES-GCM); return base64."""
    dev_pub = base64.b64decode(device_public_b64, validate=True)
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kek = _kek(eph.exchange(X25519PublicKey.from_public_bytes(dev_pub)), eph_pub, dev_pub, device_id, package_id)
    nonce = os.urandom(12)
    return base64.b64encode(eph_pub + nonce + AESGCM(kek).encrypt(nonce, cek, package_id.encode())).decode()


def unwrap_key(wrapped_b64: str, key: X25519PrivateKey, device_id: str, package_id: str) -> bytes:
    """Unwrap a content key with this device's private key (DecryptionFailed if it was wrapped for another)."""
    try:
        blob = base64.b64decode(wrapped_b64, validate=True)
        eph_pub, nonce, ct = blob[:32], blob[32:44], blob[44:]
        dev_pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        kek = _kek(key.exchange(X25519PublicKey.from_public_bytes(eph_pub)), eph_pub, dev_pub, device_id,
                   package_id)
        return AESGCM(kek).decrypt(nonce, ct, package_id.encode())
    except Exception:  # bad base64, wrong length, InvalidTag
        raise DecryptionFailed("content key was not wrapped for this device") from None


def content_key_path(package_id: str, directory: Path | None = None) -> Path:
    """Return where the registry host keeps a package's content key (``<home>/keys/content/<id>.key``)."""
    from tinymlops.fleet.packages import keys_dir

    return (directory or keys_dir() / "content") / f"{package_id}.key"


def save_content_key(package_id: str, cek: bytes, directory: Path | None = None) -> Path:
    """Keep a package's content key on the registry host (mode 0600)."""
    path = content_key_path(package_id, directory)
    _write_private(path, cek)
    return path


def load_content_key(package_id: str, directory: Path | None = None) -> bytes | None:
    """Return a package's content key, or None if this host did not build it encrypted."""
    path = content_key_path(package_id, directory)
    return path.read_bytes() if path.is_file() else None
