"""Agent install state: atomic install keeps the previous package; recovery survives partial writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinymlops.fleet import packages
from tinymlops.fleet.install import InstallState, atomic_write
from tinymlops.fleet.packages import PackageRejected, sign
from tinymlops.fleet.service import PackageCtx, check_sketch
from tinymlops.monitor.reference import compute_reference
from tinymlops.monitor.sketches import SketchBuilder, edges_digest


def _manifest(version: str) -> dict:
    return {"schema": packages.SCHEMA, "model_name": "m", "model_version": version, "format": "onnx",
            "target": "gw", "runtime": "onnxruntime", "file": "model.onnx", "class_names": ["a", "b"],
            "preprocessing": {}, "input": {}, "output": {}, "reference": {}}


@pytest.fixture
def setup(tmp_path: Path):
    (tmp_path / "keys").mkdir()
    key = packages.signing_key(tmp_path / "keys")
    state = InstallState(tmp_path / "dev", [key.public_key()], "gw")
    b1, b2 = sign(_manifest("1"), b"one" * 100, key), sign(_manifest("2"), b"two" * 100, key)
    return state, b1, b2


def install(state: InstallState, b: packages.Bundle) -> None:
    staged, _ = state.stage(b, b.id)
    state.commit(staged, b.id)


def test_install_keeps_the_previous_package_and_rollback_returns_to_it(setup) -> None:
    state, b1, b2 = setup
    install(state, b1)
    install(state, b2)
    assert state.current().package_id == b2.id and state.previous_id() == b1.id
    assert sorted(p.name for p in state.packages.iterdir()) == sorted([b1.id, b2.id])
    assert state.rollback().package_id == b1.id
    assert state.current().package_id == b1.id and state.previous_id() == b2.id


def test_rejected_bundles_leave_nothing_behind(setup) -> None:
    state, b1, b2 = setup
    install(state, b1)
    bad = packages.Bundle(b2.manifest_bytes, b2.signature, b2.artifact + b"!")
    with pytest.raises(PackageRejected):
        state.stage(bad, bad.id)
    assert state.current().package_id == b1.id and list(state.staging.iterdir()) == []


def test_recover_wipes_staging_and_falls_back_when_current_is_damaged(setup) -> None:
    state, b1, b2 = setup
    install(state, b1)
    install(state, b2)
    (state.staging / "half-written").mkdir()
    (state.staging / "half-written" / "model.onnx").write_bytes(b"tw")
    (state.packages / b2.id / "model.onnx").write_bytes(b"corrupted on disk")
    got = state.recover()
    assert got is not None and got.package_id == b1.id
    assert list(state.staging.iterdir()) == [] and not (state.packages / b2.id).exists()
    assert json.loads(state.pointer.read_text())["current"] == b1.id


def test_recover_with_a_torn_pointer_or_nothing_installed(setup) -> None:
    state, b1, _ = setup
    assert state.recover() is None
    install(state, b1)
    atomic_write(state.pointer, b'{"current": "' + b1.id.encode() + b'"}')
    assert state.recover().package_id == b1.id
    state.pointer.write_text("{not json")  # cannot happen with atomic_write; recovery still copes
    assert state.recover() is None


def _ref():
    rng = np.random.default_rng(1)
    return compute_reference(rng.normal(size=(100, 2)), rng.dirichlet(np.ones(3), size=100), ["f0", "f1"],
                             ["a", "b", "c"], bins=5)


def test_service_accepts_consistent_sketches_and_names_what_is_wrong() -> None:
    ref = _ref()
    ctx = PackageCtx("p", "m", "1", "gw", edges_digest(ref), tuple(len(f.inner_edges) + 1 for f in ref.features),
                     3, len(ref.confidence_inner_edges) + 1, 2)
    b = SketchBuilder(ref)
    for i in range(5):
        b.add(np.array([0.1 * i, -0.2]), np.array([0.2, 0.5, 0.3]), 1.0, 100.0 + i)
    good = b.flush()
    assert check_sketch(good, ctx) is None
    bad = good.model_copy(deep=True)
    bad.prediction_counts[0] += 1
    assert "sum to n_inferences" in check_sketch(bad, ctx)
    bad = good.model_copy(deep=True)
    bad.feature_counts[0][0] -= 10
    bad.nonfinite_counts[0] += 10
    assert check_sketch(bad, ctx) is not None
    bad = good.model_copy(update={"edges_digest": "0" * 16})
    assert "bins" in check_sketch(bad, ctx)
    bad = good.model_copy(update={"window_start": 200.0})
    assert "after" in check_sketch(bad, ctx)
    bad = good.model_copy(update={"latency_max_ms": float("inf")})
    assert "finite" in check_sketch(bad, ctx)
