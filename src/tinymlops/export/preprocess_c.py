"""The model's fitted pre-processing as C99 data for ``c/tm_preprocess.c``, and a host build of it for parity.

The C blocks are generic; what a fitted block learned or derives (band edges, windows, twiddles, mel filters, DCT,
resize indices, mean/std) is generated as constant arrays here, computed with the same NumPy code as
:mod:`tinymlops.preprocessing`. Custom ``module:function`` blocks have no C: a UsageError names them.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from tinymlops.errors import ConfigError, UsageError
from tinymlops.preprocessing import Block, FittedPreprocessing
from tinymlops.preprocessing.audio import LogMel, Mfcc, dct_matrix, hann_periodic, mel_weights
from tinymlops.preprocessing.image import Image, resize_weights
from tinymlops.preprocessing.spectral import Spectral, band_edges
from tinymlops.preprocessing.standardize import Standardize
from tinymlops.preprocessing.window_stats import STATS, WindowStats

C_DIR = "c"
PP_SOURCES = ("tm_preprocess.h", "tm_preprocess.c")


def c_source(name: str) -> str:
    """Return a C source/template shipped in ``tinymlops/export/c``."""
    return resources.files("tinymlops.export").joinpath(C_DIR, name).read_text()


@dataclass
class _Plan:
    """One block's C initialiser fields and tables, with its lengths."""

    fields: dict[str, str]
    tables: list[str] = field(default_factory=list)
    in_len: int = 0
    out_len: int = 0
    scratch: int = 0


def _floats(name: str, values: np.ndarray) -> str:
    body = ", ".join(f"{float(v):.9e}f" for v in np.asarray(values, np.float64).ravel())
    return f"static const float {name}[{max(1, np.size(values))}] = {{{body or '0.0f'}}};\n"


def _ints(name: str, values: np.ndarray | list[int]) -> str:
    vals = [int(v) for v in np.asarray(values).ravel()]
    return f"static const int {name}[{max(1, len(vals))}] = {{{', '.join(map(str, vals)) or '0'}}};\n"


def _window_shape(shape: tuple[int, ...], block: str) -> tuple[int, int]:
    if len(shape) not in (1, 2):
        raise UsageError(f"{block} pre-processing in C needs (samples,) or (samples, axes) raw inputs, "
                         f"not {list(shape)}")
    return shape[0], shape[1] if len(shape) == 2 else 1


