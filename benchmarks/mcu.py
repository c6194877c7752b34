"""Microcontroller quality bars (issue 14): firmware built with TFLM for Cortex-M4/M7/M33 and run under QEMU.

Prints, per model and core: agreement of the firmware with the TFLite interpreter on >= 100 inputs (class
agreement; int8 max LSB difference vs TFLite's reference kernels, the bar, and vs its default optimized kernels),
linked flash and RAM vs the profiler's static estimate (per-op size table), instructions per inference (exact,
``-icount shift=0``), the cycles per instruction implied by the published MLPerf Tiny latency on the calibration
board (NUCLEO-L4R5ZI, 120 MHz; M4 only) and the time of a second export + build with the TFLM library cached.

Models: the vibration demo's ptq-int8 variant (trained here, small, in a temporary home; its test split gives 104
windows, pre-processed on the device by the C code) and the four MLPerf Tiny reference models as int8 .tflite with
random weights (tinymlops.profile.reference_models; identity pre-processing, random inputs).

Needs the Arm toolchain, qemu-system-arm and TINYMLOPS_TFLM_DIR (see docs/mcu.md). Run:
``TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/mcu.py [--models vibration,kws,vww,ic,ad] [--inputs 100]
[--cores cortex-m4,cortex-m7,cortex-m33] [--rounding single|double]`` (each core's TFLM library is built once,
~5 min on 2 idle cores; ``--rounding double`` = stock TFLM's requantisation, to see what single rounding fixes).
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
            runtime: str, core: str = "cortex-m4", rounding: str = "single") -> dict[str, Any]:
    """Export, build and run one model on the core; return the figures with the static estimate beside."""
    from tinymlops.export.run import build_and_run, write_bundle
    from tinymlops.profile.profiler import profile_model
    from tinymlops.profile.targets import get_target

    # the calibration board with its core swapped for M7/M33 (the firmware runs on that core's QEMU board)
    target = get_target(TARGET).model_copy(update={"runtime": runtime, "core": core})
    # the quality bar "export + build with the library cached": bundle (incl. the TFLM arena measurement) + link
    t0 = time.monotonic()
    res, info = write_bundle(src, target, "c", work / f"bundle-{name}-{core}", (X[0], "n/a"))
    say = lambda s: print("  " + s)  # noqa: E731
    build_and_run(res, src, target, info, None, tflm_dir=tflm_dir, say=say, rounding=rounding)
    export_build_s = time.monotonic() - t0
    load = os.getloadavg()[0]   # the machine's load while it ran (the machine is shared)
    fw = build_and_run(res, src, target, info, (X, y), tflm_dir=tflm_dir, say=say, rounding=rounding)
    est = profile_model(src.model_path, target, measure_host=False, run_device=False,
                        preprocessing=src.manifest["preprocessing"])
    return {"model": name, **fw, "export_build_s": round(export_build_s, 1), "load_average": round(load, 1),
            "static_flash_bytes": est["flash_bytes"], "static_ram_bytes": est["peak_ram_bytes"],
            "static_ram_by_part": est["firmware_estimate"]["ram_by_part"],
            "static_notes": [n for n in est["notes"] if n.startswith("firmware")]}


def _print(rows: list[dict[str, Any]], published: dict[str, float], runtime: str) -> None:
    from tinymlops.export.emulated import cpi

    c = cpi("cortex-m4", runtime)
    print(f"\n{'core':<10} {'model':<10} {'n':>4} {'agree':>6} {'LSB ref':>7} {'LSB opt':>7} {'flash':>9} "
          f"{'static':>9} {'diff':>7} {'RAM':>8} {'static':>8} {'diff':>7} {'insn/inf':>11} {'pub ms':>7} "
          f"{'CPI':>5} {'emu ms':>7} {'err':>6} {'build s':>7}")
    errors = []
    for r in rows:
        fd = 100 * (r["static_flash_bytes"] - r["flash_bytes"]) / r["flash_bytes"]
        rd = 100 * (r["static_ram_bytes"] - r["ram_bytes"]) / r["ram_bytes"]
        pub = published.get(r["model"]) if r["core"] == "cortex-m4" else None
        implied = f"{pub * 1e-3 * 120e6 / r['instructions_per_inference']:.2f}" if pub else ""
        emu_ms = r["instructions_per_inference"] * c / 120e3
        err = f"{100 * (emu_ms - pub) / pub:+.1f}%" if pub else ""
        if pub:
            errors.append(abs(100 * (emu_ms - pub) / pub))
        print(f"{r['core']:<10} {r['model']:<10} {r['n_inputs']:>4} {100 * r['class_agreement']:>5.0f}% "
              f"{r['output_max_lsb_diff']:>7} {r['optimized_max_lsb_diff']:>7} {r['flash_bytes']:>9,} "
              f"{r['static_flash_bytes']:>9,} {fd:>+6.1f}% {r['ram_bytes']:>8,} {r['static_ram_bytes']:>8,} "
              f"{rd:>+6.1f}% {r['instructions_per_inference']:>11,} {pub if pub else '':>7} {implied:>5} "
              f"{emu_ms if r['core'] == 'cortex-m4' else float('nan'):>7.2f} {err:>6} {r['export_build_s']:>7}")
    fds = [abs(100 * (r["static_flash_bytes"] - r["flash_bytes"]) / r["flash_bytes"]) for r in rows]
    rds = [abs(100 * (r["static_ram_bytes"] - r["ram_bytes"]) / r["ram_bytes"]) for r in rows]
    print(f"static estimate vs linked ELF: flash |diff| max {max(fds):.1f} % (median {np.median(fds):.1f} %), "
          f"RAM |diff| max {max(rds):.1f} % (median {np.median(rds):.1f} %); goal 5 %")
    print("LSB ref = max |firmware - TFLite reference kernels (OpResolverType.BUILTIN_REF)| on the device's int8 "
          "inputs: the bar (<= 1). LSB opt = the same vs TFLite's default optimized kernels. Library rounding: "
          + ", ".join(sorted({r["rounding"] for r in rows})) + "; vs TFLM's own Python interpreter (stock, double "
          "rounding): " + ", ".join(f"{r['model']}@{r['core']} {r['tflm_host_max_lsb_diff']}" for r in rows) + " LSB")
    print("\nflash by component (bytes):")
    for r in rows:
        print(f"  {r['core']:<10} {r['model']:<10} " + ", ".join(f"{k} {v:,}" for k, v in r["flash_by_component"].items())
              + ("; " + "; ".join(r["static_notes"]) if r["static_notes"] else ""))
    print("RAM = the linked ELF's .data + .bss (declared arena included; the harness's raw-input buffer not) + the "
          "stack high-water measured under QEMU; static = the profiler's estimate (profile/firmware_size.py): "
          "arena with the export's margin + base .data/.bss + resolver slots + pre-processing buffers + stack "
          "(the table's measured base + the deepest of the model's ops + one FP exception frame, 108 B). "
          "diff = (static - linked) / linked. Parts, linked (static):")
    for r in rows:
        lk, st = r["ram_by_component"], r["static_ram_by_part"]
        pp_linked = r["ram_buffers"]["preprocessing"]
        print(f"  {r['core']:<10} {r['model']:<10} arena {r['arena_bytes']:,} ({st['arena']:,}; used "
              f"{r['arena_used_bytes']:,}), pre-processing buffers {pp_linked:,} ({st['preprocessing']:,}), rest "
              f"of .data/.bss {r['ram_static_bytes'] - lk.get('test_io', 0) - r['arena_bytes'] - pp_linked:,} "
              f"({st['base'] + st['resolver'] + st['ops']:,}), stack {r['stack_high_water_bytes']:,} "
              f"({st['stack']:,}); pre-processing {r['preprocessing_instructions']:,} instructions")
    print(f"CPI = published MLPerf Tiny latency (NUCLEO-L4R5ZI, {runtime}, 120 MHz) x clock / instructions; "
          f"emu ms = instructions x calibrated CPI {c:.2f} / clock; err = (emu - published) / published.")
    if errors:
        print(f"median |error| of the emulated latency ({runtime}, cortex-m4): {float(np.median(errors)):.1f} %")
    print("export + build with the TFLM library cached (bundle incl. TFLM's arena measurement, compile, link; bar "
          "<= 30 s): " + ", ".join(f"{r['model']}@{r['core']} {r['export_build_s']} s (load {r['load_average']})"
                                    for r in rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="vibration,kws,vww,ic,ad")
    ap.add_argument("--cores", default="cortex-m4", help="comma-separated: cortex-m4,cortex-m7,cortex-m33")
    ap.add_argument("--inputs", type=int, default=100)
    ap.add_argument("--tflm-dir", default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--runtime", default="tflm-cmsis-nn", choices=["tflm-cmsis-nn", "tflm-reference"],
                    help="kernels of the target (tflm-reference builds the reference-kernel library)")
    ap.add_argument("--rounding", default="single", choices=["single", "double"],
                    help="the TFLM library's requantisation (single = TFLite's, the default; double = stock TFLM)")
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
            for core in args.cores.split(","):
                rows.append(measure(name, src, X, y, work, args.tflm_dir, args.runtime, core, args.rounding))
                r = rows[-1]
                print(f"[{name} {core}] {r['n_inputs']} inputs: agreement {100 * r['class_agreement']:.1f} %, max "
                      f"{r['output_max_lsb_diff']} LSB vs TFLite reference kernels ({r['outputs_off_by_1_lsb']} off "
                      f"by 1), {r['optimized_max_lsb_diff']} vs optimized kernels, "
                      f"{r['instructions_per_inference']:,} instructions/inference, library cached "
                      f"{r['library_cached']}, export+build {r['export_build_s']} s")
    _print(rows, _published_latency_ms(args.runtime), args.runtime)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    ok = all(r["class_agreement"] == 1.0 and r["output_max_lsb_diff"] <= 1 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
