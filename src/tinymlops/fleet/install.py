"""The device's package store: verify, stage, install atomically, keep the previous package, recover.

On-disk layout (``state_dir``)::

    current.json                {"current": package_id, "previous": package_id}   (replaced atomically)
    sequence.json               {model_name: highest sequence installed}        (anti-rollback floor)
    packages/<package_id>/      manifest.json, manifest.sig, model file            (renamed in complete)
    staging/                    partial downloads; wiped at start-up

A crash (or a signal) at any point leaves ``current.json`` naming a complete, verified package (or none before
the first install): staging is written and fsynced before the rename, the pointer is replaced only after the
rename, and start-up verifies the current package again, falling back to the previous one if it does not verify.

Nothing the server sends becomes a path unchecked: a package id must be a plain name (:func:`is_safe_name`), must
be the id of the manifest's content, and every directory built from it must resolve inside the state directory.
A package whose signed ``sequence`` is below the highest one installed for its model is refused unless a signed
rollback authorisation (:func:`~tinymlops.fleet.packages.check_rollback`) accompanies it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.fleet.packages import (
    Bundle,
    PackageRejected,
    check_plaintext,
    check_rollback,
    encryption_of,
    is_safe_name,
    package_id_for,
    verify_package,
)

log = logging.getLogger("tinymlops.agent")

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    """Replace a file atomically: temp file in the same directory, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    _write_synced(tmp, data)
    tmp.replace(path)
    _fsync_dir(path.parent)


WRAPPED_KEY_FILE = "wrapped.key"


@dataclass
class Installed:
    package_id: str
    directory: Path
    manifest: dict[str, Any]
    content_key: bytes | None = None  # an encrypted package's key, unwrapped in memory only

    @property
    def model_path(self) -> Path:
        return self.directory / self.manifest["file"]


