"""Signed model packages: built from a registered MLflow version, signed with Ed25519, verified on the device.

A package is three things: ``manifest.json`` (the exact bytes that are signed), ``manifest.sig`` (base64 Ed25519
signature over those bytes) and the model file. The manifest names model, version, variant, format, target and
its runtime, the artifact's sha256 and size, the pre-processing spec, input/output spec, class names and the
reference profile (whose bin edges devices sketch telemetry on). Trust is end to end: the registry side signs
with the private key in ``<home>/keys/``; devices verify with the public key; the fleet service only relays.

``verify_package(...)`` is what the agent runs before installing and again at start-up: it raises
:class:`PackageRejected` (unsigned, bad signature, unknown key, wrong target, hash/size mismatch, bad manifest).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tinymlops import settings
from tinymlops.errors import ConfigError, UsageError

SCHEMA = "tinymlops.package/1"
PRIVATE_KEY_FILE = "package_signing.key"
PUBLIC_KEY_FILE = "package_signing.pub"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
REQUIRED_KEYS = ("schema", "model_name", "model_version", "format", "target", "runtime", "file", "sha256",
                 "size_bytes", "class_names", "preprocessing", "input", "output", "reference", "key_id")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_ARTIFACT_BYTES = 1 << 31
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_STR_LIMITS = {"schema": 64, "model_name": 128, "model_version": 32, "format": 16, "target": 64, "runtime": 64,
               "key_id": 32}


class PackageRejected(Exception):
    """A package failed verification; ``reason`` says why (reported to the fleet service)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------------------------


