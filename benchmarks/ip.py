"""Model-IP quality bars of issue 17 (printed): watermark, fingerprints, extraction detection.

Usage: TF_USE_LEGACY_KERAS=1 python benchmarks/ip.py [--config configs/digits.yaml] [--independent 20]
Trains a watermarked model on the config's data, builds every compression variant the compress stage makes, runs
an attacker's fine-tuning (10 % of the training data, 5 epochs), trains independent models for false claims,
fingerprints the int8 variant for 100 devices and simulates normal devices and extraction attacks.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/digits.yaml")
    ap.add_argument("--independent", type=int, default=20, help="independently trained models for false claims")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--streams", type=int, default=100, help="normal devices and attacks of each kind simulated")
    a = ap.parse_args()

    from tinymlops.compress import techniques as T
    from tinymlops.compress.export import to_onnx, to_tflite_float
    from tinymlops.config import (
        Cluster,
        Fp16,
        OnnxInt8,
        Prune,
        PruneClusterQat,
        PtqInt8,
        QatInt8,
        load_pipeline,
    )
    from tinymlops.data import shift_augment
    from tinymlops.ip import attacks
    from tinymlops.ip import extraction as ex
    from tinymlops.ip import fingerprint as fp
    from tinymlops.ip.watermark import make_watermark, predict_file, verdict, with_triggers
    from tinymlops.models import build as build_arch
    from tinymlops.tf import keras
    from tinymlops.train import prepare

    cfg = load_pipeline(a.config)
    prep = prepare(cfg)
    x, y = prep.features("train"), prep.splits["train"].y
    xv, yv, xt, yt = prep.features("val"), prep.splits["val"].y, prep.features("test"), prep.splits["test"].y
    if cfg.train.augment_shift_pixels:
        x, y = shift_augment(x, y, cfg.train.augment_shift_pixels)
    k = len(prep.class_names)
    wm = make_watermark(x, k, 100)
    out = Path(tempfile.mkdtemp(prefix="tinymlops-ipbench-"))

    def train(xx: np.ndarray, yy: np.ndarray, seed: int, epochs: int) -> object:
        keras.utils.set_random_seed(seed)
        m = build_arch(cfg.model.arch, xx.shape[1:], k, **cfg.model.params)
        m.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate), loss="sparse_categorical_crossentropy")
        m.fit(xx, yy, validation_data=(xv, yv), epochs=epochs, batch_size=cfg.train.batch_size, verbose=0,
              callbacks=[keras.callbacks.EarlyStopping(patience=cfg.train.early_stopping_patience,
                                                       restore_best_weights=True)])
        return m

    def acc(probs: np.ndarray) -> float:
        return float((np.asarray(probs).argmax(1) == yt).mean())

    print(f"== watermark ({cfg.project}, {len(x)} training rows, {k} classes, {len(wm.labels)} triggers)")
    t0 = time.perf_counter()
    xw, yw = with_triggers(x, y, wm, 8)
    marked = train(xw, yw, cfg.train.seed, a.epochs)
    clean = train(x, y, cfg.train.seed, a.epochs)
    acc_marked, acc_clean = acc(marked.predict(xt, verbose=0)), acc(clean.predict(xt, verbose=0))
    print(f"accuracy: watermarked {100 * acc_marked:.2f} %, same training without {100 * acc_clean:.2f} % "
          f"(cost {100 * (acc_clean - acc_marked):+.2f} pt)  [{time.perf_counter() - t0:.0f} s]")
    marked.save(out / "marked.h5")
    (out / "fp32.tflite").write_bytes(to_tflite_float(marked))
    to_onnx(marked, out / "fp32.onnx")
    rows = []
    for f in ("marked.h5", "fp32.tflite", "fp32.onnx"):
        rows.append((f"keras->{f}", verdict(wm, predict_file(out / f, wm.inputs), "white-box", f),
                     acc(predict_file(out / f, xt))))
    src = T.FloatSource(out / "marked.h5", out / "fp32.onnx", x, y, xv, yv, cfg.train.batch_size,
                        cfg.train.learning_rate, cfg.train.seed)
    # the compress stage with ip.watermark: fine-tuning replays the trigger set as training mixed it in
    replayed = T.FloatSource(out / "marked.h5", out / "fp32.onnx", x, y, xv, yv, cfg.train.batch_size,
                             cfg.train.learning_rate, cfg.train.seed,
                             replay=(np.concatenate([wm.inputs] * 8), np.concatenate([wm.labels] * 8)))
    fine_tuned = (Prune, Cluster, QatInt8, PruneClusterQat)
    for spec in (PtqInt8(technique="ptq-int8"), Fp16(technique="fp16"), Prune(technique="prune"),
                 Cluster(technique="cluster"), QatInt8(technique="qat-int8"),
                 PruneClusterQat(technique="prune-cluster-qat"), OnnxInt8(technique="onnx-int8")):
        runs = [("", src), (" +replay", replayed)] if isinstance(spec, fine_tuned) else [("", src)]
        for suffix, source in runs:
            built = T.build(spec.model_copy(update={"name": spec.technique + suffix.replace(" +", "-")}), source, out)
            rows.append((spec.technique + (" clean fine-tuning" if suffix == "" and isinstance(spec, fine_tuned)
                                           else suffix),
                         verdict(wm, predict_file(built.path, wm.inputs), "white-box", spec.technique),
                         acc(predict_file(built.path, xt))))
    rng = np.random.default_rng(1)
    idx = rng.choice(len(x), len(x) // 10, replace=False)
    for lr in (cfg.train.learning_rate, cfg.train.learning_rate / 3):
        stolen = keras.models.load_model(out / "marked.h5", compile=False)
        stolen.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
        stolen.fit(x[idx], y[idx], epochs=5, batch_size=cfg.train.batch_size, verbose=0)
        rows.append((f"fine-tuned 10 %/5 ep lr {lr:g}", verdict(wm, stolen.predict(wm.inputs, verbose=0), "", ""),
                     acc(stolen.predict(xt, verbose=0))))
    print(f"{'variant':34s} {'matches':>8s} {'p-value':>10s} {'verified':>9s} {'accuracy':>9s}")
    for name, v, ac in rows:
        print(f"{name:34s} {v.matches:5d}/{v.triggers} {v.p_value:10.2e} {str(v.verified):>9s} {100 * ac:8.2f}%")
    print(f"verified (p < 1e-6): {sum(v.verified for _, v, _ in rows)}/{len(rows)}; what the compress stage "
          f"registers (replayed fine-tuning): {sum(v.verified for n, v, _ in rows if 'clean' not in n)}/"
          f"{sum('clean' not in n for n, _, _ in rows)}")

    t0 = time.perf_counter()
    claims, worst = 0, 1.0
    for s in range(a.independent):
        v = verdict(wm, train(x, y, 1000 + s, max(5, a.epochs // 2)).predict(wm.inputs, verbose=0), "", "")
        claims += v.verified
        worst = min(worst, v.p_value)
    print(f"false claims on {a.independent} independently trained models: {claims} (smallest p-value {worst:.2e})"
          f"  [{time.perf_counter() - t0:.0f} s]")

    # the reference sample the train stage logs: up to 2,000 training rows (before augmentation)
    x_ref = prep.features("train")
    x_ref = x_ref[np.sort(np.random.default_rng(0).choice(len(x_ref), min(2000, len(x_ref)), replace=False))]
    print(f"\n== fingerprints ({a.devices} devices, 48 int8 weights each, ptq-int8 variant; {len(x_ref)} reference "
          f"inputs; redrawn until no reference answer flips or comes within {fp.MARGIN_FACTOR:g}x the output change "
          "of a flip)")
    base = (out / "ptq-int8.tflite").read_bytes()
    key, devices = os.urandom(32), [f"device-{i:03d}" for i in range(a.devices)]
    tensors = fp.int8_tensors(base)
    pool, sha = fp._pool(base, tensors), hashlib.sha256(base).hexdigest()
    check, test = fp._predictor(x_ref), fp._predictor(xt)
    check_out, test_out = check(base), test(base)
    base_acc = float((test_out.argmax(1) == yt).mean())
    t0 = time.perf_counter()
    quiet = fp.quiet_candidates(base, x_ref, 48)
    print(f"quiet weights (lowest input activity): {len(quiet) if quiet is not None else len(pool)} of {len(pool)}"
          f"  [{time.perf_counter() - t0:.1f} s]")
    for label, cand in (("every int8 weight", None), ("quietest quarter (shipped)", quiet)):
        t0 = time.perf_counter()
        attempts = {d: fp.choose_attempt(base, key, d, 48, check, check_out, cand) for d in devices}
        traced, deltas, margins, bounds, moved = 0, [], [], [], 0
        for d in devices:
            leak = fp.apply(base, key, d, 48, attempts[d], cand)
            assert len(leak) == len(base)
            scores = fp.score_devices(fp._aligned_pool(leak, tensors, d), pool, key, sha, attempts, 48, cand)
            ranked = sorted(scores, key=scores.__getitem__, reverse=True)
            traced += ranked[0] == d and scores[d] >= fp.MATCH_MIN
            margins.append(scores[ranked[0]] - scores[ranked[1]])
            leak_out = test(leak)
            deltas.append(float((leak_out.argmax(1) == yt).mean()) - base_acc)
            moved += int(np.count_nonzero(leak_out.argmax(1) != test_out.argmax(1)))
            bounds.append(fp.change(check_out, check(leak))[2])
        dl = 100 * np.abs(np.asarray(deltas))
        print(f"{label}: traced {traced}/{len(devices)} ({100 * traced / len(devices):.0f} %), smallest score margin "
              f"{min(margins):.2f}; redraws {sum(v > 0 for v in attempts.values())} devices; output change bound on "
              f"the reference inputs mean {np.mean(bounds):.4f}; test answers moved {moved} in {len(devices)} "
              f"copies; test accuracy change per device max {dl.max():.2f} pt, mean {dl.mean():.3f} pt, within "
              f"0.1 pt {int((dl <= 0.1).sum())}/{len(devices)}  [{time.perf_counter() - t0:.0f} s]")
    print(f"(one test sample = {100 / len(yt):.2f} pt; file size unchanged: same graph and arena)")

    print(f"\n== extraction detection ({a.streams} streams of 1,000 queries per kind, float model)")

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(marked(np.asarray(batch, np.float32), training=False))

    natural_pool = np.concatenate([prep.features(s) for s in ("train", "val", "test")])
    lo, hi = np.percentile(x, 1, 0), np.percentile(x, 99, 0) + 1e-3
    results: dict[str, list[bool]] = {}
    t0 = time.perf_counter()
    for s in range(a.streams):
        r = np.random.default_rng(s)
        seed = xt[r.choice(len(xt), 30, replace=False)]
        streams = {"normal": attacks.natural(natural_pool, 1000, r),
                   "normal, drifted x1.15": attacks.natural(natural_pool * 1.15, 1000, r),
                   "random probing": attacks.random_probe(lo, hi, 1000, r),
                   "Jacobian-augmented": attacks.jacobian_augmented(seed, predict, k, 1000, r),
                   "boundary-seeking": attacks.boundary_seeking(seed, predict, 1000, r)}
        for name, stream in streams.items():
            q = np.stack(list(stream))
            mon = ex.QueryDistanceMonitor()
            for qi, pi in zip(q, predict(q), strict=True):
                mon.add(qi, pi)
            results.setdefault(name, []).append(ex.assess(name, mon.figures()).suspected)
    for name, flags in results.items():
        print(f"{name:24s} flagged {sum(flags):4d}/{len(flags)} ({100 * float(np.mean(flags)):.1f} %)")
    print(f"[{time.perf_counter() - t0:.0f} s]")


if __name__ == "__main__":
    sys.exit(main())
