"""Staged rollout end to end: the fleet service, simulated devices running the real agent, MLflow, Prefect.

One fleet (service in a subprocess, 8 async agents per target) runs a baseline version on five targets. Through the
Prefect flow, each target gets a candidate: ``healthy`` a good model; ``crash`` a model that crash-loops the
device; ``slow`` one whose inference takes 120 ms more; ``collapse`` a real model whose class outputs are permuted
(accuracy collapse, caught on labelled feedback). Only the healthy one may reach 100 %; every faulty one must be
rolled back from its canary stage, on every touched device, without any device outside the canary cohort ever
receiving it. Then a controller driving ``kill`` is SIGKILLed mid-stage, restarted, and must resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "rollout-it"
TARGETS = ("healthy", "crash", "slow", "collapse", "kill")
DEVICES = 8
CONFIG = """kind: rollout
gate_interval_s: 1
hold_timeout_s: 30
on_timeout: fail
lease_s: 3
stages:
  - {name: canary, percent: 10, min_devices: 1, min_inferences: 30, bake_s: 3, deadline_s: 40}
  - {percent: 50, min_devices: 3, min_inferences: 80, bake_s: 3, deadline_s: 40}
  - {percent: 100, min_devices: 6, min_inferences: 150, bake_s: 3, deadline_s: 40}
gates:
  report_grace_s: 5
  offline_after_s: 10
  min_error_samples: 30
  min_latency_samples: 20
  latency_tolerance_ms: 20
  min_control_inferences: 60
  min_feedback: 20
  max_accuracy_drop: 0.2
