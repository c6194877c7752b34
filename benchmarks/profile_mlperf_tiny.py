"""Profile the four MLPerf Tiny reference models: counts vs the reference, arena estimate vs TFLM, latency and
energy estimates vs the calibration board's published results (per-model error), and profiling throughput.

Usage: python benchmarks/profile_mlperf_tiny.py [--calibration PATH] [--fit] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from tinymlops.profile import costmodel
from tinymlops.profile.profiler import ProfileCache, profile_model
from tinymlops.profile.reference_models import export_reference_models
from tinymlops.profile.targets import SHIPPED_TARGETS_DIR, catalogue

# reference figures from ../shared/reference/mlperf_tiny_models.md (params excl. BN, MACs)
REFERENCE = {"kws": (22_604, 2.66e6), "vww": (210_850, 7.49e6), "ic": (77_706, 12.50e6), "ad": (265_864, 0.264e6)}
#: published MLPerf Tiny v1.0 latencies (ms = 1000 / median throughput) of boards other than the calibration one,
#: from mlcommons/tiny_results_v1.0 closed/<submitter>/results/<system>/<benchmark>/performance/results.txt.
#: X-CUBE-AI 7.1 rows are compared as ratios to the same software on NUCLEO-L4R5ZI (the calibration rows are
#: X-CUBE-AI 9.0, 25-60 % faster); microTVM + CMSIS-NN rows are the same software as the calibration rows.
VALIDATION = [
    # system, core, MHz, runtime, {benchmark: ms}, {benchmark: ms on NUCLEO-L4R5ZI with the same software}
    ("NUCLEO-H7A3ZI-Q (STMicroelectronics)", "cortex-m7", 280, "x-cube-ai",
     {"kws": 16.76, "vww": 50.70, "ic": 54.35, "ad": 1.826}, {"kws": 75.06, "vww": 230.5, "ic": 226.9, "ad": 7.579}),
    ("NUCLEO-U575ZI-Q (STMicroelectronics)", "cortex-m33", 160, "x-cube-ai",
     {"kws": 44.23, "vww": 133.4, "ic": 139.7, "ad": 4.849}, {"kws": 75.06, "vww": 230.5, "ic": 226.9, "ad": 7.579}),
    ("NRF5340-DK (OctoML microTVM+CMSIS-NN)", "cortex-m33", 128, "tflm-cmsis-nn",
     {"kws": 76.09, "vww": 232.0, "ic": 316.2, "ad": 6.266}, None),
]
DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mlperf_tiny_calibration.csv"


def read_calibration(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--fit", action="store_true", help="re-fit the MCU runtime constants and print them")
    ap.add_argument("--out", type=Path, default=None, help="keep the generated .tflite files here")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="mlperf-tiny-"))
    t0 = time.perf_counter()
    paths = export_reference_models(out)
    print(f"built 4 int8 reference models in {time.perf_counter() - t0:.1f} s ({out})\n")

    cache = ProfileCache()
    targets = catalogue(SHIPPED_TARGETS_DIR)
    board = targets["nucleo-l4r5zi"]

    print("== static analysis vs MLPerf Tiny reference (MACs, params within 2 %)")
    print(f"{'model':6}{'MACs':>12}{'ref':>10}{'err%':>7}{'params':>10}{'ref':>9}{'err%':>7}{'bytes':>9}")
    for name, p in paths.items():
        st = cache.get_static(p)
        rp, rm = REFERENCE[name]
        print(f"{name:6}{st.macs:12,}{rm / 1e6:9.2f}M{100 * (st.macs / rm - 1):+7.2f}{st.params:10,}{rp:9,}"
              f"{100 * (st.params / rp - 1):+7.2f}{st.model_bytes:9,}")

    print("\n== P2: static TFLM arena estimate vs arena measured by TFLite Micro (goal within 5 %)")
    for name, p in paths.items():
        r = profile_model(p, board.model_copy(update={"runtime": "tflm-reference"}), cache,
                          measure_host=False, run_device=False)
        m = r.get("measured", {})
        if "tflm_arena_bytes" in m:
            print(f"{name:6} measured {m['tflm_arena_bytes']:9,} B  estimate {m['tflm_arena_estimate_bytes']:9,} B"
                  f"  error {m['tflm_arena_error_pct']:+.2f} %")
        else:
            print(f"{name:6} TFLM could not run it: {m.get('tflm_error', r['notes'])}; estimate "
                  f"{r['estimated']['arena_bytes']:,} B")

    rows = read_calibration(args.calibration)
    print(f"\n== P1: latency/energy estimate vs published results on {rows[0]['board']} "
          f"({rows[0]['clock_mhz']} MHz); goal median |error| <= 15 % per runtime")
    feats = {n: costmodel.features(cache.get_static(p).graph) for n, p in paths.items()}
    for runtime in costmodel.MCU_RUNTIMES:
        errs, eerrs = [], []
        line = []
        for row in (r for r in rows if r["runtime"] == runtime):
            tgt = board.model_copy(update={"runtime": runtime, "clock_mhz": float(row["clock_mhz"])})
            r = profile_model(paths[row["benchmark"]], tgt, cache, measure_tflm=False, measure_host=False)
            e = r["latency_ms"] / float(row["latency_ms"]) - 1
            errs.append(abs(e))
            s = f"{row['benchmark']} {r['latency_ms']:.4g}/{float(row['latency_ms']):.4g} ms {100 * e:+.1f}%"
            if row["energy_uj"]:
                ee = r["energy_uj"] / float(row["energy_uj"]) - 1
                eerrs.append(abs(ee))
                s += f" (E {100 * ee:+.0f}%)"
            line.append(s)
        med = 100 * statistics.median(errs)
        emed = f", energy median |err| {100 * statistics.median(eerrs):.1f} %" if eerrs else ""
        print(f"{runtime:17} median |err| {med:5.1f} %{emed}\n    " + "; ".join(line))
        if args.fit:
            obs = [(feats[r["benchmark"]], float(r["latency_ms"]) * 1e-3 * float(r["clock_mhz"]) * 1e6)
                   for r in rows if r["runtime"] == runtime]
            fit = costmodel.fit_runtime(obs, costmodel.runtime_prior(runtime))
            print("    fit:", {k: round(v, 3) for k, v in fit.items()})

    print("\n== other boards (MLPerf Tiny v1.0; M7/M33 factors were set from these ratios, see costmodel.CORES)")
    for system, core, mhz, runtime, published, base in VALIDATION:
        tgt = board.model_copy(update={"core": core, "clock_mhz": float(mhz), "runtime": runtime})
        cells, errs = [], []
        for bench, ms in published.items():
            est = profile_model(paths[bench], tgt, cache, measure_tflm=False, measure_host=False)["latency_ms"]
            if base is not None:  # compare the speed-up over L4R5 with the same software version
                ref = profile_model(paths[bench], board.model_copy(update={"runtime": runtime}), cache,
                                    measure_tflm=False, measure_host=False)["latency_ms"]
                est = base[bench] * est / ref
            e = est / ms - 1
            errs.append(abs(e))
            cells.append(f"{bench} {est:.4g}/{ms:.4g} ms {100 * e:+.1f}%")
        print(f"{system:40} median |err| {100 * statistics.median(errs):4.1f} %\n    " + "; ".join(cells))

    print("\n== estimates on every catalogue target (ms / uJ / fits)")
    t1 = time.perf_counter()
    cache2 = ProfileCache()
    n = 0
    for name, p in paths.items():
        cells = []
        for t in targets.values():
            r = profile_model(p, t, cache2)
            n += 1
            cells.append(f"{t.name}={r['latency_ms']:.3g}ms/{'Y' if r['fits'] else 'N'}")
        print(f"{name}: " + "  ".join(cells))
    dt = time.perf_counter() - t1
    print("\n== this host: cost-model estimate vs host-measured (TFLite, 1 thread)")
    for name, p in paths.items():
        r = profile_model(p, targets["host"], cache2)
        h = r.get("measured", {}).get("host", {})
        if "latency_ms" in h:
            print(f"{name:4} estimate {r['estimated']['latency_ms']:.4f} ms, measured median {h['latency_ms']:.4f} ms "
                  f"(p95 {h['latency_p95_ms']:.4f}, CV {100 * h['latency_cv']:.1f} %, converged {h['converged']}, "
                  f"cold load {h['load_ms']:.1f} ms, RSS +{h['peak_rss_increase_bytes'] or 0:,} B) "
                  f"ratio {r['estimated']['latency_ms'] / h['latency_ms']:.2f}")
    print(f"\nprofiled {n} model x target pairs (incl. TFLM arena + host timing per artifact) in {dt:.1f} s "
          f"({dt / n * 1000:.0f} ms per pair)")


if __name__ == "__main__":
    main()
