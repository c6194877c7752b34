"""Device-side defences against a hostile or compromised server (issue 12: D1, D5, D8, D9 and anti-rollback).

Every case here is a validly *signed* package or a crafted server answer: signing alone did not stop them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.fleet import packages
from tinymlops.fleet.install import InstallState
from tinymlops.fleet.packages import Bundle, PackageRejected, sign
from tinymlops.fleet.safejson import UnsafeJSON, json_depth, loads_bounded

ARTIFACT = b"\x08\x09model-bytes" * 50
TARGET = "gw"


def manifest(version: str = "3", **extra: object) -> dict:
    return {"schema": packages.SCHEMA, "model_name": "m", "model_version": version, "variant": "",
            "format": "onnx", "target": TARGET, "runtime": "onnxruntime", "file": "model.onnx",
            "class_names": ["a", "b"], "preprocessing": {}, "input": {}, "output": {}, "reference": {}, **extra}


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def state(tmp_path: Path, key: Ed25519PrivateKey) -> InstallState:
    return InstallState(tmp_path / "dev" / "state", [key.public_key()], TARGET)


def install(st: InstallState, b: Bundle, pid: str | None = None, authorisation: object = None) -> None:
    staged, _m = st.stage(b, pid or b.id, authorisation)
    st.commit(staged, pid or b.id)


def test_d1_a_server_chosen_package_id_never_leaves_the_state_dir(tmp_path: Path, key) -> None:
    victim = tmp_path / "dev" / "victim"
    victim.mkdir(parents=True)
    (victim / "precious").write_text("keep me")
    st = state(tmp_path, key)
    b = sign(manifest(), ARTIFACT, key)
    for pid in ("../../victim", "../victim", "..", ".", "/tmp/x", "a/b", "victim\x00"):
        with pytest.raises(PackageRejected, match="plain name|does not match"):
            install(st, b, pid)
    assert (victim / "precious").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "dev").iterdir()) == ["state", "victim"]
    # a tampered pointer file cannot make start-up open or delete anything outside either
    (st.root / "current.json").write_text(json.dumps({"current": "../../victim", "previous": "../victim"}))
    assert st.recover() is None and (victim / "precious").is_file()


def test_d9_a_package_id_must_be_the_id_of_its_content(tmp_path: Path, key) -> None:
    st = state(tmp_path, key)
    v1 = sign(manifest("1"), ARTIFACT, key)
    liar = v1.id.replace("-v1-", "-v9-")
    with pytest.raises(PackageRejected, match="does not match its manifest"):
        install(st, v1, liar)
    install(st, v1)
    assert st.current() is not None and st.current().package_id == v1.id


@pytest.mark.parametrize("file", ["..", ".", "manifest.sig", "manifest.json", "../x", "a/b", "", 7, None])
def test_d8_signed_manifests_naming_a_bad_file_are_refused(tmp_path: Path, key, file: object) -> None:
    st = state(tmp_path, key)
    b = sign(manifest(file=file), ARTIFACT, key)
    with pytest.raises(PackageRejected, match="file name"):
        install(st, b)
    assert st.recover() is None  # nothing installed, start-up does not crash-loop


@pytest.mark.parametrize(("field", "value"), [("size_bytes", "12"), ("class_names", "ab"), ("class_names", []),
                                              ("sequence", -1), ("sequence", 1.5), ("sequence", True),
                                              ("model_name", ""), ("model_name", "x" * 500), ("reference", [])])
def test_signed_manifests_are_schema_checked(tmp_path: Path, key, field: str, value: object) -> None:
    m = manifest()
    b = sign(m, ARTIFACT, key)
    bad = {**json.loads(b.manifest_bytes), field: value}
    body = packages.canonical_json(bad)
    with pytest.raises(PackageRejected):
        packages.verify_package(Bundle(body, key.sign(body), ARTIFACT), [key.public_key()], TARGET)


def test_d5_deep_or_huge_manifests_are_refused_before_parsing(key) -> None:
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    with pytest.raises(PackageRejected, match="deeper"):
        packages.verify_package(Bundle(deep, key.sign(deep), ARTIFACT), [key.public_key()], TARGET)
    huge = b'{"a":"' + b"x" * (packages.MAX_MANIFEST_BYTES + 1) + b'"}'
    with pytest.raises(PackageRejected, match="larger"):
        packages.verify_package(Bundle(huge, key.sign(huge), ARTIFACT), [key.public_key()], TARGET)
    assert json_depth(b'{"s":"[[[[{{{{\\"[[","l":[[1]]}') == 3
    with pytest.raises(UnsafeJSON):
        loads_bounded(b"[NaN]", 100)


def test_d9_anti_rollback_refuses_an_older_sequence_without_a_signed_authorisation(tmp_path: Path, key) -> None:
    st = state(tmp_path, key)
    v1, v2, v3 = (sign(manifest(v), ARTIFACT, key) for v in ("1", "2", "3"))
    assert json.loads(v2.manifest_bytes)["sequence"] == 2
    install(st, v1)
    install(st, v2)
    with pytest.raises(PackageRejected, match="downgrade refused.*no rollback authorisation"):
        install(st, v1)
    forged = packages.authorise_rollback(v1.id, v1.manifest, 2, key=Ed25519PrivateKey.generate())
    with pytest.raises(PackageRejected, match="untrusted key"):
        install(st, v1, authorisation=forged)
    other = packages.authorise_rollback(v3.id, v3.manifest, 2, key=key)
    with pytest.raises(PackageRejected, match="another package"):
        install(st, v1, authorisation=other)
    expired = packages.authorise_rollback(v1.id, v1.manifest, 2, key=key, ttl_s=-1)
    with pytest.raises(PackageRejected, match="expired"):
        install(st, v1, authorisation=expired)
    auth = packages.authorise_rollback(v1.id, v1.manifest, 2, key=key)
    install(st, v1, authorisation=auth)  # the rollout controller's rollback goes through
    assert st.current().package_id == v1.id and st.floor("m") == 2
    install(st, v3)
    with pytest.raises(PackageRejected, match="replaces sequence 2, this device is at 3"):
        install(st, v1, authorisation=auth)  # replaying the old authorisation after a newer release fails
