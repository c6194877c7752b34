"""Benchmark: one rollout gate evaluation over a 10,000-device fleet with its telemetry in the fleet DB (≤ 5 s).

Builds a fresh SQLite fleet DB: 10,000 devices of one target on a baseline package, a rollout whose 50 % stage has
switched 5,000 of them to the candidate, and three telemetry reports per device in the stage window (real sketches
on the packages' reference bins). Then times controller ticks: the one that switches 5,000 devices, and a gate
evaluation (read every device and report, merge both arms, decide, record the decision).

    .venv/bin/python benchmarks/rollout.py [--devices 10000] [--reports 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--reports", type=int, default=3, help="telemetry reports per device in the window")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tinymlops-bench-rollout-"))
    os.environ["TINYMLOPS_HOME"] = str(tmp)
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    from sqlalchemy import insert

    from tinymlops import registry
    from tinymlops.fleet import store as fleet_store
    from tinymlops.fleet.store import Device, Telemetry
    from tinymlops.monitor.reference import ReferenceProfile
    from tinymlops.monitor.sketches import LATENCY_EDGES_MS, Sketch
    from tinymlops.rollout.config import GateThresholds, RolloutConfig, StageConfig
    from tinymlops.rollout.controller import Controller
    from tinymlops.rollout.publish import publish_package
    from tinymlops.sim.demo_model import register_demo_model

    registry.connect()
    model = "bench-rollout"
    register_demo_model(model, seed=0)
    register_demo_model(model, seed=1)
    targets = tmp / "targets"
    targets.mkdir()
    (targets / "bench.yaml").write_text("name: bench\nruntime: onnxruntime\nlatency_slo_ms: 50\ncore: cortex-a72\nclock_mhz: 1500\nsram_bytes: 4000000000\nflash_bytes: 32000000000\nactive_power_mw: 3000\n")
    st = fleet_store.open_store(f"sqlite:///{tmp / 'fleet.db'}")
    baseline = publish_package(st, model, "1", "bench", targets_dir=targets)
    candidate = publish_package(st, model, "2", "bench", targets_dir=targets)

    now = time.time()
    t = time.perf_counter()
    with st.engine.begin() as conn:
        conn.execute(insert(Device), [
            {"id": f"dev-{i:05d}", "target": "bench", "cohort": "bench", "labels": {},
             "credential_hash": f"h{i}", "current_package_id": baseline, "current_version": "1",
             "samples_opt_in": False, "feedback_opt_in": True, "enrolled_unix_s": now - 3600,
             "last_seen_unix_s": now, "revoked": False} for i in range(args.devices)])
    fleet_store.set_desired(st, baseline, [f"dev-{i:05d}" for i in range(args.devices)])
    setup_devices_s = time.perf_counter() - t

    # a long bake keeps the stage open, so every timed tick is a full evaluation of the same 50 % window
    cfg = RolloutConfig(stages=[StageConfig(percent=50, min_devices=10, min_inferences=1000, bake_s=300,
                                            deadline_s=600, rate_devices_per_min=1e7),
                                StageConfig(percent=100, min_devices=10, min_inferences=1000, bake_s=0,
                                            deadline_s=600, rate_devices_per_min=1e7)],
                        gates=GateThresholds(min_feedback=100), gate_interval_s=10)
    ctl = Controller(st, targets_dir=targets)
    rid = ctl.start(model, "bench", cfg, version="2", package_id=candidate)
    t = time.perf_counter()
    first = ctl.tick(rid)
    assign_s = time.perf_counter() - t
    assigned = set(ctl.assigned(rid))

    # every device reports: the switched ones on the candidate, the rest (control) on the baseline
    rng = random.Random(0)
    refs = {}
    for pid in (baseline, candidate):
        with st.session() as s:
            refs[pid] = ReferenceProfile.model_validate(
                json.loads(s.get(fleet_store.Package, pid).manifest_json)["reference"])
    t = time.perf_counter()
    now = time.time()  # reports of the stage window: after the stage started
    rows = []
    seq = 0
    with st.engine.begin() as conn:
        conn.execute(fleet_store.Device.__table__.update().where(Device.id.in_(assigned))
                     .values(current_package_id=candidate, previous_package_id=baseline))
    for i in range(args.devices):
        did = f"dev-{i:05d}"
        pid = candidate if did in assigned else baseline
        ref = refs[pid]
        for r in range(args.reports):
            n = 50
            sk = Sketch.empty(ref)
            sk.n_inferences = n
            for j, f in enumerate(ref.features):
                sk.feature_counts[j][rng.randrange(len(f.inner_edges) + 1)] = n
            for _ in range(n):
                sk.prediction_counts[rng.randrange(len(ref.class_names))] += 1
            sk.confidence_counts[-1] = n
            sk.latency_counts[20 + rng.randrange(3)] = n
            sk.latency_max_ms = LATENCY_EDGES_MS[22]
            seq += 1
            fb = [{"timestamp": now, "prediction": 1, "label": 1}] * 5
            rows.append({"device_id": did, "seq": seq, "model_name": model, "model_version": "2" if pid == candidate
                         else "1", "package_id": pid, "target": "bench", "cohort": "bench",
                         "window_start_unix_s": now - 1 + r / 10, "window_end_unix_s": now + r / 10,
                         "received_unix_s": now + r / 10, "n_inferences": n, "sketch_json": sk.model_dump_json(),
                         "samples_json": None, "feedback_json": json.dumps(fb)})
        if len(rows) >= 5000:
            with st.engine.begin() as conn:
                conn.execute(insert(Telemetry), rows)
            rows = []
    if rows:
        with st.engine.begin() as conn:
            conn.execute(insert(Telemetry), rows)
    setup_telemetry_s = time.perf_counter() - t

    timings = []
    for _ in range(3):
        t = time.perf_counter()
        res = ctl.tick(rid)
        timings.append(time.perf_counter() - t)
        if res.status != "running":
            break
    n_reports = args.devices * args.reports
    gate_s = sorted(timings)[len(timings) // 2]
    print(f"fleet: {args.devices} devices, {n_reports} telemetry reports in the window "
          f"(setup: devices {setup_devices_s:.1f} s, telemetry {setup_telemetry_s:.1f} s)")
    print(f"tick that switched {first.assigned} devices to the candidate: {assign_s:.2f} s")
    print(f"gate evaluation (read + merge {n_reports} reports, decide, record): median {gate_s:.2f} s of "
          f"{', '.join(f'{x:.2f}' for x in timings)} s ({gate_s / 5.0:.0%} of the 5 s budget; "
          f"{n_reports / gate_s:,.0f} reports/s); outcome {res.decision.outcome if res.decision else res.status} "
          f"-> {res.action} ({'; '.join(res.decision.reasons) if res.decision else ''})")
    if res.decision is not None:
        f = res.decision.figures
        print(f"figures: candidate {f.get('candidate.devices'):.0f} devices / {f.get('candidate.inferences'):.0f} "
              f"inferences, control {f.get('control.devices', 0):.0f} devices, "
              f"p95 {f.get('candidate.latency_p95_ms', float('nan')):.3g} ms")


if __name__ == "__main__":
    main()
