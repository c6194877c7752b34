"""Model-IP quality bars of issue 17 (printed): watermark, fingerprints, extraction detection.

Usage: TF_USE_LEGACY_KERAS=1 python benchmarks/ip.py [--config configs/digits.yaml] [--independent 20]
       [--sections watermark,extraction,vibration]
Trains a watermarked model on the config's data, builds every compression variant the compress stage makes, runs
an attacker's fine-tuning (10 % of the training data, 5 epochs), trains independent models for false claims,
fingerprints the int8 variant for 100 devices and simulates normal devices and extraction attacks. Extraction
detection's false positives are counted on natural streams, undrifted and drifted (every shift printed, bar 0), both
on the config's model and (section ``vibration``, no TensorFlow) on the fleet demo's softmax regression fed by the
vibration generator under its gain, offset, noise and speed shifts. Without ``watermark`` the extraction section
runs on a model trained without triggers (and the fingerprint part is skipped).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tinymlops.ip.extraction import ExtractionVerdict, QueryBaseline

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/digits.yaml")
    ap.add_argument("--independent", type=int, default=20, help="independently trained models for false claims")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--streams", type=int, default=100, help="normal devices and attacks of each kind simulated")
    ap.add_argument("--sections", default="watermark,extraction,vibration",
                    help="comma list of watermark (with fingerprints), extraction, vibration")
    a = ap.parse_args()
    sections = set(a.sections.split(","))
    if unknown := sections - {"watermark", "extraction", "vibration"}:
        ap.error(f"--sections: unknown {sorted(unknown)}")
    if "vibration" in sections:
        vibration_extraction(a.streams)
    if not sections & {"watermark", "extraction"}:
        return

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

    if "watermark" not in sections:  # the extraction section alone: a model without triggers
        marked = train(x, y, cfg.train.seed, a.epochs)
    else:
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

    if "extraction" not in sections:
        return

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(marked(np.asarray(batch, np.float32), training=False))

    x_ref = prep.features("train")  # the train stage's reference profile: baseline from train rows + validation
    baseline = ex.natural_baseline(x_ref, predict(x_ref), predict(xv))
    natural_pool = np.concatenate([prep.features(s) for s in ("train", "val", "test")])
    sd = natural_pool.reshape(len(natural_pool), -1).std(0).reshape(natural_pool.shape[1:])
    lo, hi = np.percentile(x, 1, 0), np.percentile(x, 99, 0) + 1e-3
    print(f"\n== extraction detection ({a.streams} streams of 1,000 queries per kind, float model; natural "
          f"baseline: {baseline})")
    t0 = time.perf_counter()
    results: dict[str, list[ex.ExtractionVerdict]] = {}
    for s in range(a.streams):
        r = np.random.default_rng(s)
        seed = xt[r.choice(len(xt), 30, replace=False)]
        streams = {"normal": attacks.natural(natural_pool, 1000, r)}
        for g in (0.8, 1.15, 1.5):
            streams[f"normal, gain x{g}"] = attacks.natural(natural_pool * g, 1000, r)
        for o in (0.25, 0.5):
            streams[f"normal, offset +{o} sd"] = attacks.natural(natural_pool + o * sd, 1000, r)
        streams["normal, noise 0.3 sd"] = attacks.natural(natural_pool, 1000, r, noise=0.3)
        streams.update({"random probing": attacks.random_probe(lo, hi, 1000, r),
                        "Jacobian-augmented": attacks.jacobian_augmented(seed, predict, k, 1000, r),
                        "boundary-seeking": attacks.boundary_seeking(seed, predict, 1000, r)})
        for name, stream in streams.items():
            results.setdefault(name, []).append(_judge(np.stack(list(stream)), predict, baseline))
    _print_flags(results)
    print(f"[{time.perf_counter() - t0:.0f} s]")


def _judge(q: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
           baseline: QueryBaseline | None) -> ExtractionVerdict:
    """Run one stream through a device's query monitor and judge its figures against the natural baseline."""
    from tinymlops.ip import extraction as ex

    mon = ex.QueryDistanceMonitor()
    for qi, pi in zip(q, predict(q), strict=True):
        mon.add(qi, pi)
    return ex.assess("stream", mon.figures(), baseline=baseline)


