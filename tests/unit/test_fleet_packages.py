"""Signed packages: Ed25519 signing, and every way a package can be bad is rejected with a reason."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.fleet import packages
from tinymlops.fleet.packages import Bundle, PackageRejected, sign, verify_package

ARTIFACT = b"\x08\x09model-bytes" * 50


def manifest(target: str = "nucleo-l4r5zi") -> dict:
    return {"schema": packages.SCHEMA, "model_name": "m", "model_version": "3", "variant": "ptq-int8",
            "format": "tflite", "target": target, "runtime": "tflm-cmsis-nn", "file": "model.tflite",
            "class_names": ["a", "b"], "preprocessing": {}, "input": {"shape": [1, 4], "dtype": "float32"},
            "output": {"shape": [1, 2], "dtype": "float32"}, "reference": {}}


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return packages.signing_key(tmp_path)


def test_signing_key_is_generated_once_with_private_permissions(tmp_path: Path) -> None:
    k1 = packages.signing_key(tmp_path)
    k2 = packages.signing_key(tmp_path)
    assert packages.key_id(k1.public_key()) == packages.key_id(k2.public_key())
    mode = stat.S_IMODE((tmp_path / packages.PRIVATE_KEY_FILE).stat().st_mode)
    assert mode == 0o600
    pub = packages.load_public_key(tmp_path / packages.PUBLIC_KEY_FILE)
    assert packages.key_id(pub) == packages.key_id(k1.public_key())


def test_signed_package_verifies_and_round_trips_through_a_directory(tmp_path: Path, key) -> None:
    b = sign(manifest(), ARTIFACT, key)
    m = verify_package(b, [key.public_key()], "nucleo-l4r5zi")
    assert m["sha256"] == packages.sha256_hex(ARTIFACT) and m["size_bytes"] == len(ARTIFACT)
    again = Bundle.read(b.write(tmp_path / "pkg"))
    assert again.id == b.id
    verify_package(again, [key.public_key()], "nucleo-l4r5zi")


@pytest.mark.parametrize("case", ["unsigned", "tampered-manifest", "tampered-artifact", "truncated-artifact",
                                  "wrong-key", "wrong-target", "garbage-manifest"])
def test_bad_packages_are_rejected_with_a_reason(case: str, key, tmp_path: Path) -> None:
    b = sign(manifest(), ARTIFACT, key)
    trusted = [key.public_key()]
    target = "nucleo-l4r5zi"
    if case == "unsigned":
        b = Bundle(b.manifest_bytes, b"", b.artifact)
    elif case == "tampered-manifest":
        m = json.loads(b.manifest_bytes)
        m["class_names"] = ["x", "y"]
        b = Bundle(packages.canonical_json(m), b.signature, b.artifact)
    elif case == "tampered-artifact":
        b = Bundle(b.manifest_bytes, b.signature, b.artifact[:-1] + b"X")
    elif case == "truncated-artifact":
        b = Bundle(b.manifest_bytes, b.signature, b.artifact[:10])
    elif case == "wrong-key":
        other = Ed25519PrivateKey.generate()
        b = sign(manifest(), ARTIFACT, other)
    elif case == "wrong-target":
        target = "esp32-s3-devkitc-1"
    elif case == "garbage-manifest":
        b = Bundle(b"not json", b.signature, b.artifact)
    with pytest.raises(PackageRejected) as err:
        verify_package(b, trusted, target)
    assert err.value.reason


def test_a_signature_from_a_trusted_key_id_but_another_key_is_rejected(key) -> None:
    other = Ed25519PrivateKey.generate()
    b = sign(manifest(), ARTIFACT, key)
    forged = Bundle(b.manifest_bytes, other.sign(b.manifest_bytes), b.artifact)  # claims key's id
    with pytest.raises(PackageRejected, match="bad signature"):
        verify_package(forged, [key.public_key()], None)


def test_package_id_is_content_addressed(key) -> None:
    a = sign(manifest(), ARTIFACT, key)
    b = sign(manifest(), ARTIFACT + b"!", key)
    assert a.id != b.id and a.id.startswith("m-v3-nucleo-l4r5zi-")


def test_format_fits_runtime_families() -> None:
    assert packages.format_fits("onnx", "onnxruntime")
    assert not packages.format_fits("onnx", "tflm-cmsis-nn")
    assert packages.format_fits("tflite", "tflm-reference") and packages.format_fits("tflite", "tflite")
    assert not packages.format_fits("tflite", "onnxruntime")


def test_packages_use_the_one_typed_catalogue(tmp_path: Path, tm_home: Path) -> None:
    """No plain-dict catalogue or env variable of its own: an unknown or half-written board is refused by name."""
    from tinymlops.errors import ConfigError

    assert not hasattr(packages, "list_targets") and not hasattr(packages, "targets_dir")
    (tmp_path / "a.yaml").write_text("name: board-a\nruntime: tflm-reference\nactive_power_mw: 40\n")
    with pytest.raises(ConfigError, match="a.yaml: core"):
        packages.build_package("m", "1", "board-a", targets=tmp_path)
    with pytest.raises(ConfigError, match="unknown target 'atari'.*nucleo-l4r5zi"):
        packages.build_package("m", "1", "atari")
