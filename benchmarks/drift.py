"""Drift quality bars (P6) on the vibration task: detection, false alarms, Evidently agreement, speed.

Devices draw sensor windows from the seeded vibration generator, run the model's pre-processing and a small
classifier, and sketch every inference on the reference bins (tinymlops.sim.synthetic). Prints measured
figures; exits 1 if a bar is missed.

    .venv/bin/python benchmarks/drift.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from tinymlops.data.config import VibrationParams
from tinymlops.monitor.config import Thresholds
from tinymlops.monitor.drift import DeviceExpectation, compute_figures
from tinymlops.monitor.verdict import decide
from tinymlops.sim.synthetic import build_scenario

DRIFT = VibrationParams(gain=1.15)  # 15 % sensor-gain shift
BASE = VibrationParams()
TH = Thresholds()


def window_reports(sc, params, seed, devices=5, per_device=100, samples=False, cohort=None, latency_ms=2.0):
    return [sc.device_report(f"{cohort or 'd'}-{k}", "1", params, seed * 1000 + k, per_device, keep_samples=samples,
                             cohort=cohort, latency_ms=latency_ms) for k in range(devices)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer trials (smoke run)")
    args = ap.parse_args()
    trials, null_windows, agree_windows = (5, 30, 6) if args.quick else (20, 100, 20)
    ok = True
    t0 = time.perf_counter()
    sc = build_scenario(n_reference=2000)
    n_feat = len(sc.reference.features)
    print(f"reference: {sc.reference.n} windows, {n_feat} features x {sc.reference.bins} bins, "
          f"model accuracy {sc.reference.metrics['accuracy']:.3f} ({time.perf_counter() - t0:.1f} s)")

    # P6a: 15 % gain shift on one cohort flagged in the first window of >= 500 inferences; other cohorts quiet
    hits = quiet = 0
    first_levels = []
    for t in range(trials):
        levels = {}
        for cohort, params in (("a", BASE), ("b", DRIFT), ("c", BASE)):
            reps = window_reports(sc, params, 10 + 100 * t + ord(cohort), cohort=cohort)
            levels[cohort] = decide(compute_figures(sc.reference, "m", "1", reps, cohort=cohort), TH).level
        hits += levels["b"] != "ok"
        quiet += (levels["a"] == "ok") + (levels["c"] == "ok")
        first_levels.append(levels["b"])
    det = hits / trials
    print(f"P6 detection: drifted cohort flagged in the first 500-inference window in {hits}/{trials} trials "
          f"({det:.0%}; levels {sorted(set(first_levels))}); undrifted cohorts quiet {quiet}/{2 * trials}")
    ok &= det == 1.0

    # P6b: false alarms over windows without drift
    alarms = 0
    for w in range(null_windows):
        v = decide(compute_figures(sc.reference, "m", "1", window_reports(sc, BASE, 50_000 + w)), TH)
        alarms += v.level != "ok"
    fa = alarms / null_windows
    print(f"P6 false alarms: {alarms}/{null_windows} no-drift windows of 500 inferences flagged ({fa:.1%}; "
          f"bar <= 5 %, design alpha {TH.features.alpha:.0%})")
    ok &= fa <= 0.05

    # P6c: sketch per-feature verdicts vs Evidently's raw-sample verdicts
    t_imp = time.perf_counter()
    from tinymlops.monitor import evidently_report

    evidently_report.data_drift(sc.reference_features[:200], sc.reference_features[200:400],
                                sc.spec.feature_names, html=False)
    warmup_s = time.perf_counter() - t_imp
    alpha = TH.features.alpha / (n_feat + 2)
    agree = total = 0
    ev_s = []
    per_kind = {"drift": [0, 0], "none": [0, 0]}
    for w in range(agree_windows):
        drifted = w % 2 == 0
        reps = window_reports(sc, DRIFT if drifted else BASE, 90_000 + w, samples=True)
        v = decide(compute_figures(sc.reference, "m", "1", reps), TH)
        ours = {c.name: c.level in ("warn", "retrain") for c in v.features}
        t1 = time.perf_counter()
        ev = evidently_report.data_drift(sc.reference_features, np.concatenate([r.samples for r in reps]),
                                         sc.spec.feature_names, method="ks", threshold=alpha, html=False)
        ev_s.append(time.perf_counter() - t1)
        same = sum(ours[c] == bool(ev.columns[c]["drifted"]) for c in ours)
        agree += same
        total += len(ours)
        k = per_kind["drift" if drifted else "none"]
        k[0] += same
        k[1] += len(ours)
    rate = agree / total
    print(f"P6 agreement with Evidently (DataDriftPreset, per-column KS at p < {alpha:.2g} = alpha/(features+2)): "
          f"{agree}/{total} (feature, window) pairs = {rate:.1%} (drifted windows "
          f"{per_kind['drift'][0] / max(per_kind['drift'][1], 1):.1%}, undrifted "
          f"{per_kind['none'][0] / max(per_kind['none'][1], 1):.1%}); Evidently import + first report "
          f"{warmup_s:.1f} s, then {np.median(ev_s):.2f} s per 500-sample report")
    ok &= rate >= 0.95

    # P6d: a check over 100 devices' sketches (one of them 3x slower than profiled)
    reps = window_reports(sc, BASE, 7, devices=100, per_device=100)
    reps += window_reports(sc, BASE, 8, devices=1, per_device=100, cohort="slow", latency_ms=6.0)
    exp = DeviceExpectation(target="cortex-m4", latency_ms=2.0, peak_ram_bytes=20_000, energy_uj=50.0)
    t1 = time.perf_counter()
    v = decide(compute_figures(sc.reference, "m", "1", reps, exp, target="cortex-m4"), TH)
    check_s = time.perf_counter() - t1
    slow = [c.name for c in v.checks if c.kind == "device" and c.level == "warn"]
    print(f"P6 speed: merge + figures + verdict over {len(reps)} devices' sketches ({v.n_inferences} inferences) "
          f"in {check_s * 1000:.0f} ms (bar 10 s; Evidently excluded); verdict {v.level}, "
          f"device anomalies flagged: {slow}")
    ok &= check_s <= 10.0 and slow == ["slow-0"]
    print(f"total {time.perf_counter() - t0:.0f} s; {'all bars met' if ok else 'BAR MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
