"""On-device personalisation (issue 16): accuracy of drifted devices before and after, with <= 50 labels each.

The stand-in model of benchmarks/learning.py (tinymlops.sim.synthetic: spectral pre-processing + logistic
regression, trained on the undrifted stream). Each simulated device serves ``--unlabelled`` windows (the agent keeps
running feature moments of them), holds ``--labels`` labelled samples, fits its personalisation exactly as the
agent does (tinymlops.personalise.fit), and is scored on ``--test`` fresh windows of its own stream.

Bar (issue 16): ``line-b`` (sensor gain x1.15) personalised to within 1 pt of the undrifted cohort's accuracy;
undrifted devices lose <= 0.5 pt. Other shifts and a class-mix change are printed for context. Exits 1 if a bar is
missed.

    .venv/bin/python benchmarks/personalise.py [--devices 10] [--labels 50]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import numpy as np

from tinymlops import preprocessing
from tinymlops.data import vibration
from tinymlops.data.config import VibrationParams
from tinymlops.personalise import Moments, Personalisation, fit
from tinymlops.sim.synthetic import build_scenario

ROWS: list[tuple[str, VibrationParams, tuple[float, ...] | None]] = [
    ("undrifted", VibrationParams(), None),
    ("line-b: gain 1.15", VibrationParams(gain=1.15), None),
    ("gain 1.3", VibrationParams(gain=1.3), None),
    ("gain 0.85", VibrationParams(gain=0.85), None),
    ("offset 0.3", VibrationParams(offset=0.3), None),
    ("noise 0.3", VibrationParams(noise_std=0.3), None),
    ("speed 23 Hz", VibrationParams(shaft_hz=23.0), None),
    ("class mix 70 % healthy", VibrationParams(), (0.7, 0.1, 0.1, 0.1)),
    ("gain 1.15 + class mix", VibrationParams(gain=1.15), (0.7, 0.1, 0.1, 0.1)),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--labels", type=int, default=50)
    ap.add_argument("--unlabelled", type=int, default=500)
    ap.add_argument("--test", type=int, default=1000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    sc = build_scenario()
    ref_mean = np.asarray([f.mean for f in sc.reference.features])
    ref_std = np.asarray([f.std for f in sc.reference.features])
    print(f"personalisation: {args.devices} devices per row, {args.labels} labels, {args.unlabelled} unlabelled "
          f"inputs, {args.test} test windows each\n")
    print(f"{'device stream':<26} {'base':>7} {'personal':>9} {'gain pt':>8}   chosen")
    results: dict[str, tuple[float, float]] = {}
    fit_ms: list[float] = []
    for name, params, weights in ROWS:
        base_acc, pers_acc, kinds = [], [], Counter[str]()
        for d in range(args.devices):
            seed = 7_919 * d + 31 * len(name)
            stream = vibration.stream(params, seed, weights) if weights else vibration.stream(params, seed)
            n = args.unlabelled + args.labels + args.test
            pairs = [next(stream) for _ in range(n)]
            F = preprocessing.transform(sc.spec, np.stack([w for w, _ in pairs]))
            y = np.asarray([lbl for _, lbl in pairs])
            moments = Moments()
            for row in F[: args.unlabelled]:
                moments.add(row)
            lab = slice(args.unlabelled, args.unlabelled + args.labels)
            t = time.perf_counter()
            chosen = fit(F[lab], y[lab], sc.predict_proba, moments, ref_mean, ref_std)
            fit_ms.append((time.perf_counter() - t) * 1000)
            kinds[chosen.kind] += 1
            Ft, yt = F[args.unlabelled + args.labels:], y[args.unlabelled + args.labels:]
            for p, acc in ((Personalisation(), base_acc), (chosen, pers_acc)):
                acc.append(float((p.outputs(sc.predict_proba(p.features(Ft))).argmax(axis=1) == yt).mean()))
        b, p = float(np.mean(base_acc)), float(np.mean(pers_acc))
        results[name] = (b, p)
        print(f"{name:<26} {b:>7.4f} {p:>9.4f} {100 * (p - b):>+8.2f}   "
              + ", ".join(f"{k} {v}" for k, v in kinds.most_common()))
    undrifted = results["undrifted"][0]
    line_b = results["line-b: gain 1.15"][1]
    loss = 100 * (results["undrifted"][0] - results["undrifted"][1])
    ok_b = abs(line_b - undrifted) <= 0.01 or line_b > undrifted
    ok_u = loss <= 0.5
    print(f"\nline-b personalised {line_b:.4f} vs undrifted {undrifted:.4f}: {100 * (line_b - undrifted):+.2f} pt "
          f"(bar: within 1 pt) {'OK' if ok_b else 'MISSED'}")
    print(f"undrifted devices after personalisation: {-loss:+.2f} pt (bar: lose <= 0.5 pt) {'OK' if ok_u else 'MISSED'}")
    print(f"fit time per device: median {np.median(fit_ms):.0f} ms (numpy, this host); total {time.perf_counter() - t0:.0f} s")
    return 0 if ok_b and ok_u else 1


if __name__ == "__main__":
    sys.exit(main())
