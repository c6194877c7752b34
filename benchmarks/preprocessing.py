"""Pre-processing blocks: cost per sample in NumPy and in the C99 code, C parity, and the C code's size on Cortex-M4.

For a realistic configuration of each built-in block (vibration spectral, multi-channel window stats, keyword-
spotting MFCC and log-mel on 1 s of 16 kHz audio, a camera frame to a 96x96 grayscale image) it prints:
- NumPy time per sample one at a time (as the edge agent runs it) and in a batch of 100 (training/evaluation),
- the C code's time per sample on this host (compiled -O2, single precision) and its ratio to NumPy one at a time,
- max abs difference C vs NumPy,
- with ``arm-none-eabi-gcc``: code (text) of ``tm_preprocess.o`` and the generated tables (rodata of
  ``tm_pp_config.o``) compiled -Os for Cortex-M4F, and the RAM buffers the device needs (work + feature floats),
- with ``qemu-system-arm`` too: instructions per input on an emulated Cortex-M4 (mps2-an386, ``-icount``; 40
  instructions resolution) and the max abs difference of the device's features.

    .venv/bin/python benchmarks/preprocessing.py [--samples 200]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from tinymlops.export.preprocess_c import (
    PP_SOURCES,
    buffer_floats,
    c_source,
    emulated_preprocess,
    render_config,
)
from tinymlops.preprocessing import FittedPreprocessing, PreprocessingSection, fit, transform

_TIMING_MAIN = r"""#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "tm_preprocess.h"
extern const tm_pp_config tm_pp_config_model;
int main(int argc, char **argv) {
  const tm_pp_config *c = &tm_pp_config_model;
  int n = atoi(argv[1]);
  float *raw = malloc((size_t)c->raw_len * n * sizeof(float)), *f = malloc((size_t)c->n_features * n * sizeof(float));
  float *work = malloc((tm_pp_work_floats(c) + 1) * sizeof(float));
  if (fread(raw, sizeof(float), (size_t)c->raw_len * n, stdin) != (size_t)c->raw_len * n) return 3;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < n; i++)
    if (tm_pp_run(c, raw + (size_t)i * c->raw_len, f + (size_t)i * c->n_features, work) != 0) return 4;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  fprintf(stderr, "%.9f\n", (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
  fwrite(f, sizeof(float), (size_t)c->n_features * n, stdout);
  return 0;
}
"""

M4_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-Os", "-std=c99",
            "-ffunction-sections", "-fdata-sections", "-Wall", "-Wextra", "-Werror"]


def _cases(rng: np.random.Generator, n: int) -> dict[str, tuple[PreprocessingSection, np.ndarray, float]]:
    t1 = np.arange(16000) / 16000.0
    audio = (0.4 * np.sin(2 * np.pi * rng.uniform(200, 3000, (n, 1)) * t1) + 0.05 * rng.normal(size=(n, 16000)))
    tv = np.arange(256) / 1600.0
    vib = rng.normal(0, 0.3, (n, 256, 3)) + np.sin(2 * np.pi * 25 * tv)[None, :, None]
    return {
        "spectral 256x3, 8 bands + standardize": (PreprocessingSection(features="spectral", bands=8), vib, 1600.0),
        "window_stats 128x6 + standardize": (PreprocessingSection(blocks=["window_stats", "standardize"]),
                                             rng.normal(size=(n, 128, 6)), 100.0),
        "mfcc 1 s 16 kHz, 480/320/512, 40 mels -> 49x10": (PreprocessingSection(blocks=[
            {"block": "mfcc", "frame_length": 480, "frame_step": 320, "n_mels": 40, "n_mfcc": 10,
             "fmin_hz": 20.0, "fmax_hz": 4000.0}, "standardize"]), audio, 16000.0),
        "log_mel 1 s 16 kHz, 480/320/512, 40 mels": (PreprocessingSection(blocks=[
            {"block": "log_mel", "frame_length": 480, "frame_step": 320, "n_mels": 40},
            {"block": "standardize", "mode": "global"}]), audio, 16000.0),
        "image 120x160x3 -> 96x96 gray /255": (PreprocessingSection(blocks=[
            {"block": "image", "size": [96, 96], "grayscale": True, "scale": 255.0},
            {"block": "standardize", "mode": "global"}]),
            rng.integers(0, 256, (n, 120, 160, 3)).astype(np.float64), 0.0),
    }


def _numpy_ms(spec: FittedPreprocessing, X: np.ndarray) -> tuple[float, float]:
    one = X[:1]
    transform(spec, one)
    reps = 30
    t0 = time.perf_counter()
    for i in range(reps):
        transform(spec, X[i % len(X):][:1])
    single = (time.perf_counter() - t0) / reps * 1e3
    batch = X[:100]
    t0 = time.perf_counter()
    transform(spec, batch)
    return single, (time.perf_counter() - t0) / len(batch) * 1e3


def _c_run(spec: FittedPreprocessing, X: np.ndarray, tmp: Path) -> tuple[float, np.ndarray]:
    for name in PP_SOURCES:
        (tmp / name).write_text(c_source(name))
    (tmp / "tm_pp_config.c").write_text(render_config(spec))
    (tmp / "main.c").write_text(_TIMING_MAIN)
    exe = tmp / "bench"
    subprocess.run(["cc", "-std=gnu99", "-O2", "-o", str(exe), str(tmp / "main.c"), str(tmp / "tm_preprocess.c"),
                    str(tmp / "tm_pp_config.c"), "-lm"], check=True, capture_output=True)
    Xf = np.ascontiguousarray(X, np.float32)
    run = subprocess.run([str(exe), str(len(X))], input=Xf.tobytes(), capture_output=True, check=True)
    seconds = float(run.stderr.decode().strip())
    return seconds / len(X) * 1e3, np.frombuffer(run.stdout, np.float32).reshape(len(X), -1)


def _m4_sizes(tmp: Path) -> tuple[int, int] | None:
    gcc, size = shutil.which("arm-none-eabi-gcc"), shutil.which("arm-none-eabi-size")
    if gcc is None or size is None:
        return None
    out = []
    for src in ("tm_preprocess.c", "tm_pp_config.c"):
        obj = tmp / (src[:-2] + ".o")
        subprocess.run([gcc, *M4_FLAGS, "-c", "-o", str(obj), str(tmp / src)], check=True, capture_output=True)
        line = subprocess.run([size, str(obj)], capture_output=True, text=True, check=True).stdout.splitlines()[1]
        text, data, _bss = (int(v) for v in line.split()[:3])
        out.append(text + data)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200, help="inputs per block (default 200)")
    n = ap.parse_args().samples
    if shutil.which("cc") is None:
        raise SystemExit("needs a host C compiler (cc)")
    rng = np.random.default_rng(0)
    print(f"{'block':44} {'features':>8} {'numpy 1x ms':>11} {'numpy/100 ms':>12} {'C ms':>8} {'C speed-up':>10} "
          f"{'max|C-py|':>9} {'M4 code B':>9} {'M4 tables B':>11} {'M4 RAM B':>8} {'M4 insn':>9} {'M4 |d|':>7}")
    emulate = bool(shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm"))
    for name, (section, X, rate) in _cases(rng, n).items():
        spec = fit(section, X, rate or None)
        single, batch = _numpy_ms(spec, X)
        with tempfile.TemporaryDirectory(prefix="tinymlops-ppbench-") as d:
            c_ms, got = _c_run(spec, X, Path(d))
            sizes = _m4_sizes(Path(d))
        diff = float(np.abs(got - transform(spec, X)).max())
        feats, work = buffer_floats(spec)
        code, tables = sizes if sizes else ("-", "-")
        insn, m4_diff = "-", "-"
        if emulate:
            dev, counts = emulated_preprocess(spec, X[:5], "cortex-m4")
            insn, m4_diff = f"{int(np.median(counts))}", f"{float(np.abs(dev - transform(spec, X[:5])).max()):.2g}"
        print(f"{name:44} {spec.n_features:>8} {single:>11.3f} {batch:>12.4f} {c_ms:>8.4f} {single / c_ms:>9.1f}x "
              f"{diff:>9.2g} {code:>9} {tables:>11} {4 * (feats + work):>8} {insn:>9} {m4_diff:>7}")


if __name__ == "__main__":
    main()
