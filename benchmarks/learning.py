"""Learning-loop quality bars (issue 16) on the vibration task: label-free performance estimates (CBPE).

A stand-in model (tinymlops.sim.synthetic: spectral pre-processing + logistic regression) is calibrated on a
held-out draw of 500 windows (the train stage uses its validation split, 300 windows for configs/pipeline.yaml); devices then run it under the
generator's covariate shifts (sensor gain, offset, noise, shaft speed) and sketch every inference exactly as the
edge agent does. Per window (5 devices x 100 inferences) the estimate comes from the merged sketch only; the
truth is the window's realised accuracy on its (withheld) labels.

Bars: |estimate - truth| <= 3 pt (mean over a shift's windows) for every shift where true accuracy >= 0.6,
and the 95 % interval covers the realised accuracy in >= 90 % of those windows. Exits 1 if a bar is missed.

    .venv/bin/python benchmarks/learning.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib

import numpy as np

from tinymlops.data.config import VibrationParams
from tinymlops.monitor.drift import compute_figures, performance_figures
from tinymlops.sim.synthetic import build_scenario

#: the generator's shift range, one knob at a time (the defaults are gain 1, offset 0, noise 0.1, shaft 25 Hz)
SHIFTS: list[tuple[str, dict[str, float]]] = [
    ("none", {}),
    *[(f"gain {g}", {"gain": g}) for g in (0.7, 0.85, 1.15, 1.3, 1.5)],
    *[(f"offset {o}", {"offset": o}) for o in (-0.3, 0.1, 0.3)],
    *[(f"noise {s}", {"noise_std": s}) for s in (0.2, 0.3, 0.5)],
    *[(f"speed {h} Hz", {"shaft_hz": h}) for h in (20.0, 23.0, 27.0, 30.0)],
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer windows per shift (smoke run)")
    ap.add_argument("--windows", type=int, default=None, help="windows per shift (default 20, quick 5)")
    args = ap.parse_args()
    windows = args.windows or (5 if args.quick else 20)
    t0 = time.perf_counter()
    sc = build_scenario(n_reference=2000)  # calibrated on a 500-window held-out draw
    ref = sc.reference
    cal = ref.calibration
    assert cal is not None
    print(f"model: reference accuracy {ref.metrics['accuracy']:.3f}, calibrated on {cal.n} validation windows "
          f"(validation accuracy {cal.accuracy:.3f}) in {time.perf_counter() - t0:.1f} s")
    print(f"{'shift':<14} {'true acc':>8} {'est acc':>8} {'|err| pt':>8} {'width pt':>8} {'covered':>8} "
          f"{'true F1':>8} {'est F1':>8}")
    ok = True
    judged = covered_total = 0
    worst = 0.0
    t1 = time.perf_counter()
    for name, knobs in SHIFTS:
        p = VibrationParams(**knobs)
        rows = []
        for w in range(windows):
            reps = [sc.device_report(f"d{k}", "1", p, 1_000 * w + 17 * k + zlib.crc32(name.encode()) % 997, 100, feedback=100)
                    for k in range(5)]
            fig = compute_figures(ref, "m", "1", reps)
            e = fig.estimated
            assert e is not None
            truth = performance_figures(np.concatenate([r.feedback_true for r in reps]),  # type: ignore[misc]
                                        np.concatenate([r.feedback_pred for r in reps]),  # type: ignore[misc]
                                        len(ref.class_names))
            rows.append((truth.accuracy, e.accuracy, e.accuracy_low, e.accuracy_high, truth.macro_f1, e.macro_f1))
        a = np.asarray(rows)
        true_acc, est_acc = a[:, 0].mean(), a[:, 1].mean()
        err_pt = abs(est_acc - true_acc) * 100
        covered = int(((a[:, 2] <= a[:, 0]) & (a[:, 0] <= a[:, 3])).sum())
        in_range = true_acc >= 0.6
        if in_range:
            judged += windows
            covered_total += covered
            worst = max(worst, err_pt)
            ok &= err_pt <= 3.0
        print(f"{name:<14} {true_acc:8.3f} {est_acc:8.3f} {err_pt:8.2f} {(a[:, 3] - a[:, 2]).mean() * 100:8.2f} "
              f"{covered:>5}/{windows:<2} {a[:, 4].mean():8.3f} {a[:, 5].mean():8.3f}"
              + ("" if in_range else "   (true accuracy < 0.6: outside the bar)"))
    coverage = covered_total / max(judged, 1)
    ok &= coverage >= 0.9
    print(f"CBPE: worst mean |estimate - truth| {worst:.2f} pt over shifts with true accuracy >= 0.6 (bar 3 pt); "
          f"95 % interval covers the realised accuracy in {covered_total}/{judged} windows ({coverage:.1%}, "
          f"bar 90 %); {windows} windows x 500 inferences per shift, {time.perf_counter() - t1:.1f} s")
    print("all bars met" if ok else "BAR MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
