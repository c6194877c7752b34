"""Field-data export and the retrain's data handling (no TensorFlow): decrypt, version, Parquet, split, weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tinymlops.errors import DataError, UsageError
from tinymlops.fleet import field_export, field_seal
from tinymlops.monitor.field_retrain import FieldExtra, split_field, weighted_rows

REPO = Path(__file__).resolve().parents[2]


def _batches(fkey: X25519PrivateKey, devices: dict[str, int], shape: tuple[int, ...] = (8, 3)) -> list[dict]:
    signer = Ed25519PrivateKey.generate()
    key = field_seal.verify_statement(field_seal.key_statement(fkey, signer), [signer.public_key()])
    out = []
    for i, (did, n) in enumerate(devices.items()):
        X = np.random.default_rng(i).normal(size=(n, *shape)).astype(np.float32)
        y = [j % 4 for j in range(n)]
        out.append({**field_seal.seal(key, did, 10 + i, f"{i:016x}", X, y, [0] * n, (100.0 + i, 160.0 + i)),
                    "device_id": did, "cohort": "line-b"})
    return out


def test_decrypt_write_read_round_trip_with_a_content_version(tmp_path: Path) -> None:
    fkey = X25519PrivateKey.generate()
    batches = _batches(fkey, {"a": 5, "b": 7})
    data = field_export.decrypt(batches, fkey)
    assert len(data) == 12 and data.X.shape == (12, 8, 3) and data.skipped == []
    assert field_export.decrypt(list(reversed(batches)), fkey).version == data.version  # order does not matter
    assert field_export.decrypt(batches[:1], fkey).version != data.version
    m = data.manifest()
    assert m["devices"] == ["a", "b"] and m["source"] == "fleet" and m["window"] == [160.0, 161.0]
    assert m["consent_ids"] == [f"{0:016x}", f"{1:016x}"] and sum(m["labels"].values()) == 12
    path = field_export.write(data, tmp_path)
    assert path.parent.name == data.version and json.loads((path.parent / "manifest.json").read_text())["samples"] == 12
    back = field_export.read(path)
    np.testing.assert_array_equal(back.X, data.X)
    np.testing.assert_array_equal(back.y, data.y)
    tags = data.lineage_tags()
    assert tags["tinymlops.field.devices"] == "a,b" and tags["tinymlops.field.n_devices"] == "2"


def test_batches_that_do_not_open_or_fit_are_skipped_and_named() -> None:
    fkey = X25519PrivateKey.generate()
    good = _batches(fkey, {"a": 4})
    other_key = _batches(X25519PrivateKey.generate(), {"b": 4})
    relabelled = [{**good[0], "device_id": "c"}]  # the service claims another device sent it
    other_shape = _batches(fkey, {"d": 3}, shape=(5,))
    data = field_export.decrypt(good + other_key + relabelled + other_shape, fkey)
    assert len(data) == 4 and {s["device_id"] for s in data.skipped} == {"b", "c", "d"}
    assert any("input shape" in s["reason"] for s in data.skipped)


def test_an_empty_export_is_a_usage_error(tmp_path: Path) -> None:
    empty = field_export.decrypt([], X25519PrivateKey.generate())
    with pytest.raises(UsageError, match="no consented field samples"):
        field_export.write(empty, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_split_keeps_every_class_in_both_parts_and_weights_count() -> None:
    fkey = X25519PrivateKey.generate()
    data = field_export.decrypt(_batches(fkey, {"a": 40, "b": 40}), fkey)
    train, test = split_field(data, 0.3, 0)
    assert len(train) + len(test) == 80 and set(test.y) == set(train.y) == {0, 1, 2, 3}
    assert len(test) == 24 and split_field(data, 0.3, 0)[1].batch_seqs.tolist() == test.batch_seqs.tolist()
    rng = np.random.default_rng(0)
    assert len(weighted_rows(10, 3.0, rng)) == 30
    n = len(weighted_rows(10_000, 1.5, rng))
    assert 14_700 < n < 15_300  # the fraction is a random extra copy


def test_field_samples_of_another_input_shape_are_refused() -> None:
    from types import SimpleNamespace

    from tinymlops.data import Dataset

    fkey = X25519PrivateKey.generate()
    data = field_export.decrypt(_batches(fkey, {"a": 8}), fkey)
    base = Dataset("vib", np.zeros((4, 16, 3), np.float32), np.zeros(4, np.int64), ["a", "b", "c", "d"], "builtin")
    prep = SimpleNamespace(splits={"train": base})
    with pytest.raises(DataError, match=r"input shape \[8, 3\].*\[16, 3\]"):
        FieldExtra(data, data, 2.0, 0).extend(SimpleNamespace(), prep)


def test_cli_export_without_a_fleet_database_is_a_usage_error(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "cli", "fleet", "field-data", "export", "--db",
                        f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path / "o")], capture_output=True,
                       text=True, cwd=REPO, env={"TINYMLOPS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert p.returncode == 2 and "no fleet database" in p.stderr and "Traceback" not in p.stderr
