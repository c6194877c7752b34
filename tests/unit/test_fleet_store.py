"""Fleet store: migrations produce exactly the ORM schema; the queries other areas use filter correctly."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest

from tinymlops.fleet import store
from tinymlops.fleet.store import Device, Package, Telemetry
from tinymlops.monitor.reference import compute_reference
from tinymlops.monitor.sketches import Sketch, SketchBuilder


@pytest.fixture
def st(tmp_path: Path) -> store.Store:
    return store.open_store(f"sqlite:///{tmp_path / 'fleet.db'}")


def test_migrations_reach_head_and_match_the_orm(st: store.Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(store.alembic_config(st.url))
    head = scripts.get_current_head()
    assert "0001_fleet_initial" in {r.revision for r in scripts.walk_revisions()}  # other areas build on it
    assert store.schema_revision(st.engine) == head
    # other modules keep their tables on the same Base: rollout (0002), revocation epochs (0003), device keys (0004),
    # key updates and pending device credentials (0006), licences, receipts and findings (0008), field data (0009),
    # cohort personalisation switches (0010)
    for module in ("tinymlops.rollout.state", "tinymlops.fleet.revocation", "tinymlops.fleet.grants",
                   "tinymlops.fleet.keyupdates", "tinymlops.fleet.credentials", "tinymlops.fleet.licences",
                   "tinymlops.fleet.field", "tinymlops.fleet.personal_switch"):
        importlib.import_module(module)
    with st.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), store.Base.metadata) == []
    store.migrate(st.engine)  # idempotent
    assert store.schema_revision(st.engine) == head


def _reference():
    import numpy as np

    rng = np.random.default_rng(0)
    F = rng.normal(size=(200, 3))
    P = rng.dirichlet(np.ones(2), size=200)
    return compute_reference(F, P, ["a", "b", "c"], ["x", "y"], bins=4)


def _seed(st: store.Store) -> Sketch:
    ref = _reference()
    b = SketchBuilder(ref)
    import numpy as np

    b.add(np.zeros(3), np.array([0.2, 0.8]), 1.0, 10.0)
    sk = b.flush()
    now = time.time()
    with st.session() as s:
        for i, (cohort, target) in enumerate([("a", "t1"), ("a", "t2"), ("b", "t1")]):
            s.add(Device(id=f"d{i}", target=target, cohort=cohort, labels={}, credential_hash=f"h{i}",
                         samples_opt_in=False, feedback_opt_in=False, enrolled_unix_s=now, revoked=False))
        s.add(Package(id="p1", model_name="m", model_version="1", variant="", format="onnx", target="t1",
                      sha256="0" * 64, size_bytes=1, manifest_json="{}", signature_b64="x", key_id="k",
                      artifact=b"x", created_unix_s=now))
        s.flush()
        for i, (cohort, target, version, end) in enumerate([("a", "t1", "1", 100.0), ("a", "t2", "1", 200.0),
                                                            ("b", "t1", "2", 300.0)]):
            s.add(Telemetry(device_id=f"d{i}", seq=1, model_name="m", model_version=version, package_id="p1",
                            target=target, cohort=cohort, window_start_unix_s=end - 10, window_end_unix_s=end,
                            received_unix_s=now, n_inferences=1, sketch_json=sk.model_dump_json(),
                            samples_json="[[1.0, 2.0, 3.0]]" if i == 0 else None))
    return sk


def test_telemetry_window_filters_and_parses(st: store.Store) -> None:
    sk = _seed(st)
    assert len(store.telemetry_window(st, "m")) == 3
    recs = store.telemetry_window(st, "m", 1)
    assert [r.device_id for r in recs] == ["d0", "d1"]
    assert recs[0].sketch == sk and recs[0].samples == [[1.0, 2.0, 3.0]] and recs[1].samples is None
    assert [r.device_id for r in store.telemetry_window(st, "m", target="t1")] == ["d0", "d2"]
    assert [r.device_id for r in store.telemetry_window(st, "m", cohort="b")] == ["d2"]
    assert [r.device_id for r in store.telemetry_window(st, "m", since=150, until=300)] == ["d1"]
    assert store.telemetry_window(st, "other") == []


def test_set_desired_by_cohort_respects_targets_and_unknowns(st: store.Store) -> None:
    _seed(st)
    assert store.set_desired(st, "p1", cohort="a") == ["d0"]  # d1 is a t2, the package is for t1
    assert store.get_device(st, "d0").desired_package_id == "p1"
    assert store.get_device(st, "d1").desired_package_id is None
    with pytest.raises(LookupError):
        store.set_desired(st, "p1", device_ids=["d1"])
    with pytest.raises(LookupError):
        store.set_desired(st, "nope", device_ids=["d0"])
    assert [d.id for d in store.list_devices(st, cohort="a")] == ["d0", "d1"]
