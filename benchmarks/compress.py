"""Compression quality bars (issue 3) on both demo tasks: size ratios, accuracy drops, TFLM agreement, stage time.

For each task: train the float model in a fresh store, run the compress flow (Prefect, mapped variant tasks) on the
registered version, and print the measured figures against the bars. Every figure is measured on the exported
artifact in its runtime (TFLite interpreter, TFLite Micro in a subprocess, onnxruntime) on the test split.

Size bars compare file sizes, and a .tflite file has a fixed part (schema, operator and tensor tables, tensor names,
signature, metadata; per-channel quantisation parameters on top for int8) that does not shrink with the weights.
The script prints a lower bound for each size ratio: the float file's non-constant bytes plus its constants at one
byte per value (times the kept fraction, for pruning: zero runs assumed free), over the float file (gzip: over the
float gzip size). When that bound is above the bar no converter can meet it on this model: the bar is reported as
structural, not failed, and the larger task shows it. Exit code 1 if any other bar is missed.

    .venv/bin/python benchmarks/compress.py [--tasks configs/pipeline.yaml configs/digits.yaml] [--no-serial]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BARS = {"ptq_size_ratio": 0.30, "ptq_drop_pts": 1.0, "prune_sparsity": 0.75, "prune_gzip_ratio": 0.15,
        "prune_drop_pts": 2.0, "qat_drop_pts": 0.5, "tflm_agreement": 0.995, "stage_seconds": 180.0}


def weight_share(tflite_path: Path) -> tuple[int, int]:
    """Return (bytes of constant tensor data, file bytes) of a TFLite file."""
    from tensorflow.lite.python import schema_py_generated as schema

    buf = tflite_path.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    data = sum(len(b.data) for b in model.buffers if b.data is not None)
    return data, len(buf)


def run_task(config: str, serial_too: bool) -> tuple[list[tuple[str, str, bool, bool]], dict[str, Any]]:
    """Train, compress and measure one task; return (bar rows, figures)."""
    from flows.compress import compress_flow
    from tinymlops import registry
    from tinymlops.compress.stage import parent, run_compress
    from tinymlops.config import load_pipeline
    from tinymlops.train import run_train

    cfg = load_pipeline(config)
    t0 = time.perf_counter()
    res = run_train(cfg)
    train_s = time.perf_counter() - t0
    out = compress_flow(config, res.version)
    v = {x["variant"]: x for x in out["variants"]}
    failed = [f"{k}: {x['error']}" for k, x in v.items() if x["status"] != "registered"]
    data_bytes, file_bytes = weight_share(parent(cfg, res.version).tflite_path)
    overhead = file_bytes - data_bytes
    bound_int8 = (data_bytes / 4 + overhead) / file_bytes
    sparsity = next((s.target_sparsity for s in cfg.compress.variants if s.technique == "prune"), 0.0)
    bound_prune_gzip = (data_bytes / 4 * (1 - sparsity) + overhead) / out["float_tflite_gzip_bytes"]
    print(f"\n== {cfg.project} ({config}): float {cfg.model.arch}, test accuracy {out['float_accuracy']:.2%}, "
          f"trained in {train_s:.1f} s")
    print(f"   float32 TFLite {out['float_tflite_bytes']} bytes (gzip {out['float_tflite_gzip_bytes']}), of which "
          f"{data_bytes} bytes are constants ({data_bytes / file_bytes:.0%}), {overhead} bytes fixed structure")
    print(f"   lower bounds: int8 bytes ratio >= {bound_int8:.3f}, pruned ({sparsity:.0%}) int8 gzip ratio >= "
          f"{bound_prune_gzip:.3f}")
    print(f"   {'variant':<18}{'ver':>4}{'format':>8}{'bytes':>9}{'ratio':>7}{'gzip':>8}{'g-ratio':>8}"
          f"{'acc %':>8}{'Δ pts':>7}{'sparsity':>9}{'TFLM=TFLite':>12}{'seconds':>8}")
    for k, x in v.items():
        if x["status"] != "registered":
            print(f"   {k:<18} FAILED: {x['error']}")
            continue
        agree = f"{x['tflm_tflite_agreement']:.2%}" if "tflm_tflite_agreement" in x else "-"
        print(f"   {k:<18}{x['version']:>4}{x['format']:>8}{x['size_bytes']:>9}{x['size_ratio']:>7.3f}"
              f"{x['gzip_bytes']:>8}{x['gzip_ratio']:>8.3f}{100 * x['accuracy']:>8.2f}"
              f"{100 * x['accuracy_delta']:>+7.2f}{x['sparsity']:>9.3f}{agree:>12}{x['seconds']:>8.1f}")

    rows: list[tuple[str, str, bool, bool]] = []  # (bar, measured, met, structural)

    def bar(name: str, measured: str, met: bool, bound: float = 0.0, limit: float = 1.0) -> None:
        rows.append((name, measured, met, bound > limit and not met))

    if "ptq-int8" in v and v["ptq-int8"]["status"] == "registered":
        p = v["ptq-int8"]
        bar("ptq-int8 bytes <= 0.30 x float32 TFLite", f"{p['size_ratio']:.3f}", p["size_ratio"] <= BARS[
            "ptq_size_ratio"], bound_int8, BARS["ptq_size_ratio"])
        bar("ptq-int8 accuracy drop <= 1.0 pt", f"{-100 * p['accuracy_delta']:.2f} pts",
            -100 * p["accuracy_delta"] <= BARS["ptq_drop_pts"])
    if "prune" in v and v["prune"]["status"] == "registered":
        p = v["prune"]
        bar("prune sparsity >= 75 %", f"{p['sparsity']:.1%}", p["sparsity"] >= BARS["prune_sparsity"])
        bar("prune+int8 gzip <= 0.15 x float32 gzip", f"{p['gzip_ratio']:.3f}",
            p["gzip_ratio"] <= BARS["prune_gzip_ratio"], bound_prune_gzip, BARS["prune_gzip_ratio"])
        bar("prune accuracy drop <= 2.0 pts", f"{-100 * p['accuracy_delta']:.2f} pts",
            -100 * p["accuracy_delta"] <= BARS["prune_drop_pts"])
    if "qat-int8" in v and v["qat-int8"]["status"] == "registered":
        p = v["qat-int8"]
        bar("qat-int8 accuracy drop <= 0.5 pt", f"{-100 * p['accuracy_delta']:.2f} pts",
            -100 * p["accuracy_delta"] <= BARS["qat_drop_pts"])
    agreements = {k: x["tflm_tflite_agreement"] for k, x in v.items() if "tflm_tflite_agreement" in x}
    if agreements:
        worst = min(agreements, key=lambda k: agreements[k])
        bar("int8 TFLM = TFLite class >= 99.5 %", f"min {agreements[worst]:.2%} ({worst}, {len(agreements)} "
            f"artifacts)", agreements[worst] >= BARS["tflm_agreement"])
    bar(f"compress stage <= 3 min ({len(v)} variants, 2 threads)", f"{out['seconds']:.1f} s",
        out["seconds"] <= BARS["stage_seconds"])
    figures = {"stage_seconds_threads": out["seconds"], "failed": failed}
    if serial_too:
        registry.connect(cfg.mlflow.tracking_uri)
        t0 = time.perf_counter()
        run_compress(cfg, res.version)
        figures["stage_seconds_serial"] = time.perf_counter() - t0
        print(f"   same stage serially, without Prefect: {figures['stage_seconds_serial']:.1f} s "
              f"(2 threads: {out['seconds']:.1f} s, ratio {out['seconds'] / figures['stage_seconds_serial']:.2f})")
    if failed:
        bar("every configured variant registered", "; ".join(failed), False)
    return rows, figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["configs/pipeline.yaml", "configs/digits.yaml"])
    ap.add_argument("--no-serial", action="store_true", help="skip the serial timing of the first task")
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="tinymlops-bench-compress-")
    os.environ["TINYMLOPS_HOME"] = home  # a fresh store: the benchmark never touches the project's registry
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from tinymlops.settings import prepare_environment

    prepare_environment()
    from prefect.testing.utilities import prefect_test_harness

    all_rows = []
    with prefect_test_harness(server_startup_timeout=120):
        for i, task in enumerate(args.tasks):
            rows, _ = run_task(task, serial_too=(i == 0 and not args.no_serial))
            all_rows += [(task, *r) for r in rows]
    print("\n== quality bars")
    missed = 0
    for task, name, measured, met, structural in all_rows:
        status = "ok" if met else ("structural" if structural else "MISSED")
        missed += not met and not structural
        print(f"   {Path(task).stem:<10}{name:<48}{measured:>30}  {status}")
    if any(r[4] for r in all_rows):
        print("   structural: the lower bound printed for the task is above the bar (fixed file structure dominates "
              "a model this small); the larger task shows the bar on a model where weights dominate.")
    print(f"(store: {home})")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
