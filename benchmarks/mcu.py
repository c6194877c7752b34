"""Microcontroller quality bars (issue 14): firmware built with TFLM for Cortex-M4 and run under QEMU.

Prints, per model: agreement of the firmware with the TFLite interpreter on >= 100 inputs (class agreement, int8
max LSB difference), linked flash and RAM vs the profiler's static estimate, instructions per inference (exact,
``-icount shift=0``), the cycles per instruction implied by the published MLPerf Tiny latency on the calibration
board (NUCLEO-L4R5ZI, 120 MHz) and the time of a second export + build with the TFLM library cached.

Models: the vibration demo's ptq-int8 variant (trained here, small, in a temporary home; its test split gives 104
windows, pre-processed on the device by the C code) and the four MLPerf Tiny reference models as int8 .tflite with
random weights (tinymlops.profile.reference_models; identity pre-processing, random inputs).

Needs the Arm toolchain, qemu-system-arm and TINYMLOPS_TFLM_DIR (see docs/mcu.md). Run:
``TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/mcu.py [--models vibration,kws,vww,ic,ad] [--inputs 100]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = REPO.parent / "shared" / "reference" / "mlperf_tiny_calibration.csv"
TARGET = "nucleo-l4r5zi"


def _published_latency_ms(runtime: str) -> dict[str, float]:
    if not CALIBRATION.is_file():
        return {}
    rows = [r for r in csv.reader(line for line in CALIBRATION.open() if not line.startswith("#"))]
    head = rows[0]
    out = {}
    for r in rows[1:]:
        d = dict(zip(head, r, strict=False))
        if d["runtime"] == runtime:
            out[d["benchmark"]] = float(d["latency_ms"])
    return out


def _vibration_source(home: Path, n: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Train the demo model small, ptq-int8 it, and return (source, raw test inputs, labels)."""
    import yaml

    from tinymlops.compress.stage import run_compress
    from tinymlops.config import load_pipeline
    from tinymlops.export.run import load_source, load_test_split
    from tinymlops.train import run_train

    cfg = {"kind": "pipeline", "project": "bench-mcu", "mlflow": {"experiment": "bench-mcu",
                                                                  "registered_model": "bench-vib"},
           "dataset": {"name": "vibration", "seed": 7, "vibration": {"windows_per_class": 130}},
           "preprocessing": {"features": "spectral", "bands": 8},
           "model": {"arch": "mlp", "params": {"hidden": [128, 64], "dropout": 0.1}},
           "train": {"epochs": 20, "early_stopping_patience": 0, "learning_rate": 0.003},
           "stages": ["train", "compress"], "compress": {"variants": [{"technique": "ptq-int8"}]}}
    home.mkdir(parents=True, exist_ok=True)
    (home / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    pc = load_pipeline(home / "pipeline.yaml")
    version = run_compress(pc, run_train(pc).version).variants[0]["version"]
    src = load_source("bench-vib", str(version), home / "pkg")
    X, y, _ = load_test_split(src, n)
    return src, X, y


def _reference_source(name: str, work: Path, n: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """An MLPerf Tiny reference model as int8 .tflite with identity pre-processing and random raw inputs."""
    from tinymlops.export.bundle import ExportSource
    from tinymlops.preprocessing import FittedPreprocessing
    from tinymlops.profile.reference_models import REFERENCE_MODELS, build_reference, to_tflite_int8

    _, shape, classes = REFERENCE_MODELS[name]
    path = work / f"{name}.tflite"
    path.write_bytes(to_tflite_int8(build_reference(name)))
    n_out = classes or int(np.prod(shape))
    spec = FittedPreprocessing(features="identity", bands=8, scale=1.0, normalize="none", raw_shape=list(shape),
                               feature_names=[f"f{i}" for i in range(int(np.prod(shape)))])
    manifest = {"preprocessing": spec.model_dump(mode="json"), "class_names": [f"c{i}" for i in range(n_out)],
                "file": path.name}
    X = np.random.default_rng(1).normal(0.0, 1.0, size=(n, *shape)).astype(np.float32)
    return ExportSource(f"mlperf-{name}", "0", "int8", path, manifest), X, np.zeros(n, np.int64)


def measure(name: str, src: Any, X: np.ndarray, y: np.ndarray, work: Path, tflm_dir: str | None,
            runtime: str) -> dict[str, Any]:
    """Export, build and run one model on the M4 target; return the figures with the static estimate beside."""
    from tinymlops.export.run import build_and_run, write_bundle
    from tinymlops.profile.profiler import profile_model
    from tinymlops.profile.targets import get_target

    target = get_target(TARGET).model_copy(update={"runtime": runtime})
    # the quality bar "export + build with the library cached": bundle (incl. the TFLM arena measurement) + link
    t0 = time.monotonic()
    res, info = write_bundle(src, target, "c", work / f"bundle-{name}", (X[0], "n/a"))
    build_and_run(res, src, target, info, None, tflm_dir=tflm_dir, say=lambda s: print("  " + s))
    export_build_s = time.monotonic() - t0
    fw = build_and_run(res, src, target, info, (X, y), tflm_dir=tflm_dir, say=lambda s: print("  " + s))
    est = profile_model(src.model_path, target, measure_host=False, run_device=False)
    return {"model": name, **fw, "export_build_s": round(export_build_s, 1),
            "static_flash_bytes": est["flash_bytes"], "static_ram_bytes": est["peak_ram_bytes"]}


def _print(rows: list[dict[str, Any]], published: dict[str, float], runtime: str) -> None:
    from tinymlops.export.emulated import cpi

    c = cpi("cortex-m4", runtime)
    print(f"\n{'model':<10} {'n':>4} {'agree':>6} {'maxLSB':>6} {'flash':>9} {'static':>9} {'diff':>7} "
          f"{'RAM used':>8} {'static':>8} {'diff':>7} {'insn/inf':>11} {'pub ms':>7} {'CPI':>5} {'emu ms':>7} "
          f"{'err':>6} {'build s':>7}")
    errors = []
    for r in rows:
        fd = 100 * (r["static_flash_bytes"] - r["flash_bytes"]) / r["flash_bytes"]
        rd = 100 * (r["static_ram_bytes"] - r["ram_used_bytes"]) / r["ram_used_bytes"]
        pub = published.get(r["model"])
        implied = f"{pub * 1e-3 * 120e6 / r['instructions_per_inference']:.2f}" if pub else ""
        emu_ms = r["instructions_per_inference"] * c / 120e3
        err = f"{100 * (emu_ms - pub) / pub:+.1f}%" if pub else ""
        if pub:
            errors.append(abs(100 * (emu_ms - pub) / pub))
        print(f"{r['model']:<10} {r['n_inputs']:>4} {100 * r['class_agreement']:>5.0f}% {r['output_max_lsb_diff']:>6} "
              f"{r['flash_bytes']:>9,} {r['static_flash_bytes']:>9,} {fd:>+6.1f}% {r['ram_used_bytes']:>8,} "
              f"{r['static_ram_bytes']:>8,} {rd:>+6.1f}% {r['instructions_per_inference']:>11,} "
              f"{pub if pub else '':>7} {implied:>5} {emu_ms:>7.2f} {err:>6} {r['export_build_s']:>7}")
    print("\nflash by component (bytes):")
    for r in rows:
        print(f"  {r['model']:<10} " + ", ".join(f"{k} {v:,}" for k, v in r["flash_by_component"].items()))
    print("RAM used: .data + .bss + stack high-water with the arena TFLM used on the device (the declared arena adds"
          " the export margin); static = the profiler's arena + runtime RAM overhead. diff = (static - linked) / linked.")
    for r in rows:
        print(f"  {r['model']:<10} RAM linked {r['ram_bytes']:,} (arena declared {r['arena_bytes']:,}, used "
              f"{r['arena_used_bytes']:,}), stack {r['stack_high_water_bytes']:,}; pre-processing "
              f"{r['preprocessing_instructions']:,} instructions")
    print(f"CPI = published MLPerf Tiny latency (NUCLEO-L4R5ZI, {runtime}, 120 MHz) x clock / instructions; "
          f"emu ms = instructions x calibrated CPI {c:.2f} / clock; err = (emu - published) / published.")
    if errors:
        print(f"median |error| of the emulated latency ({runtime}): {float(np.median(errors)):.1f} %")
    print("maxLSB: firmware vs the TFLite interpreter on the device's int8 inputs; vs TFLM's own interpreter on this "
          "host: " + ", ".join(f"{r['model']} {r['tflm_host_max_lsb_diff']}" for r in rows) + " LSB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="vibration,kws,vww,ic,ad")
    ap.add_argument("--inputs", type=int, default=100)
    ap.add_argument("--tflm-dir", default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--runtime", default="tflm-cmsis-nn", choices=["tflm-cmsis-nn", "tflm-reference"],
                    help="kernels of the Cortex-M4 target (tflm-reference builds the reference-kernel library)")
    args = ap.parse_args()
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tinymlops-bench-mcu-") as d:
        work = Path(d)
        os.environ["TINYMLOPS_HOME"] = str(work / "home")
        for name in args.models.split(","):
            print(f"[{name}] preparing")
            src, X, y = (_vibration_source(work / "home", args.inputs) if name == "vibration"
                         else _reference_source(name, work, args.inputs))
            rows.append(measure(name, src, X, y, work, args.tflm_dir, args.runtime))
            r = rows[-1]
            print(f"[{name}] {r['n_inputs']} inputs: agreement {100 * r['class_agreement']:.1f} %, max "
                  f"{r['output_max_lsb_diff']} LSB ({r['outputs_off_by_1_lsb']} off by 1), "
                  f"{r['instructions_per_inference']:,} instructions/inference, library cached "
                  f"{r['library_cached']}, export+build {r['export_build_s']} s")
    _print(rows, _published_latency_ms(args.runtime), args.runtime)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    ok = all(r["class_agreement"] == 1.0 and r["output_max_lsb_diff"] <= 1 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