"""


def register_permuted(model: str, version: str) -> str:
    """Register a copy of a version whose class outputs are rotated by one: a real model with wrong answers."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from tinymlops import registry

    pkg = registry.download_package(model, version)
    manifest = registry.read_manifest(pkg)
    m = onnx.load(str(pkg / manifest["file"]))
    for init in m.graph.initializer:
        if init.name in ("W", "b"):
            arr = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.roll(arr, 1, axis=-1).astype(arr.dtype), init.name))
    blob = m.SerializeToString()
    (pkg / manifest["file"]).write_bytes(blob)
    manifest.update(sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob), variant="onnx-fp32-permuted")
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    mv = registry.get_version(model, version)
    with registry.run("rollout-it", "permuted") as r:
        registry.log_artifact(r.run_id, pkg, registry.PACKAGE_DIR)
        return registry.register_version(model, r.run_id, tags={**mv.tags, "variant": "onnx-fp32-permuted"},
                                         description="class outputs rotated: accuracy collapse")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Iterator[dict[str, Any]]:
    """A running fleet service and simulated fleet on baseline v1 for every target."""
    home = tmp_path_factory.mktemp("rollout-it")
    old = {k: os.environ.get(k) for k in ("TINYMLOPS_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["TINYMLOPS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from tinymlops import registry
    from tinymlops.fleet import service
    from tinymlops.fleet.store import open_store
    from tinymlops.sim.demo import FAULTS, PackageFault, fleet_service, start_fleet, wait_installed
    from tinymlops.sim.demo_model import register_demo_model
    from tinymlops.sim.simulator import CohortSpec, publish

    registry._client = None
    registry.connect()
    register_demo_model(MODEL, seed=0)  # v1: the baseline every device runs
    register_demo_model(MODEL, seed=1)  # v2: a healthy candidate
    permuted = register_permuted(MODEL, "2")  # v3: accuracy collapse
    targets_dir = home / "targets"
    targets_dir.mkdir()
    for t in TARGETS:
        (targets_dir / f"{t}.yaml").write_text(f"name: {t}\nruntime: onnxruntime\nlatency_slo_ms: 100\ncore: cortex-a72\nclock_mhz: 1500\nsram_bytes: 4000000000\nflash_bytes: 32000000000\nactive_power_mw: 3000\n")
    config = home / "rollout.yaml"
    config.write_text(CONFIG)
    db_url = f"sqlite:///{home / 'fleet.db'}"
    st = open_store(db_url)
    token = service.create_operator_token(st, "it")
    with fleet_service(db_url, targets_dir=targets_dir, log_path=home / "service.log") as url:
        baseline = {t: publish(url, token, MODEL, ["1"], [t], cohorts={t: t}, targets_dir=targets_dir)[t]
                    for t in TARGETS}
        cohorts = [CohortSpec(name=t, devices=DEVICES, target=t, feedback_opt_in=True) for t in TARGETS]
        sim = start_fleet(url, token, cohorts, home / "devices", targets_dir=targets_dir, duration_s=900,
                          package_faults=[PackageFault("crash", "2", FAULTS["crash"]),
                                          PackageFault("slow", "2", FAULTS["latency"])])
        try:
            wait_installed(st, baseline, dict.fromkeys(TARGETS, DEVICES), fleet=sim, timeout_s=120)
            yield {"home": home, "url": url, "token": token, "st": st, "db_url": db_url, "targets_dir": targets_dir,
                   "config": config, "baseline": baseline, "permuted": permuted}
        finally:
            sim.stop()
    registry._client = None
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def decisions_of(st: Any, rollout_id: str) -> list[Any]:
    """Return a rollout's gate decisions, oldest first."""
    from tinymlops.rollout.state import RolloutDecision

    with st.session() as s:
        return list(s.query(RolloutDecision).filter(RolloutDecision.rollout_id == rollout_id)
                    .order_by(RolloutDecision.id).all())


def wait_for(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def test_flow_promotes_the_healthy_candidate_and_rolls_back_every_faulty_one(fleet: dict[str, Any]):
    from flows.rollout import rollout_flow
    from tinymlops import registry
    from tinymlops.errors import UsageError
    from tinymlops.fleet.store import deployment_events, list_devices
    from tinymlops.rollout.controller import Controller, list_rollouts
    from tinymlops.rollout.history import model_history
    from tinymlops.rollout.run import load_config

    st = fleet["st"]
    targets = ["healthy", "crash", "slow", "collapse"]
    t0 = time.time()
    out = rollout_flow(MODEL, targets, str(fleet["config"]), fleet_url=fleet["url"],
                       operator_token=fleet["token"], db_url=fleet["db_url"],
                       versions={"healthy": "2", "crash": "2", "slow": "2", "collapse": fleet["permuted"]},
                       targets_dir=str(fleet["targets_dir"]), max_s=150)
    rows = {r[0]: r for r in out["table"]["rows"]}
    assert out["table"]["columns"] == ["target", "version", "stages reached", "decision", "reason"]
    assert rows["healthy"][3] == "promoted to production", rows
    assert rows["healthy"][2] == "canary > 50% > 100%"
    for t, needle in (("crash", "silent"), ("slow", "latency"), ("collapse", r"accuracy|prediction_shift")):
        assert rows[t][3] == "rolled back", rows[t]
        assert rows[t][2] == "canary", rows[t]
        assert re.search(needle, rows[t][4]), rows[t]
    assert str(registry.get_alias(MODEL, "production-healthy").version) == "2"
    for t in targets:
        assert registry.get_alias(MODEL, f"canary-{t}") is None

    config = load_config(fleet["config"])
    by_target = {r["target"]: r for r in list_rollouts(st, MODEL)}
    ctl = Controller(st)
    for t in ("crash", "slow", "collapse"):
        r = by_target[t]
        touched = ctl.assigned(r["id"])
        # the fault is caught in the canary stage, long before the deadline
        assert len(touched) == 1
        assert r["finished_unix_s"] - r["created_unix_s"] < config.stages[0].deadline_s
        # rolled back within one gate interval of the evidence being there
        decisions = decisions_of(st, r["id"])
        fail, before = decisions[-1], decisions[-2]
        assert fail.action == "rollback"
        if t == "slow":
            assert json.loads(before.figures_json).get("candidate.inferences", 0) < config.gates.min_latency_samples
        elif t == "crash":
            assigned_at = min(row.assigned_unix_s for row in touched.values())
            assert fail.at_unix_s - assigned_at <= config.gates.report_grace_s + 2 * config.gate_interval_s + 3
        else:
            figs = json.loads(before.figures_json)
            assert (figs.get("candidate.feedback_n", 0) < config.gates.min_feedback
                    or figs.get("candidate.inferences", 0) < config.stages[0].min_inferences)
        # nobody outside the canary cohort ever received the faulty package
        got = {e["device_id"] for e in deployment_events(st, since=t0, package_id=r["package_id"])}
        assert got <= set(touched), (t, got, set(touched))
        # rollback restores the previous version on every touched device
        prev = {d: row.previous_package_id for d, row in touched.items()}
        wait_for(lambda prev=prev, t=t: all(d.current_package_id == prev[d.id]
                                             for d in list_devices(st, target=t) if d.id in prev),
                 40, f"{t}: touched devices back on their previous package")
        assert all(p == fleet["baseline"][t] for p in prev.values())
        with pytest.raises(UsageError, match="--override"):
            ctl.start(MODEL, t, config, version=r["version"])
    wait_for(lambda: all(d.current_package_id == by_target["healthy"]["package_id"]
                         for d in list_devices(st, target="healthy")), 30, "healthy fleet on the candidate")
    hist = model_history(MODEL, st)
    assert {(m["alias"], m["version"]) for m in hist["alias_moves"]} >= {
        ("canary-healthy", "2"), ("production-healthy", "2"), ("canary-crash", "")}
    assert any(d["target"] == "slow" and d["action"] == "rollback" for d in hist["decisions"])


def test_controller_killed_mid_stage_resumes_where_it_was(fleet: dict[str, Any]):
    from tinymlops.fleet.store import Package, list_devices
    from tinymlops.rollout.controller import list_rollouts

    st = fleet["st"]
    env = {**os.environ, "TINYMLOPS_HOME": str(fleet["home"])}
    argv = [sys.executable, "-c", "from cli import main; main()", "rollout", "start", MODEL,
            "--target", "kill", "--version", "2", "--config", str(fleet["config"]), "--db", fleet["db_url"],
            "--server", fleet["url"], "--token", fleet["token"], "--targets-dir", str(fleet["targets_dir"])]
    log = (fleet["home"] / "controller.log").open("ab")
    # the killed controller runs without Prefect: a SIGKILLed CLI cannot stop the temporary Prefect server it
    # started, which would outlive the test; the restart below goes through the rollout flow (the default)
    proc = subprocess.Popen([*argv, "--no-prefect"], env=env, stdout=log, stderr=log)

    def current() -> dict[str, Any] | None:
        rows = list_rollouts(st, MODEL, "kill")
        return rows[0] if rows else None

    try:
        wait_for(lambda: (current() or {}).get("stage_index", 0) >= 1, 180, "the kill rollout to reach stage 2")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = current()
    assert before is not None and before["status"] == "running"
    killed_at = time.time()
    # no device is left without a valid desired state: each points at a stored package, old or new
    with st.session() as s:
        stored = {p.id for p in s.query(Package.id).all()}
    desired = {d.id: d.desired_package_id for d in list_devices(st, target="kill")}
    assert len(desired) == DEVICES and all(p in stored for p in desired.values())
    assert set(desired.values()) <= {fleet["baseline"]["kill"], before["package_id"]}

    res = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert [r["id"] for r in out["rollouts"]] == [before["id"]]  # the same rollout, resumed
    after = current()
    assert after is not None and after["status"] == "succeeded"
    with st.session() as s:
        from tinymlops.rollout.state import RolloutDecision

        late = s.query(RolloutDecision).filter(RolloutDecision.rollout_id == before["id"],
                                               RolloutDecision.at_unix_s > killed_at).all()
    assert late and min(d.stage_index for d in late) >= before["stage_index"]  # never restarted from stage 1
    assert {d.desired_package_id for d in list_devices(st, target="kill")} == {before["package_id"]}