def keys_dir() -> Path:
    """Return ``<home>/keys`` (created with owner-only permissions)."""
    path = settings.home() / "keys"
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return a short fingerprint of a public key (first 16 hex of SHA-256 of its raw bytes)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signing_key(directory: Path | None = None) -> Ed25519PrivateKey:
    """Return the registry-side signing key, generating it (and its public key file) on first use."""
    d = directory or keys_dir()
    priv_path, pub_path = d / PRIVATE_KEY_FILE, d / PUBLIC_KEY_FILE
    if priv_path.is_file():
        key = serialization.load_pem_private_key(priv_path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{priv_path}: not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(public_key_pem(key.public_key()))
    return key


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """Serialise a public key as PEM (what devices are provisioned with)."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read a PEM public key (ConfigError if missing or not Ed25519)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: public key file not found (run `tinymlops package ...` once to create keys)")
    try:
        key = serialization.load_pem_public_key(p.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"{p}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{p}: not an Ed25519 public key")
    return key


def default_public_key_path() -> Path:
    """Return the key devices are provisioned with: ``<home>/keys/root.pub`` after a key rotation (devices follow
    later rotations from it), else ``package_signing.pub`` (created with the signing key)."""
    if (keys_dir() / "root.pub").is_file():
        return keys_dir() / "root.pub"
    path = keys_dir() / PUBLIC_KEY_FILE
    if not path.is_file():
        signing_key()
    return path


# --------------------------------------------------------------------------------------------------------------
# targets (the catalogue itself is tinymlops.profile.targets)
# --------------------------------------------------------------------------------------------------------------


def format_fits(fmt: str, target_runtime: str) -> bool:
    """Return whether a model format can run in a target's runtime family."""
    from tinymlops.runtimes import runtime_family

    family = runtime_family(target_runtime)
    return (fmt == "onnx") == (family == "onnxruntime")


# --------------------------------------------------------------------------------------------------------------
# bundles
# --------------------------------------------------------------------------------------------------------------


def canonical_json(obj: Any) -> bytes:
    """Serialise deterministically (sorted keys, no whitespace) for signing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_id_for(manifest: dict[str, Any], manifest_bytes: bytes) -> str:
    """Return a content-addressed package id: ``<model>-v<version>-<target>-<8 hex of the manifest hash>``."""
    stem = f"{manifest['model_name']}-v{manifest['model_version']}-{manifest['target']}"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:110]
    return f"{stem}-{sha256_hex(manifest_bytes)[:8]}"


@dataclass
class Bundle:
    """A signed package in memory: manifest bytes, signature and artifact."""

    manifest_bytes: bytes
    signature: bytes
    artifact: bytes  # the ciphertext when the manifest names an ``encryption``
    content_key: bytes | None = None  # registry side only, never uploaded

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_bytes)

    @property
    def id(self) -> str:
        return package_id_for(self.manifest, self.manifest_bytes)

    def upload_json(self) -> dict[str, str]:
        """Return the body of ``POST /v1/packages``."""
        return {"manifest_json": self.manifest_bytes.decode("utf-8"),
                "signature_b64": base64.b64encode(self.signature).decode(),
                "artifact_b64": base64.b64encode(self.artifact).decode()}

    def write(self, directory: Path) -> Path:
        """Write the bundle as a directory (manifest.json, manifest.sig, model file)."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST_FILE).write_bytes(self.manifest_bytes)
        (directory / SIGNATURE_FILE).write_text(base64.b64encode(self.signature).decode())
        (directory / self.manifest["file"]).write_bytes(self.artifact)
        return directory

    @classmethod
    def read(cls, directory: Path) -> Bundle:
        """Read a bundle directory (PackageRejected if a part is missing)."""
        try:
            manifest_bytes = (directory / MANIFEST_FILE).read_bytes()
            sig_text = (directory / SIGNATURE_FILE).read_text() if (directory / SIGNATURE_FILE).is_file() else ""
            file = json.loads(manifest_bytes)["file"]
            artifact = (directory / Path(file).name).read_bytes()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PackageRejected(f"package directory {directory} is incomplete: {exc}") from None
        try:
            signature = base64.b64decode(sig_text, validate=True)
        except ValueError:
            signature = b""
        return cls(manifest_bytes, signature, artifact)


def sign(manifest: dict[str, Any], artifact: bytes, key: Ed25519PrivateKey | None = None,
         encrypt: bool = False) -> Bundle:
    """Sign a manifest (its key_id is set to the signing key's) and return the bundle.

    ``encrypt``: the bundle carries the artifact encrypted with a fresh content key (``bundle.content_key``,
    see :mod:`tinymlops.fleet.crypto`); the manifest signs both the plaintext's and the ciphertext's hash.
    """
    key = key or signing_key()
    manifest = {"sequence": default_sequence(manifest.get("model_version")), **manifest,
                "key_id": key_id(key.public_key()), "sha256": sha256_hex(artifact), "size_bytes": len(artifact)}
    payload, cek = artifact, None
    if encrypt:
        from tinymlops.fleet import crypto

        payload, cek = crypto.encrypt_artifact(artifact)
        manifest["encryption"] = {"alg": crypto.ALG, "ciphertext_sha256": sha256_hex(payload),
                                  "ciphertext_size": len(payload)}
    manifest_bytes = canonical_json(manifest)
    return Bundle(manifest_bytes, key.sign(manifest_bytes), payload, cek)


def encryption_of(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Return a manifest's encryption block (None for a plaintext package; PackageRejected if malformed)."""
    enc = manifest.get("encryption")
    if enc is None:
        return None
    if (not isinstance(enc, dict) or not isinstance(enc.get("ciphertext_sha256"), str)
            or type(enc.get("ciphertext_size")) is not int or not isinstance(enc.get("alg"), str)):
        raise PackageRejected("manifest encryption block is malformed")
    return enc


def check_plaintext(manifest: dict[str, Any], plaintext: bytes) -> None:
    """Check decrypted (or plaintext) model bytes against the signed size and sha256 (PackageRejected if not)."""
    if len(plaintext) != manifest["size_bytes"] or sha256_hex(plaintext) != manifest["sha256"]:
        raise PackageRejected("artifact hash mismatch: model file altered or truncated")


def is_safe_name(value: object) -> bool:
    """Return whether a value may name a file or directory (letters, digits, ``._-``; no path, not ``.``/``..``)."""
    return isinstance(value, str) and SAFE_NAME.fullmatch(value) is not None


def check_manifest(manifest: dict[str, Any]) -> None:
    """Check a manifest's schema: every field present with its type and bounds (PackageRejected if not)."""
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing or manifest.get("schema") != SCHEMA:
        raise PackageRejected(f"manifest is not a {SCHEMA} manifest (missing {missing})")
    for k, limit in _STR_LIMITS.items():
        if not isinstance(manifest[k], str) or not 0 < len(manifest[k]) <= limit:
            raise PackageRejected(f"manifest field {k!r} must be a string of 1-{limit} characters")
    file = manifest["file"]
    if not is_safe_name(file) or file in (MANIFEST_FILE, SIGNATURE_FILE):
        raise PackageRejected(f"manifest file name {str(file)[:80]!r} is not a plain file name of the package")
    if not isinstance(manifest["sha256"], str) or not _HEX64.fullmatch(manifest["sha256"]):
        raise PackageRejected("manifest sha256 must be 64 lowercase hex digits")
    size = manifest["size_bytes"]
    if type(size) is not int or not 0 < size <= MAX_ARTIFACT_BYTES:
        raise PackageRejected("manifest size_bytes must be a positive integer")
    seq = manifest.get("sequence", 0)
    if type(seq) is not int or not 0 <= seq < 2**53:
        raise PackageRejected("manifest sequence must be a non-negative integer")
    names = manifest["class_names"]
    if not isinstance(names, list) or not 1 <= len(names) <= 10000 or not all(isinstance(n, str) for n in names):
        raise PackageRejected("manifest class_names must be a list of 1-10000 strings")
    for k in ("preprocessing", "input", "output", "reference"):
        if not isinstance(manifest[k], dict):
            raise PackageRejected(f"manifest field {k!r} must be an object")


def parse_manifest(manifest_bytes: bytes) -> dict[str, Any]:
    """Parse manifest bytes with bounded size and depth (PackageRejected if they are not a JSON object)."""
    from tinymlops.fleet.safejson import UnsafeJSON, loads_bounded

    try:
        manifest = loads_bounded(manifest_bytes, MAX_MANIFEST_BYTES)
    except UnsafeJSON as exc:
        raise PackageRejected(f"manifest refused: {exc}") from None
    if not isinstance(manifest, dict):
        raise PackageRejected("manifest is not a JSON object")
    return manifest


def default_sequence(version: object) -> int:
    """Return the anti-rollback sequence of a model version: its number (MLflow numbers versions 1, 2, ...)."""
    text = str(version)
    return int(text) if text.isdigit() and len(text) < 16 else 0


def verify_package(bundle: Bundle, trusted_keys: list[Ed25519PublicKey], target: str | None) -> dict[str, Any]:
    """Verify signature, key, manifest, target and artifact hash; return the manifest or raise PackageRejected."""
    if not bundle.signature:
        raise PackageRejected("unsigned package (no signature)")
    manifest = parse_manifest(bundle.manifest_bytes)
    if not isinstance(manifest, dict):
        raise PackageRejected("manifest is not a JSON object")
    keys = {key_id(k): k for k in trusted_keys}
    kid = manifest.get("key_id")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise PackageRejected(f"package signed by an untrusted key {kid!r}")
    try:
        key.verify(bundle.signature, bundle.manifest_bytes)
    except InvalidSignature:
        raise PackageRejected("bad signature: manifest altered or signed with another key") from None
    check_manifest(manifest)
    if target is not None and manifest["target"] != target:
        raise PackageRejected(f"package is for target {manifest['target']!r}, this device is {target!r}")
    enc = encryption_of(manifest)
    if enc is None:
        check_plaintext(manifest, bundle.artifact)
    elif len(bundle.artifact) != enc["ciphertext_size"] or sha256_hex(bundle.artifact) != enc["ciphertext_sha256"]:
        raise PackageRejected("encrypted artifact hash mismatch: ciphertext altered or truncated")
    return manifest


# --------------------------------------------------------------------------------------------------------------
# anti-rollback: a device installs a lower sequence only with a signed rollback authorisation
# --------------------------------------------------------------------------------------------------------------

ROLLBACK_SCHEMA = "tinymlops.rollback/1"
ROLLBACK_TTL_S = 7 * 86400.0


def authorise_rollback(package_id: str, manifest: dict[str, Any], replaces_sequence: int,
                       key: Ed25519PrivateKey | None = None, ttl_s: float = ROLLBACK_TTL_S) -> dict[str, str]:
    """Sign permission to go back to ``package_id`` on devices whose sequence floor is at most ``replaces_sequence``.

    The rollout controller issues one when it rolls a canary back; it is bound to the package id, its model and
    target, and to the sequence rolled back from, so replaying it after a newer release cannot downgrade again.
    """
    key = key or signing_key()
    payload = {"schema": ROLLBACK_SCHEMA, "package_id": package_id, "model_name": manifest["model_name"],
               "target": manifest["target"], "sequence": int(manifest.get("sequence", 0)),
               "replaces_sequence": int(replaces_sequence), "expires_unix_s": time.time() + ttl_s,
               "key_id": key_id(key.public_key())}
    body = canonical_json(payload)
    return {"payload_json": body.decode(), "signature_b64": base64.b64encode(key.sign(body)).decode()}


def check_rollback(authorisation: object, trusted_keys: list[Ed25519PublicKey], package_id: str,
                   manifest: dict[str, Any], floor: int) -> str | None:
    """Return why a rollback authorisation does not allow installing this package below ``floor`` (None: it does)."""
    if not isinstance(authorisation, dict):
        return "no rollback authorisation"
    try:
        body = str(authorisation["payload_json"]).encode("utf-8")
        sig = base64.b64decode(str(authorisation["signature_b64"]), validate=True)
        payload = parse_manifest(body)
    except (KeyError, ValueError, PackageRejected):
        return "malformed rollback authorisation"
    key = {key_id(k): k for k in trusted_keys}.get(str(payload.get("key_id")))
    if key is None:
        return "rollback authorisation signed by an untrusted key"
    try:
        key.verify(sig, body)
    except InvalidSignature:
        return "rollback authorisation has a bad signature"
    expected = {"schema": ROLLBACK_SCHEMA, "package_id": package_id, "model_name": manifest["model_name"],
                "target": manifest["target"], "sequence": manifest.get("sequence", 0)}
    if any(payload.get(k) != v for k, v in expected.items()):
        return "rollback authorisation is for another package"
    replaces, expires = payload.get("replaces_sequence"), payload.get("expires_unix_s")
    if type(replaces) is not int or replaces < floor:
        return f"rollback authorisation replaces sequence {replaces}, this device is at {floor}"
    if not isinstance(expires, (int, float)) or expires < time.time():
        return "rollback authorisation expired"
    return None


def rollback_authorisation_for(st: Any, package_id: str, replaces_package_id: str,
                               key: Ed25519PrivateKey | None = None) -> str | None:
    """Return the JSON of a rollback authorisation from one stored package back to another (rollout rollbacks).

    None when the packages are not stored or the older one is not older (no authorisation needed).
    """
    from tinymlops.fleet.store import Package

    with st.session() as s:
        p, newer = s.get(Package, package_id), s.get(Package, replaces_package_id)
        if p is None or newer is None:
            return None
        manifest, newer_manifest = json.loads(p.manifest_json), json.loads(newer.manifest_json)
    replaces = newer_manifest.get("sequence", 0)
    if not isinstance(replaces, int) or replaces <= manifest.get("sequence", 0):
        return None
    return json.dumps(authorise_rollback(package_id, manifest, replaces, key))


def _profiled_expectation(run_id: str, target: str) -> dict[str, float]:
    """Return what the profile stage estimated for this version on this target (empty if not profiled)."""
    from tinymlops import registry
    from tinymlops.metrics import target_figures

    return target_figures(registry.get_run(run_id).metrics, target, ("latency_ms", "energy_uj", "peak_ram_bytes"))


def build_package(model_name: str, version: str | int, target: str, key: Ed25519PrivateKey | None = None,
                  targets: Path | None = None, encrypt: bool = False, licensed: bool = False) -> Bundle:
    """Build and sign a package for a target from a registered MLflow version (``licensed``: runs only under a
    licence, :mod:`tinymlops.licensing`)."""
    from tinymlops import registry
    from tinymlops.profile.targets import get_target

    tgt = get_target(target, targets)
    mv = registry.get_version(model_name, version)
    pkg_dir = registry.download_package(model_name, version)
    src = registry.read_manifest(pkg_dir)
    fmt = str(src.get("format") or mv.tags.get("format", ""))
    if not format_fits(fmt, tgt.runtime):
        raise UsageError(f"{model_name} v{version} is a {fmt} model; target {target} runs {tgt.runtime}; "
                         "build the package from a version whose format that runtime executes")
    from tinymlops.preprocessing import check_deployable

    check_deployable(src["preprocessing"], target, tgt.runtime)  # a device never gets a block it cannot run
    artifact_path = pkg_dir / src["file"]
    if not artifact_path.is_file():
        raise UsageError(f"{model_name} v{version}: package file {src['file']} missing from the registry")
    artifact = artifact_path.read_bytes()
    if src.get("sha256") and src["sha256"] != sha256_hex(artifact):
        raise UsageError(f"{model_name} v{version}: registered file does not match its manifest sha256")
    manifest = {
        "schema": SCHEMA,
        "model_name": model_name,
        "model_version": str(version),
        "variant": str(src.get("variant") or mv.tags.get("variant", "")),
        "format": fmt,
        "target": target,
        "runtime": tgt.runtime,
        "file": Path(src["file"]).name,
        "class_names": src["class_names"],
        "preprocessing": src["preprocessing"],
        "input": src["input"],
        "output": src["output"],
        "reference": src["reference"],
        "metrics": src.get("metrics", {}),
        "expected": _profiled_expectation(mv.run_id, target),
        "source": {"run_id": mv.run_id, "train_run_id": mv.tags.get("train_run_id", ""),
                   "dataset_digest": mv.tags.get("dataset_digest", "")},
        "created_unix_s": time.time(),
        "sequence": default_sequence(version),
        **({"licence_required": True} if licensed else {}),
    }
    return sign(manifest, artifact, key, encrypt=encrypt)
