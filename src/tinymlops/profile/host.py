"""Host measurement: cold load, warm latency (median, p95, CV) and peak RSS increase, on this machine.

Models are measured in one worker subprocess (``python -m tinymlops.profile.host MODEL:RUNTIME ...``) so that
load time is really cold for the process, RSS figures are not polluted by the caller, and a runtime crash cannot
take the caller down. Latency samples (each the mean of a block of inferences of >= 1 ms) are taken after a warm-up until their
coefficient of variation drops below ``cv_target`` (or a sample/time cap is hit); the result says whether it
converged. Results are
host-measured: they describe this machine, not the target board.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tinymlops.errors import RuntimeCrash

WARMUP_RUNS = 5
MIN_SAMPLES = 20
MAX_SAMPLES = 400
MAX_SECONDS = 2.0
CV_TARGET = 0.05
#: a sample is the mean of a block of inferences lasting at least this long: sub-100-us inferences timed one by
#: one measure scheduler and timer jitter more than the model
MIN_BLOCK_MS = 1.0


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cv(samples: list[float]) -> float:
    """Return the coefficient of variation (stdev / mean) of samples."""
    if len(samples) < 2:
        return float("inf")
    mean = statistics.fmean(samples)
    return statistics.stdev(samples) / mean if mean > 0 else float("inf")


def percentile(samples: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) by linear interpolation."""
    s = sorted(samples)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def measure_one(path: str, runtime: str, cv_target: float = CV_TARGET, max_samples: int = MAX_SAMPLES,
                max_seconds: float = MAX_SECONDS) -> dict[str, Any]:
    """Measure one model in this process (called inside the worker)."""
    import gc

    import numpy as np

    from tinymlops.runtimes import open_runner

    gc.collect()
    hwm_reset = _reset_peak_rss()
    rss0 = _status_kb("VmRSS") or 0
    t0 = time.perf_counter()
    runner = open_runner(path, runtime)
    shape = getattr(runner, "input_shape", None)
    x = np.random.default_rng(0).standard_normal(int(np.prod(shape)) if shape else 1).astype(np.float32)
    runner.predict(x[None])  # first inference completes lazy initialisation: part of the cold start
    load_ms = (time.perf_counter() - t0) * 1000.0
    warm = []
    for _ in range(WARMUP_RUNS):
        warm.append(runner.timed_predict(x)[1])
    block = max(1, int(MIN_BLOCK_MS / max(min(warm), 1e-4)) + 1)
    samples: list[float] = []
    start = time.perf_counter()
    converged = False
    while len(samples) < max_samples and time.perf_counter() - start < max_seconds:
        samples.append(sum(runner.timed_predict(x)[1] for _ in range(block)) / block)
        if len(samples) >= MIN_SAMPLES and len(samples) % 10 == 0 and cv(samples) < cv_target:
            converged = True
            break
    hwm = _status_kb("VmHWM") or 0
    runner.close()
    rss_increase = max(0, hwm - rss0) * 1024 if hwm_reset else None
    return {"runtime": runtime, "load_ms": round(load_ms, 3), "latency_ms": statistics.median(samples),
            "latency_p95_ms": percentile(samples, 95), "latency_cv": round(cv(samples), 4),
            "samples": len(samples), "block_size": block, "converged": converged, "peak_rss_increase_bytes": rss_increase,
            "warmup_runs": WARMUP_RUNS, "cv_target": cv_target}


def measure(models: list[tuple[str | Path, str]], timeout_s: float = 300.0) -> dict[tuple[str, str], dict]:
    """Measure (model path, runtime) pairs in one worker subprocess; values are results or {'error': ...}."""
    if not models:
        return {}
    args = [f"{Path(p).resolve()}::{rt}" for p, rt in models]
    try:
        proc = subprocess.run([sys.executable, "-m", "tinymlops.profile.host", *args], capture_output=True,
                              timeout=timeout_s, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    except subprocess.TimeoutExpired:
        raise RuntimeCrash(f"host measurement timed out after {timeout_s:.0f} s") from None
    out: dict[tuple[str, str], dict] = {}
    for line in proc.stdout.decode(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rec = json.loads(line)
            out[(rec.pop("path"), rec["runtime"])] = rec
    for p, rt in models:
        key = (str(Path(p).resolve()), rt)
        if key not in out:
            err = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            out[key] = {"runtime": rt, "error": f"host worker exited with code {proc.returncode}: {err[0]}"}
    return {(str(Path(p).resolve()), rt): out[(str(Path(p).resolve()), rt)] for p, rt in models}


def _main(argv: list[str]) -> None:
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # runtimes' native prints must not corrupt the JSON lines on stdout
    # import the runtimes first: "cold load" is loading the model, not importing TensorFlow
    runtimes = {a.rsplit("::", 1)[1] for a in argv}
    with contextlib.suppress(Exception):
        if "tflite" in runtimes:
            import tinymlops.tf  # noqa: F401
        if "onnxruntime" in runtimes:
            import onnxruntime  # noqa: F401
    for arg in argv:
        path, runtime = arg.rsplit("::", 1)
        try:
            rec = measure_one(path, runtime)
        except Exception as exc:  # reported per model as data; the parent decides
            rec = {"runtime": runtime, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        proto.write(json.dumps({"path": path, **rec}) + "\n")
        proto.flush()


if __name__ == "__main__":
    _main(sys.argv[1:])
