"""Per-device model encryption end to end: only the assigned device can decrypt; the service holds ciphertext."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_fleet_security import Fleet

from tinymlops.fleet import crypto, grants, packages
from tinymlops.fleet.client import OperatorClient
from tinymlops.fleet.install import WRAPPED_KEY_FILE, InstallState
from tinymlops.fleet.packages import Bundle, PackageRejected

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet-enc"))
    yield f
    f.close()


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_only_the_assigned_device_can_decrypt_and_nothing_stores_plaintext(fleet: Fleet) -> None:
    key_dir = fleet.root / "content-keys"
    op = OperatorClient(fleet.url, fleet.op_token)
    bundle = packages.sign(
        {**fleet.manifest, "model_version": "11", "target": "gw", "runtime": "onnxruntime"}, fleet.artifact,
        fleet.key, encrypt=True)
    assert bundle.artifact != fleet.artifact and bundle.content_key is not None
    pid = op.upload(bundle, key_dir=key_dir)["id"]
    assert stat.S_IMODE(crypto.content_key_path(pid, key_dir).stat().st_mode) == 0o600
    # two devices enrol (each makes its key pair); only enc-a is assigned the package
    cfgs = {}
    for did in ("enc-a", "enc-b"):
        tok = op.enrolment_tokens("enc")[0]
        cfgs[did] = fleet.agent_config(did, tok, seconds=0.5)
        fleet.run_agent(cfgs[did])
        cfgs[did].enrolment_token = None
        key_file = cfgs[did].state_dir / crypto.DEVICE_KEY_FILE
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_bytes() not in (fleet.root / "fleet.db").read_bytes()
    op._call("PUT", "/v1/desired-state", json={"package_id": pid, "device_ids": ["enc-a"]})
    assert op.grant(pid, ["enc-a"], key_dir=key_dir) == 1
    cfgs["enc-a"].duration_s = 1.5
    a = fleet.run_agent(cfgs["enc-a"])
    assert a.installed is not None and a.installed.package_id == pid and a.inferences > 0  # runs decrypted
    # the device keeps ciphertext at rest; the service's database only ciphertext and wraps
    assert fleet.artifact not in _all_bytes(cfgs["enc-a"].state_dir)
    from tinymlops.fleet.store import Package

    with fleet.st.session() as s:
        stored = s.get(Package, pid).artifact
    assert stored == bundle.artifact and fleet.artifact[100:4196] not in stored  # the ciphertext only
    db = (fleet.root / "fleet.db").read_bytes() + (fleet.root / "fleet.db-wal").read_bytes()
    assert bundle.content_key not in db

    # a package captured from enc-a (manifest, ciphertext and enc-a's wrapped key) does not open on enc-b
    pkg_dir = cfgs["enc-a"].state_dir / "packages" / pid
    captured = Bundle.read(pkg_dir)
    wrapped_for_a = (pkg_dir / WRAPPED_KEY_FILE).read_text()
    b_state = InstallState(cfgs["enc-b"].state_dir, [fleet.key.public_key()], "gw", "enc-b")
    with pytest.raises(PackageRejected, match="cannot decrypt"):
        b_state.stage(captured, pid, None, wrapped_for_a)
    with pytest.raises(PackageRejected, match="not assigned"):
        b_state.stage(captured, pid, None, None)
    # and through the service enc-b gets neither the package nor a key
    assert grants.wrapped_for(fleet.st, pid, "enc-b") is None
    from test_fleet_security import dev

    cred_b = (cfgs["enc-b"].state_dir / "credential.json").read_text()
    import json

    d = dev(fleet, json.loads(cred_b)["credential"])
    assert d.get(f"/v1/devices/enc-b/packages/{pid}").status_code == 403
    op.close()


def test_encryption_overhead_for_1000_devices_and_on_the_device(tmp_path: Path) -> None:
    artifact = os.urandom(256 * 1024)
    t0 = time.perf_counter()
    blob, cek = crypto.encrypt_artifact(artifact)
    t_encrypt = time.perf_counter() - t0
    keys = {f"d{i:04d}": crypto.public_b64(crypto.device_key(tmp_path / f"d{i:04d}")) for i in range(1000)}
    t0 = time.perf_counter()
    wraps = grants.make_wraps("pkg-1", keys, cek)
    t_wrap = time.perf_counter() - t0
    dk = crypto.device_key(tmp_path / "d0007")
    t0 = time.perf_counter()
    for _ in range(20):
        plain = crypto.decrypt_artifact(blob, crypto.unwrap_key(wraps["d0007"], dk, "d0007", "pkg-1"))
    t_device = (time.perf_counter() - t0) / 20
    assert plain == artifact
    print(f"encrypt 256 KiB once {t_encrypt * 1000:.2f} ms; wrap for 1000 devices {t_wrap * 1000:.0f} ms "
          f"({len(''.join(wraps.values())) / 1000:.0f} B each); device unwrap+decrypt {t_device * 1000:.2f} ms")
    assert t_wrap < 10.0 and t_device < 0.5
    with pytest.raises(crypto.DecryptionFailed):
        crypto.unwrap_key(wraps["d0007"], crypto.device_key(tmp_path / "d0008"), "d0008", "pkg-1")