def _plan(b: Block, shape: tuple[int, ...], p: str) -> tuple[_Plan, tuple[int, ...]]:
    """Return the C data of a fitted block applied to per-sample ``shape``, and its output shape."""
    n_in = int(np.prod(shape))
    if isinstance(b, Standardize):
        assert b.mean is not None and b.std is not None
        plan = _Plan({"kind": "TM_PP_STANDARDIZE", "mean": f"{p}_mean", "std": f"{p}_std",
                      "n_moments": str(len(b.mean))}, [_floats(f"{p}_mean", np.asarray(b.mean)),
                                                       _floats(f"{p}_std", np.asarray(b.std))])
        return _set(plan, n_in, n_in, 0), shape
    if isinstance(b, WindowStats):
        n, ch = _window_shape(shape, b.block)
        plan = _Plan({"kind": "TM_PP_WINDOW_STATS", "samples": str(n), "channels": str(ch), "stats": f"{p}_stats",
                      "n_stats": str(len(b.stats))}, [_ints(f"{p}_stats", [STATS.index(s) for s in b.stats])])
        return _set(plan, n_in, ch * len(b.stats), 0), (ch * len(b.stats),)
    if isinstance(b, Spectral):
        n, ch = _window_shape(shape, b.block)
        j = np.arange(n)
        plan = _Plan({"kind": "TM_PP_SPECTRAL", "samples": str(n), "channels": str(ch), "bands": str(b.bands),
                      "band_edges": f"{p}_edges", "window": f"{p}_window", "cos_table": f"{p}_cos",
                      "sin_table": f"{p}_sin"},
                     [_ints(f"{p}_edges", band_edges(n, b.bands)), _floats(f"{p}_window", np.hanning(n)),
                      _floats(f"{p}_cos", np.cos(2 * np.pi * j / n)), _floats(f"{p}_sin", np.sin(2 * np.pi * j / n))])
        out = ch * (b.bands + 4)
        return _set(plan, n_in, out, 2 * n + n // 2 + 1), (out,)
    if isinstance(b, LogMel):  # and Mfcc
        if len(shape) == 2 and shape[1] != 1 or len(shape) > 2:
            raise UsageError(f"{b.block} pre-processing in C needs mono audio, not {list(shape)}")
        assert b.sample_rate_hz is not None and b.fmax_hz is not None
        nfft, frames = b.n_fft, 1 + (shape[0] - b.frame_length) // b.frame_step
        w = mel_weights(b.n_mels, nfft // 2 + 1, b.sample_rate_hz, b.fmin_hz, b.fmax_hz)
        starts: list[int] = []
        counts: list[int] = []
        weights: list[float] = []
        for m in range(b.n_mels):
            nz = np.flatnonzero(w[:, m])
            lo, hi = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)
            starts.append(lo)
            counts.append(hi - lo)
            weights.extend(w[lo:hi, m])
        j = np.arange(nfft)
        is_mfcc = isinstance(b, Mfcc)
        n_out = b.n_mfcc if isinstance(b, Mfcc) else b.n_mels
        plan = _Plan({"kind": "TM_PP_MFCC" if is_mfcc else "TM_PP_LOG_MEL", "frame_length": str(b.frame_length),
                      "frame_step": str(b.frame_step), "fft_length": str(nfft), "frames": str(frames),
                      "n_mels": str(b.n_mels), "n_mfcc": str(n_out if is_mfcc else 0), "power": str(b.power),
                      "log_offset": f"{b.log_offset:.9e}f", "window": f"{p}_window", "cos_table": f"{p}_cos",
                      "sin_table": f"{p}_sin", "mel_start": f"{p}_mel_start", "mel_count": f"{p}_mel_count",
                      "mel_weights": f"{p}_mel_w", "dct": f"{p}_dct" if is_mfcc else "NULL"},
                     [_floats(f"{p}_window", hann_periodic(b.frame_length)),
                      _floats(f"{p}_cos", np.cos(2 * np.pi * j / nfft)),
                      _floats(f"{p}_sin", np.sin(2 * np.pi * j / nfft)), _ints(f"{p}_mel_start", starts),
                      _ints(f"{p}_mel_count", counts), _floats(f"{p}_mel_w", np.asarray(weights))]
                     + ([_floats(f"{p}_dct", dct_matrix(b.n_mels, n_out))] if is_mfcc else []))
        return _set(plan, n_in, frames * n_out, 2 * nfft + nfft // 2 + 1 + b.n_mels), (frames, n_out)
    if isinstance(b, Image):
        h, w_, c = (*shape, 1) if len(shape) == 2 else shape
        oh, ow = b.size or (h, w_)
        oc = 1 if b.grayscale else c
        (r0, r1, fr), (c0, c1, fc) = resize_weights(h, oh), resize_weights(w_, ow)
        if (oh, ow) == (h, w_):  # the Python block skips an identity resize; so do the tables
            r0 = r1 = np.arange(h)
            c0 = c1 = np.arange(w_)
            fr, fc = np.zeros(h), np.zeros(w_)
        names = ("row_lo", "row_hi", "col_lo", "col_hi", "row_frac", "col_frac")
        plan = _Plan({"kind": "TM_PP_IMAGE", "in_h": str(h), "in_w": str(w_), "in_c": str(c), "out_h": str(oh),
                      "out_w": str(ow), "out_c": str(oc), "pixel_scale": f"{b.scale:.9e}f",
                      **{k: f"{p}_{k}" for k in names}},
                     [_ints(f"{p}_row_lo", r0), _ints(f"{p}_row_hi", r1), _ints(f"{p}_col_lo", c0),
                      _ints(f"{p}_col_hi", c1), _floats(f"{p}_row_frac", fr), _floats(f"{p}_col_frac", fc)])
        return _set(plan, n_in, oh * ow * oc, 0), (oh, ow, oc)
    raise UsageError(f"pre-processing block {b.block!r} has no C implementation (microcontroller targets run "
                     "the built-in blocks only)")


def _set(plan: _Plan, in_len: int, out_len: int, scratch: int) -> _Plan:
    plan.in_len, plan.out_len, plan.scratch = in_len, out_len, scratch
    return plan


def plan(spec: FittedPreprocessing) -> tuple[list[_Plan], int, int]:
    """Return the C plans of every block, the largest intermediate output and the largest scratch (floats)."""
    shape = tuple(spec.raw_shape)
    plans = []
    for i, b in enumerate(spec.blocks):
        pl, shape = _plan(b, shape, f"pp{i}")
        plans.append(pl)
    if int(np.prod(shape)) != spec.n_features:
        raise UsageError(f"pre-processing blocks give {int(np.prod(shape))} values; the model takes "
                         f"{spec.n_features} features")
    inter = max([pl.out_len for i, pl in enumerate(plans) if not _writes_features(spec, i)], default=0)
    return plans, inter, max([pl.scratch for pl in plans], default=0)


def _writes_features(spec: FittedPreprocessing, i: int) -> bool:
    """Block i writes the features when only standardize blocks (run in place) follow it (as tm_preprocess.c)."""
    return all(isinstance(b, Standardize) for b in spec.blocks[i + 1:])


def buffer_floats(spec: FittedPreprocessing) -> tuple[int, int]:
    """Return (feature buffer, work buffer) floats the device needs (>= 1 each; the streaming path needs none)."""
    _, inter, scratch = plan(spec)
    streams = not spec.blocks or (len(spec.blocks) == 1 and isinstance(spec.blocks[0], Standardize))
    buffers = min(2, sum(not _writes_features(spec, i) for i in range(len(spec.blocks))))
    return (1 if streams else spec.n_features), max(1, buffers * inter + scratch)


def render_config(spec: FittedPreprocessing, symbol: str = "tm_pp_config_model") -> str:
    """Return a C file defining ``const tm_pp_config <symbol>`` for a fitted pre-processing."""
    plans, inter, scratch = plan(spec)
    out = ['/* Generated by tinymlops: the fitted pre-processing of this model. */\n#include "tm_preprocess.h"\n\n']
    inits = []
    for pl in plans:
        out.extend(pl.tables)
        fields = {**pl.fields, "in_len": str(pl.in_len), "out_len": str(pl.out_len),
                  "scratch_floats": str(pl.scratch)}
        inits.append("  {" + ", ".join(f".{k} = {v}" for k, v in fields.items()) + "}")
    blocks = "NULL"
    if inits:
        out.append(f"\nstatic const tm_pp_block pp_blocks[{len(inits)}] = {{\n" + ",\n".join(inits) + "\n};\n")
        blocks = "pp_blocks"
    out.append(f"\nconst tm_pp_config {symbol} = {{{float(spec.scale):.9e}f, {int(np.prod(spec.raw_shape))}, "
               f"{len(plans)}, {blocks}, {spec.n_features}, {inter}, {scratch}}};\n")
    return "".join(out)


_HOST_MAIN = """#include <stdio.h>
#include <stdlib.h>
#include "tm_preprocess.h"
extern const tm_pp_config tm_pp_config_model;
int main(int argc, char **argv) {
  const tm_pp_config *c = &tm_pp_config_model;
  int n = atoi(argv[1]);
  float qscale = argc > 3 ? (float)atof(argv[2]) : 0.0f;
  int qzp = argc > 3 ? atoi(argv[3]) : 0;
  size_t raw_len = (size_t)c->raw_len;
  float *raw = malloc(raw_len * sizeof(float)), *f = malloc((size_t)c->n_features * sizeof(float));
  float *work = malloc((tm_pp_work_floats(c) + 1) * sizeof(float));
  float *f2 = malloc((size_t)c->n_features * sizeof(float));
  int8_t *q = malloc((size_t)c->n_features);
  for (int i = 0; i < n; i++) {
    if (fread(raw, sizeof(float), raw_len, stdin) != raw_len) return 3;
    if (tm_pp_run(c, raw, f, work) != 0) return 4;
    fwrite(f, sizeof(float), (size_t)c->n_features, stdout);
    if (qscale > 0.0f) { /* the device's path: straight into the int8 input tensor */
      if (tm_pp_run_int8(c, raw, f2, work, qscale, qzp, q) != 0) return 5;
      fwrite(q, 1, (size_t)c->n_features, stdout);
    }
  }
  return 0;
}
"""


def host_preprocess(spec: FittedPreprocessing, X_raw: np.ndarray, cc: str | None = None,
                    quant: tuple[float, int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Compile the C block with the host compiler and run it on raw inputs.

    Returns float32 features (N, F) and, with ``quant`` = (scale, zero point), the int8 features the C code
    quantises (else None).
    """
    compiler = cc or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ConfigError("no host C compiler (cc) on PATH: apt-get install -y gcc")
    X = np.ascontiguousarray(X_raw, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="tinymlops-pp-") as d:
        tmp = Path(d)
        for name in PP_SOURCES:
            (tmp / name).write_text(c_source(name))
        (tmp / "tm_pp_config.c").write_text(render_config(spec))
        (tmp / "main.c").write_text(_HOST_MAIN)
        exe = tmp / "pp"
        cmd = [compiler, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o", str(exe),
               *(str(tmp / f) for f in ("main.c", "tm_preprocess.c", "tm_pp_config.c")), "-lm"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise ConfigError(f"host build of the C pre-processing failed: {res.stderr.strip()[-500:]}")
        args = [str(exe), str(len(X))] + ([f"{quant[0]:.9e}", str(quant[1])] if quant else [])
        run = subprocess.run(args, input=X.tobytes(), capture_output=True, check=False)
        if run.returncode != 0:
            raise ConfigError(f"C pre-processing exited with {run.returncode} on {len(X)} inputs")
    f_bytes = 4 * spec.n_features
    row = f_bytes + (spec.n_features if quant else 0)
    buf = np.frombuffer(run.stdout, dtype=np.uint8).reshape(len(X), row)
    feats = buf[:, :f_bytes].copy().view(np.float32)
    return feats, (buf[:, f_bytes:].copy().view(np.int8) if quant else None)


def emulated_preprocess(spec: FittedPreprocessing, X_raw: np.ndarray, core: str = "cortex-m4",
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Build the C blocks into a firmware for the core's QEMU board and run them there on raw inputs.

    Returns float32 features (N, F) computed on the emulated Cortex-M (its FPU, newlib's libm) and the instructions
    each input's pre-processing took (SysTick under ``-icount shift=0``; resolution 1e9 / SysTick Hz).
    Needs ``arm-none-eabi-gcc`` (with newlib) and ``qemu-system-arm`` (ConfigError naming what is missing).
    """
    from tinymlops.export.firmware import LINK_FLAGS, arch_flags, write_board_files
    from tinymlops.export.toolchain import emulated

    missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}: apt-get install -y gcc-arm-none-eabi "
                          "libnewlib-arm-none-eabi qemu-system-arm")
    emu = emulated(core)
    _, work_n = buffer_floats(spec)
    raw_len = int(np.prod(spec.raw_shape))
    X = np.ascontiguousarray(X_raw, dtype="<f4").reshape(len(X_raw), raw_len)
    with tempfile.TemporaryDirectory(prefix="tinymlops-pp-fw-") as d:
        tmp = Path(d)
        startup, link = write_board_files(tmp, emu)
        for name in (*PP_SOURCES, "fw_pp_main.c"):
            (tmp / name).write_text(c_source(name))
        (tmp / "tm_pp_config.c").write_text(render_config(spec))
        sizes = [f"-DTM_PP_RAW_LEN={raw_len}", f"-DTM_PP_FEATURES={spec.n_features}",
                 f"-DTM_PP_WORK_FLOATS={work_n}"]
        cmd = ["arm-none-eabi-gcc", *arch_flags(emu), "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", *sizes,
               *LINK_FLAGS, "-T", str(link), str(startup), *(str(tmp / f) for f in ("fw_pp_main.c", "tm_preprocess.c",
                                                                                      "tm_pp_config.c")),
               "-lm", "-o", str(tmp / "pp.elf")]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise ConfigError(f"firmware build of the C pre-processing failed: {res.stderr.strip()[-500:]}")
        (tmp / "tm_inputs.bin").write_bytes(np.int32(len(X)).astype("<i4").tobytes() + X.tobytes())
        run = subprocess.run(["qemu-system-arm", "-machine", emu.machine, "-nographic", "-monitor", "none",
                              "-serial", "none", "-semihosting", "-icount", "shift=0", "-kernel", str(tmp / "pp.elf")],
                             cwd=tmp, capture_output=True, text=True, timeout=600, check=False)
        if run.returncode != 0 or "DONE" not in run.stdout:
            raise ConfigError(f"pre-processing firmware on {emu.machine} exited with {run.returncode}: "
                              f"{(run.stdout + run.stderr).strip()[-300:]}")
        feats = np.frombuffer((tmp / "tm_features.bin").read_bytes(), "<f4").reshape(len(X), spec.n_features)
    ticks = np.array([int(line.split()[2]) for line in run.stdout.splitlines() if line.startswith("PP ")])
    return feats.astype(np.float32), ticks * (1e9 / emu.systick_hz)