def _print_flags(results: dict[str, list[ExtractionVerdict]]) -> None:
    """Print flagged/total per stream kind with the range of its figures (false positives: the normal rows).

    "old rule": what the absolute rule (low-margin answers > 12 % flag alone) flagged before the natural baseline.
    """
    print(f"{'stream':28s} {'flagged':>9s} {'old rule':>9s} {'W':>13s} {'repeats':>13s} {'low-margin':>13s} "
          f"{'rel. dist':>11s}")
    for name, vs in results.items():
        f = {key: [v.figures[key] for v in vs] for key in ("w", "repeat_fraction", "low_margin_fraction",
                                                          "dist_rel_p50")}
        rng = {key: f"{min(x):.3f}-{max(x):.3f}" for key, x in f.items()}
        old = sum(v.suspected or x > 0.12 for v, x in zip(vs, f["low_margin_fraction"], strict=True))
        print(f"{name:28s} {sum(v.suspected for v in vs):4d}/{len(vs):<4d} {old:4d}/{len(vs):<4d} {rng['w']:>13s} "
              f"{rng['repeat_fraction']:>13s} {rng['low_margin_fraction']:>13s} {rng['dist_rel_p50']:>11s}")
    fp = {n: sum(v.suspected for v in vs) for n, vs in results.items() if n.startswith("normal")}
    print(f"false positives on natural streams (bar 0 per shift): {sum(fp.values())}/"
          f"{sum(len(results[n]) for n in fp)}; attacks flagged: "
          + ", ".join(f"{n} {sum(v.suspected for v in vs)}/{len(vs)}" for n, vs in results.items()
                      if not n.startswith("normal")))


def vibration_extraction(streams: int, queries: int = 1000) -> None:
    """Extraction detection on the fleet demo's softmax regression (issue 16's drift demo), no TensorFlow.

    Natural streams are fresh windows of the vibration generator, undrifted and under each shift it supports; the
    baseline is what ``compute_reference`` stores (the training draw's inputs, the held-out draw's margins).
    """
    from sklearn.linear_model import LogisticRegression

    from tinymlops import preprocessing
    from tinymlops.config import PreprocessingSection
    from tinymlops.data.config import VibrationParams
    from tinymlops.ip import attacks
    from tinymlops.ip import extraction as ex
    from tinymlops.sim.demo_model import draw

    p = VibrationParams()
    X, y = draw(p, 0, 600)  # as sim.demo_model.build_demo_package trains it
    spec = preprocessing.fit(PreprocessingSection(features="spectral", bands=8), X, p.sample_rate_hz)
    F = preprocessing.transform(spec, X)
    clf = LogisticRegression(max_iter=1000).fit(F, y)

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(clf.predict_proba(np.asarray(batch, np.float64).reshape(len(batch), -1)))

    Fh = preprocessing.transform(spec, draw(p, 10_000, 300)[0])
    baseline = ex.natural_baseline(F, predict(F), predict(Fh))
    shifts: list[tuple[str, dict[str, float]]] = [("normal", {})]
    shifts += [(f"normal, gain x{g}", {"gain": g}) for g in (0.8, 0.9, 1.1, 1.15, 1.3, 1.5)]
    shifts += [(f"normal, offset +{o}", {"offset": o}) for o in (0.05, 0.1, 0.2)]
    shifts += [(f"normal, noise {n}", {"noise_std": n}) for n in (0.15, 0.2, 0.3)]
    shifts += [(f"normal, speed {h:g} Hz", {"shaft_hz": h}) for h in (22.0, 28.0)]
    lo, hi = np.percentile(F, 1, 0), np.percentile(F, 99, 0) + 1e-3
    print(f"== extraction detection on the vibration demo model ({streams} streams of {queries} queries per kind; "
          f"natural baseline: {baseline})")
    t0 = time.perf_counter()
    results: dict[str, list[ex.ExtractionVerdict]] = {}
    accuracy: dict[str, list[float]] = {}
    for s in range(streams):
        for name, kw in shifts:
            Xs, ys = draw(p.model_copy(update=kw), 100 + s, queries)
            Fs = preprocessing.transform(spec, Xs)
            results.setdefault(name, []).append(_judge(Fs, predict, baseline))
            accuracy.setdefault(name, []).append(float((predict(Fs).argmax(1) == ys).mean()))
        r = np.random.default_rng(s)
        seed = Fh[r.choice(len(Fh), 30, replace=False)]
        for name, stream in (("random probing", attacks.random_probe(lo, hi, queries, r)),
                             ("Jacobian-augmented", attacks.jacobian_augmented(seed, predict, 4, queries, r)),
                             ("boundary-seeking", attacks.boundary_seeking(seed, predict, queries, r))):
            results.setdefault(name, []).append(_judge(np.stack(list(stream)), predict, baseline))
    print("model accuracy per natural stream kind (mean): "
          + ", ".join(f"{n.removeprefix('normal, ') or 'normal'} {np.mean(v):.3f}" for n, v in accuracy.items()))
    _print_flags(results)
    print(f"[{time.perf_counter() - t0:.0f} s]\n")

if __name__ == "__main__":
    sys.exit(main())
