"""Rollout controller on a real fleet DB and MLflow store, with a simulated clock and device reports in the DB.

Devices here are rows the test updates the way the fleet service records a device's actions (install events,
current package, telemetry sketches), so the controller's state machine is exercised tick by tick and
deterministically; the end-to-end run with real agents is in tests/integration/test_rollout_fleet.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tinymlops import registry
from tinymlops.errors import UsageError
from tinymlops.fleet import store as fleet_store
from tinymlops.fleet.store import DeploymentEvent, Device, Package, Store, Telemetry
from tinymlops.monitor.reference import ReferenceProfile
from tinymlops.monitor.sketches import LATENCY_EDGES_MS, Sketch
from tinymlops.rollout import plan
from tinymlops.rollout.config import GateThresholds, RolloutConfig, StageConfig
from tinymlops.rollout.controller import Controller, list_rollouts
from tinymlops.rollout.history import model_history
from tinymlops.rollout.publish import publish_package
from tinymlops.rollout.state import RolloutDevice

MODEL = "rollout-unit"
N_DEVICES = 20


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One MLflow store with two versions of a small real model, and a target catalogue, for the module."""
    home = tmp_path_factory.mktemp("rollout-home")
    old = {k: os.environ.get(k) for k in ("TINYMLOPS_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["TINYMLOPS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    registry._client = None
    registry.connect()
    from tinymlops.sim.demo_model import register_demo_model

    register_demo_model(MODEL, seed=0)
    register_demo_model(MODEL, seed=1)
    targets = home / "targets"
    targets.mkdir()
    for name in ("ok", "bad", "offline", "stop", "lease", "abort", "driver", "slow", "old"):
        (targets / f"{name}.yaml").write_text(f"name: {name}\nruntime: onnxruntime\nlatency_slo_ms: 50\ncore: cortex-a72\nclock_mhz: 1500\nsram_bytes: 4000000000\nflash_bytes: 32000000000\nactive_power_mw: 3000\n")
    yield home
    registry._client = None
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def config(**changes: Any) -> RolloutConfig:
    stages = [StageConfig(percent=10, min_devices=2, min_inferences=40, bake_s=4, deadline_s=30),
              StageConfig(percent=50, min_devices=5, min_inferences=100, bake_s=4, deadline_s=30),
              StageConfig(percent=100, min_devices=10, min_inferences=200, bake_s=4, deadline_s=30)]
    gates = GateThresholds(report_grace_s=6, offline_after_s=10, min_error_samples=30, min_latency_samples=20,
                           min_control_inferences=50, min_feedback=1000)
    return RolloutConfig(stages=stages, gates=gates, gate_interval_s=2, hold_timeout_s=20, lease_s=5
                         ).model_copy(update=changes)


class Fleet:
    """Devices as the fleet DB records them: installs, last seen and telemetry sketches per report."""

    def __init__(self, st: Store, target: str, baseline: str, clock: Clock) -> None:
        self.st, self.target, self.clock = st, target, clock
        self.seq = 0
        with st.session() as s:
            for i in range(N_DEVICES):
                s.add(Device(id=f"{target}-{i:02d}", target=target, cohort=target, labels={},
                             credential_hash=f"{target}-{i}", current_package_id=baseline, current_version="1",
                             samples_opt_in=False, feedback_opt_in=False, enrolled_unix_s=clock.now,
                             last_seen_unix_s=clock.now, revoked=False))
        fleet_store.set_desired(st, baseline, [f"{target}-{i:02d}" for i in range(N_DEVICES)])
        self.refs: dict[str, ReferenceProfile] = {}

    def ref(self, pid: str) -> ReferenceProfile:
        if pid not in self.refs:
            with self.st.session() as s:
                self.refs[pid] = ReferenceProfile.model_validate(json.loads(s.get(Package, pid).manifest_json)
                                                                 ["reference"])
        return self.refs[pid]

    def step(self, faulty: str | None = None, fault: str = "errors", online: bool = True, install: bool = True,
             ) -> None:
        """Each device installs its desired package and reports one window of 20 inferences."""
        now = self.clock.now
        with self.st.session() as s:
            for d in fleet_store.list_devices(self.st, target=self.target):
                row = s.get(Device, d.id)
                if not online:
                    continue  # an offline device neither polls (installs) nor reports
                if install and d.desired_package_id and d.desired_package_id != d.current_package_id:
                    row.previous_package_id, row.current_package_id = row.current_package_id, d.desired_package_id
                    s.add(DeploymentEvent(device_id=d.id, kind="installed", package_id=d.desired_package_id,
                                          reason="", at_unix_s=now))
                row.last_seen_unix_s = now
                pid = row.current_package_id
                self.seq += 1
                sk = self.sketch(self.ref(pid), bad=(pid == faulty), fault=fault)
                s.add(Telemetry(device_id=d.id, seq=self.seq, model_name=MODEL, model_version="x", package_id=pid,
                                target=self.target, cohort=self.target, window_start_unix_s=now - 2,
                                window_end_unix_s=now, received_unix_s=now, n_inferences=sk.n_inferences,
                                sketch_json=sk.model_dump_json()))

    @staticmethod
    def sketch(ref: ReferenceProfile, bad: bool, fault: str, n: int = 20) -> Sketch:
        sk = Sketch.empty(ref)
        sk.n_inferences = n
        for row in sk.feature_counts:
            row[0] = n
        share = [c / sum(ref.prediction_counts) for c in ref.prediction_counts]
        counts = [round(n * p) for p in share]
        counts[0] += n - sum(counts)
        if bad and fault == "collapse":
            counts = [0] * len(counts)
            counts[-1] = n
        sk.prediction_counts = counts
        sk.confidence_counts[-1] = n
        latency_ms = 200.0 if bad and fault == "latency" else 1.0
        import numpy as np

        sk.latency_counts[int(np.searchsorted(LATENCY_EDGES_MS, latency_ms, side="right"))] = n
        sk.latency_max_ms = latency_ms
        sk.errors = n if bad and fault == "errors" else 0
        return sk


@pytest.fixture
def st(tmp_path: Path, home: Path) -> Store:
    return fleet_store.open_store(f"sqlite:///{tmp_path / 'fleet.db'}")


def setup(st: Store, home: Path, target: str) -> tuple[Clock, Fleet, str, str]:
    tdir = home / "targets"
    baseline = publish_package(st, MODEL, "1", target, targets_dir=tdir)
    candidate = publish_package(st, MODEL, "2", target, targets_dir=tdir)
    clock = Clock()
    return clock, Fleet(st, target, baseline, clock), baseline, candidate


def desired(st: Store, target: str) -> dict[str, str | None]:
    return {d.id: d.desired_package_id for d in fleet_store.list_devices(st, target=target)}


def drive(ctl: Controller, rid: str, clock: Clock, fleet: Fleet, steps: int = 200, **step_kw: Any) -> list[Any]:
    results = []
    for _ in range(steps):
        res = ctl.tick(rid)
        results.append(res)
        if res.status in ("succeeded", "rolled_back", "stopped", "aborted"):
            break
        fleet.step(**step_kw)
        clock.now += 2.0
    return results


def test_healthy_candidate_reaches_100_percent_through_every_stage(st: Store, home: Path):
    clock, fleet, baseline, candidate = setup(st, home, "ok")
    cfg = config()
    ctl = Controller(st, clock=clock, targets_dir=home / "targets")
    rid = ctl.start(MODEL, "ok", cfg, version="2", package_id=candidate)
    assert str(registry.get_alias(MODEL, "canary-ok").version) == "2"
    order = plan.device_order(rid, desired(st, "ok"))
    sizes = [plan.stage_size(N_DEVICES, s) for s in cfg.stages]
    for _ in range(200):
        res = ctl.tick(rid)
        on_candidate = {d for d, p in desired(st, "ok").items() if p == candidate}
        # only the plan's prefix for the current stage ever gets the candidate
        assert on_candidate == set(ctl.assigned(rid))
        assert on_candidate == set(order[:len(on_candidate)])
        assert len(on_candidate) <= sizes[min(res.stage_index, len(sizes) - 1)]
        if res.status == "succeeded":
            break
        fleet.step()
        clock.now += 2.0
    assert res.status == "succeeded" and res.action == "complete"
    assert set(desired(st, "ok").values()) == {candidate}
    assert str(registry.get_alias(MODEL, "production-ok").version) == "2"
    assert registry.get_alias(MODEL, "canary-ok") is None
    assert registry.get_version(MODEL, "2").tags["rollout.ok"] == "production"
    hist = model_history(MODEL, st)
    actions = [d["action"] for d in hist["decisions"] if d["target"] == "ok"]
    assert actions == ["advance", "advance", "complete"]
    moves = [(m["alias"], m["version"]) for m in hist["alias_moves"] if m["target"] == "ok"]
    assert moves == [("canary-ok", "2"), ("production-ok", "2"), ("canary-ok", "")]


@pytest.mark.parametrize("fault", ["errors", "latency", "collapse"])
def test_faulty_canary_is_rolled_back_on_the_first_gate_with_evidence(st: Store, home: Path, fault: str):
    clock, fleet, baseline, candidate = setup(st, home, "bad")
    ctl = Controller(st, clock=clock, targets_dir=home / "targets")
    rid = ctl.start(MODEL, "bad", config(), version="2", override=True, package_id=candidate)
    results = drive(ctl, rid, clock, fleet, faulty=candidate, fault=fault)
    # rolled back on the very tick the evidence crossed the check's minimum sample size: within one gate interval
    cfg = config()
    need = {"errors": cfg.gates.min_error_samples, "latency": cfg.gates.min_latency_samples,
            "collapse": cfg.stages[0].min_inferences}[fault]
    before = results[-2].decision.figures
    assert before["candidate.inferences"] + before["candidate.errors"] < need
    last = results[-1].decision.figures
    assert last["candidate.inferences"] + last["candidate.errors"] >= need
    assert results[-1].status == "rolled_back" and results[-1].stage_index == 0
    # every tick before the failure waited for evidence; the first tick that had it failed
    assert [r.decision.outcome for r in results[:-1] if r.decision] == ["inconclusive"] * (len(results) - 1)
    touched = ctl.assigned(rid)
    assert len(touched) == 2 and all(t.rolled_back_unix_s for t in touched.values())
    after = desired(st, "bad")
    assert candidate not in after.values()
    assert {after[d] for d in touched} == {baseline}
    assert registry.get_alias(MODEL, "canary-bad") is None
    assert registry.get_version(MODEL, "2").tags["rollout.bad"] == "rolled_back"
    # devices really go back: after one more report cycle all run the baseline again
    fleet.step()
    assert {d.current_package_id for d in fleet_store.list_devices(st, target="bad")} == {baseline}
    with pytest.raises(UsageError, match="--override"):
        ctl.start(MODEL, "bad", config(), version="2", package_id=candidate)
    assert ctl.start(MODEL, "bad", config(), version="2", override=True, package_id=candidate) != rid


def test_silence_is_counted_from_the_install_not_from_the_assignment(st: Store, home: Path):
    clock, fleet, _, candidate = setup(st, home, "slow")
    ctl = Controller(st, clock=clock, targets_dir=home / "targets")
    rid = ctl.start(MODEL, "slow", config(), version="2", override=True, package_id=candidate)
    for _ in range(6):  # a slow download: the canaries keep reporting the baseline for 12 s (grace: 6 s)
        assert ctl.tick(rid).status == "running"
        fleet.step(install=False)
        clock.now += 2.0
    ctl.tick(rid)
    fleet.step()  # installed now, reporting from the next window on
    clock.now += 2.0
    results = drive(ctl, rid, clock, fleet)
    assert results[-1].status == "succeeded", [r.decision.reasons for r in results if r.decision][-1]


def test_an_older_candidate_is_sent_with_a_signed_downgrade(st: Store, home: Path):
    from tinymlops.fleet.store import DesiredState

    tdir = home / "targets"
    newer = publish_package(st, MODEL, "2", "old", targets_dir=tdir)
    older = publish_package(st, MODEL, "1", "old", targets_dir=tdir)
    clock = Clock()
    fleet = Fleet(st, "old", newer, clock)
    ctl = Controller(st, clock=clock, targets_dir=tdir)
    rid = ctl.start(MODEL, "old", config(), version="1", override=True, package_id=older)
    ctl.tick(rid)
    with st.session() as s:
        auths = [json.loads(json.loads(ds.authorisation_json)["payload_json"])
                 for ds in s.query(DesiredState).all() if ds.package_id == older]
    assert auths and all(a["package_id"] == older and a["replaces_sequence"] == 2 for a in auths)
    results = drive(ctl, rid, clock, fleet)
    assert results[-1].status == "succeeded"


def test_offline_devices_hold_then_fail_past_the_final_deadline(st: Store, home: Path):
    clock, fleet, baseline, candidate = setup(st, home, "offline")
    cfg = config()
    ctl = Controller(st, clock=clock, targets_dir=home / "targets")
    with st.session() as s:  # the fleet went dark an hour ago
        for d in s.scalars(select(Device).where(Device.target == "offline")):
            d.last_seen_unix_s = clock.now - 3600
    t0 = clock.now
    rid = ctl.start(MODEL, "offline", cfg, version="2", package_id=candidate)
    results = drive(ctl, rid, clock, fleet, online=False)
    assert results[-1].status == "rolled_back"
    outcomes = [r.decision.outcome for r in results if r.decision]
    assert set(outcomes[:-1]) == {"inconclusive"}
    assert results[-1].decision.figures["offline_devices"] == 2
    assert clock.now - t0 >= cfg.stages[0].deadline_s + cfg.hold_timeout_s
    assert clock.now - t0 <= cfg.stages[0].deadline_s + cfg.hold_timeout_s + 2 * cfg.gate_interval_s
    last = list_rollouts(st, MODEL, "offline")[0]
    assert "final deadline" in last["reason"]
    assert candidate not in desired(st, "offline").values()


def test_on_timeout_stop_halts_without_rollback(st: Store, home: Path):
    clock, fleet, baseline, candidate = setup(st, home, "stop")
    ctl = Controller(st, clock=clock, targets_dir=home / "targets")
    with st.session() as s:
        for d in s.scalars(select(Device).where(Device.target == "stop")):
            d.last_seen_unix_s = clock.now - 3600
    rid = ctl.start(MODEL, "stop", config(on_timeout="stop"), version="2", package_id=candidate)
    results = drive(ctl, rid, clock, fleet, online=False)
    assert results[-1].status == "stopped"
    assert sum(p == candidate for p in desired(st, "stop").values()) == 2  # the canary stays where it was


def test_restarted_controller_waits_for_the_lease_then_resumes_and_repairs(st: Store, home: Path):
    clock, fleet, baseline, candidate = setup(st, home, "lease")
    cfg = config()
    a = Controller(st, clock=clock, owner="a", targets_dir=home / "targets")
    rid = a.start(MODEL, "lease", cfg, version="2", package_id=candidate)
    a.tick(rid)
    fleet.step()
    clock.now += 2
    b = Controller(st, clock=clock, owner="b", targets_dir=home / "targets")
    assert b.tick(rid).action == "not-owner"
    # "a" dies after recording a device but before telling the fleet: the row exists, the desired state does not
    victim = next(d for d in plan.device_order(rid, desired(st, "lease")) if d not in a.assigned(rid))
    with st.session() as s:
        s.add(RolloutDevice(rollout_id=rid, device_id=victim, stage_index=0, previous_package_id=baseline,
                            assigned_unix_s=clock.now))
    assert desired(st, "lease")[victim] == baseline
    clock.now += cfg.lease_s + 1
    res = b.tick(rid)
    assert res.action != "not-owner"
    assert desired(st, "lease")[victim] == candidate
    res = drive(b, rid, clock, fleet)[-1]
    assert res.status == "succeeded"
    assert set(desired(st, "lease").values()) == {candidate}


def test_abort_rolls_back_every_touched_device(st: Store, home: Path):
    clock, fleet, baseline, candidate = setup(st, home, "abort")
    ctl = Controller(st, clock=clock, targets_dir=home / "targets")
    rid = ctl.start(MODEL, "abort", config(), version="2", package_id=candidate)
    while ctl.get(rid).stage_index < 1:
        ctl.tick(rid)
        fleet.step()
        clock.now += 2
    ctl.tick(rid)
    assert len(ctl.assigned(rid)) > 2
    res = ctl.abort(rid, "operator saw something")
    assert res.status == "aborted"
    assert set(desired(st, "abort").values()) == {baseline}
    assert ctl.tick(rid).action == "none"
    with st.session() as s:
        ev = s.scalars(select(DeploymentEvent).where(DeploymentEvent.package_id == candidate)).all()
    assert {e.device_id for e in ev} <= set(ctl.assigned(rid))
    # an abort is not a failure: starting the version again needs no override
    assert ctl.start(MODEL, "abort", config(), version="2", package_id=candidate) != rid


def test_start_refuses_a_second_version_while_one_is_active_and_is_idempotent_for_the_same(st: Store, home: Path):
    clock, fleet, baseline, candidate = setup(st, home, "ok")
    ctl = Controller(st, clock=clock, targets_dir=home / "targets")
    rid = ctl.start(MODEL, "ok", config(), version="2", package_id=candidate)
    assert ctl.start(MODEL, "ok", config(), version="2", package_id=candidate) == rid
    with pytest.raises(UsageError, match="abort it first"):
        ctl.start(MODEL, "ok", config(), version="1")
    ctl.abort(rid)


def test_start_refuses_a_target_without_devices(st: Store, home: Path):
    ctl = Controller(st, targets_dir=home / "targets")
    with pytest.raises(UsageError, match="no device of target ok"):
        ctl.start(MODEL, "ok", config(), version="2")


def test_run_rollout_is_the_driver_a_second_start_resumes(st: Store, home: Path, tmp_path: Path):
    """The one rollout driver: created once (wait=False), a second run finds the same rollout and drives it."""
    import yaml

    from tinymlops.rollout.run import run_rollout

    setup(st, home, "driver")
    path = tmp_path / "rollout.yaml"
    path.write_text(yaml.safe_dump({"kind": "rollout", **config().model_dump(mode="json")}))
    args = (MODEL, ["driver"], path)
    first = run_rollout(*args, store=st, versions={"driver": "2"}, targets_dir=home / "targets", wait=False)
    assert [(r["target"], r["version"], r["status"]) for r in first.rollouts] == [("driver", "2", "running")]
    ticks: list[Any] = []
    again = run_rollout(*args, store=st, versions={"driver": "2"}, targets_dir=home / "targets", max_s=0,
                        on_tick=ticks.append)
    assert [r["id"] for r in again.rollouts] == [first.rollouts[0]["id"]]  # resumed, not a second rollout
    assert ticks and ticks[0].rollout_id == first.rollouts[0]["id"]
    out = again.to_dict()
    assert out["table"]["columns"] == ["target", "version", "stages reached", "decision", "reason"]
    assert out["table"]["rows"][0][0] == "driver" and out["model"] == MODEL