class InstallState:
    """The device's package store: verify, stage, install atomically, keep the previous, recover."""

    def __init__(self, state_dir: Path, trusted_keys: list[Any], target: str, device_id: str = "") -> None:
        self.root = Path(state_dir)
        self.device_id = device_id
        self.trusted_keys = trusted_keys
        self.target = target
        self.packages = self.root / "packages"
        self.staging = self.root / "staging"
        self.pointer = self.root / "current.json"
        self.sequences = self.root / "sequence.json"
        self.fell_back_from: str | None = None  # set by recover() when the current package no longer verified
        self.packages.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def content_key(self, directory: Path, package_id: str, manifest: dict[str, Any],
                    wrapped: str | None = None) -> bytes | None:
        """Unwrap an encrypted package's content key with this device's key (None for a plaintext package)."""
        from tinymlops.fleet import crypto

        if encryption_of(manifest) is None:
            return None
        if wrapped is None:
            path = directory / WRAPPED_KEY_FILE
            wrapped = path.read_text() if path.is_file() else None
        if not wrapped:
            raise PackageRejected("encrypted package without a content key for this device (not assigned to it)")
        try:
            return crypto.unwrap_key(wrapped, crypto.device_key(self.root), self.device_id, package_id)
        except crypto.DecryptionFailed as exc:
            raise PackageRejected(f"cannot decrypt: {exc}") from None

    def _read_pointer(self) -> dict[str, str | None]:
        try:
            data = json.loads(self.pointer.read_text())
            return {k: v if is_safe_name(v) else None for k in ("current", "previous") for v in [data.get(k)]}
        except (OSError, ValueError, AttributeError):
            return {"current": None, "previous": None}

    def _inside(self, parent: Path, name: str) -> Path:
        """Return ``parent/name`` if ``name`` is a plain name that stays inside ``parent`` (PackageRejected if not)."""
        path = parent / name
        if not is_safe_name(name) or path.resolve().parent != parent.resolve():
            raise PackageRejected(f"package id {name[:80]!r} is not a plain name")
        return path

    def floor(self, model_name: str) -> int:
        """Return the highest sequence installed for a model (0 if none)."""
        try:
            value = json.loads(self.sequences.read_text()).get(model_name, 0)
        except (OSError, ValueError, AttributeError):
            return 0
        return value if type(value) is int else 0

    def _raise_floor(self, manifest: dict[str, Any]) -> None:
        try:
            floors = json.loads(self.sequences.read_text())
            floors = floors if isinstance(floors, dict) else {}
        except (OSError, ValueError):
            floors = {}
        name, seq = manifest["model_name"], int(manifest.get("sequence", 0))
        if seq > floors.get(name, 0):
            atomic_write(self.sequences, json.dumps({**floors, name: seq}).encode())

    def _verified(self, package_id: str | None) -> Installed | None:
        if not package_id:
            return None
        try:
            d = self._inside(self.packages, package_id)
            manifest = verify_package(Bundle.read(d), self.trusted_keys, self.target)
            cek = self.content_key(d, package_id, manifest)
        except PackageRejected as exc:
            log.warning("installed package %s does not verify: %s", package_id, exc.reason)
            return None
        return Installed(package_id, d, manifest, cek)

    def recover(self) -> Installed | None:
        """Wipe partial downloads and return the current package, falling back to the previous if needed."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        ptr = self._read_pointer()
        cur = self._verified(ptr["current"])
        self.fell_back_from = None
        if cur is None and ptr["current"] is not None:
            self.fell_back_from = ptr["current"]
            prev = self._verified(ptr["previous"])
            atomic_write(self.pointer, json.dumps({"current": prev.package_id if prev else None,
                                                    "previous": None}).encode())
            cur = prev
        keep = {p for p in self._read_pointer().values() if p}
        for d in self.packages.iterdir():
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
        return cur

    def current(self) -> Installed | None:
        """Return the current package without re-verifying the artifact (verified at install and start-up)."""
        pid = self._read_pointer()["current"]
        if not pid or not is_safe_name(pid) or not (self.packages / pid / "manifest.json").is_file():
            return None
        d = self.packages / pid
        manifest = json.loads((d / "manifest.json").read_text())
        return Installed(pid, d, manifest, self.content_key(d, pid, manifest))

    def previous_id(self) -> str | None:
        return self._read_pointer()["previous"]

    def stage(self, bundle: Bundle, package_id: str, authorisation: object = None,
              wrapped_key: str | None = None) -> tuple[Path, dict[str, Any]]:
        """Verify a bundle and write it, fsynced, to a staging directory (PackageRejected if it fails).

        Refused besides a bad signature/target/hash: an id that is not a plain name or not this content's id, and
        a sequence below the model's floor without a valid rollback ``authorisation``.
        """
        self._inside(self.packages, package_id)
        manifest = verify_package(bundle, self.trusted_keys, self.target)
        if package_id != package_id_for(manifest, bundle.manifest_bytes):
            raise PackageRejected(f"package id {package_id!r} does not match its manifest "
                                  f"({package_id_for(manifest, bundle.manifest_bytes)!r})")
        floor, seq = self.floor(manifest["model_name"]), int(manifest.get("sequence", 0))
        if seq < floor:
            why = check_rollback(authorisation, self.trusted_keys, package_id, manifest, floor)
            if why is not None:
                raise PackageRejected(f"downgrade refused: sequence {seq} is below {floor} ({why})")
        cek = self.content_key(self.staging, package_id, manifest, wrapped_key or "")
        if cek is not None:  # decrypts and matches the signed plaintext hash, or it is refused now
            from tinymlops.fleet import crypto

            try:
                check_plaintext(manifest, crypto.decrypt_artifact(bundle.artifact, cek))
            except crypto.DecryptionFailed as exc:
                raise PackageRejected(f"cannot decrypt: {exc}") from None
        d = self._inside(self.staging, f"{package_id}.{uuid.uuid4().hex[:8]}")
        d.mkdir(parents=True)
        if wrapped_key and cek is not None:
            _write_synced(d / WRAPPED_KEY_FILE, wrapped_key.encode())
        _write_synced(d / "manifest.json", bundle.manifest_bytes)
        _write_synced(d / "manifest.sig", base64.b64encode(bundle.signature))
        _write_synced(d / manifest["file"], bundle.artifact)
        _fsync_dir(d)
        return d, manifest

    def commit(self, staged: Path, package_id: str) -> Installed:
        """Move a staged package into place and point ``current`` at it (previous = the old current)."""
        final = self._inside(self.packages, package_id)
        if final.exists():  # a re-install of the same content: replace it wholesale
            shutil.rmtree(final)
        staged.rename(final)
        _fsync_dir(self.packages)
        old = self._read_pointer()["current"]
        previous = old if old and old != package_id else self._read_pointer()["previous"]
        atomic_write(self.pointer, json.dumps({"current": package_id, "previous": previous}).encode())
        keep = {package_id, previous}
        for d in self.packages.iterdir():
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
        manifest = json.loads((final / "manifest.json").read_text())
        installed = Installed(package_id, final, manifest, self.content_key(final, package_id, manifest))
        self._raise_floor(installed.manifest)
        return installed

    def rollback(self) -> Installed | None:
        """Point ``current`` back at the previous package (if it still verifies)."""
        ptr = self._read_pointer()
        prev = self._verified(ptr["previous"])
        if prev is None:
            return None
        atomic_write(self.pointer, json.dumps({"current": prev.package_id, "previous": ptr["current"]}).encode())
        return prev


def open_model(installed: Installed, runtime: str) -> Any:
    """Open an installed package's model in the runtime the device's target names."""
    from tinymlops.runtimes import open_runner, runtime_family

    family = runtime_family(runtime)
    if installed.content_key is None:
        return open_runner(installed.model_path, family)
    from tinymlops.fleet import crypto

    plain = crypto.decrypt_artifact(installed.model_path.read_bytes(), installed.content_key)
    check_plaintext(installed.manifest, plain)
    # runtimes here open paths: a 0600 file only while the runtime loads it (TFLM's runner reads it per run)
    tmp = installed.directory / f".{uuid.uuid4().hex}{installed.model_path.suffix}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(plain)
    try:
        return open_runner(tmp, family)
    finally:
        if family != "tflm":
            tmp.unlink(missing_ok=True)


def smoke_test(runner: Any, manifest: dict[str, Any]) -> None:
    """Run one zero input through a freshly loaded model and check the output shape (PackageRejected if not)."""
    n_features = len(manifest["preprocessing"]["feature_names"])
    try:
        out = np.asarray(runner.predict(np.zeros((1, n_features), np.float32)))
    except Exception as exc:  # any runtime failure means the package cannot serve here
        raise PackageRejected(f"model does not run in this runtime: {exc}") from None
    if out.shape[-1] != len(manifest["class_names"]) or not np.all(np.isfinite(out)):
        raise PackageRejected(f"model output shape {out.shape} does not match {len(manifest['class_names'])} classes")
