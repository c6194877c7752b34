"""Per-target latency and energy from a per-layer-type cost model, calibrated on MLPerf Tiny results.

cycles = sum over ops of  MACs x cycles_per_mac[runtime][op kind] x core factor x dtype factor
                        + element ops x cycles_per_element[runtime] x core factor
                        + per-op overhead[runtime] x core scalar factor
latency_ms = cycles / clock;  energy_uj = latency_ms x active_power_mw.

Cycles per MAC are set per op kind (standard conv, depthwise, pointwise, fully connected) because kernels differ
by 2-4x in efficiency between them (MLPerf Tiny reference notes; CMSIS-NN paper, Lai et al. 2018, arXiv:1801.06601):
a MAC-count-only model cannot follow the 1.5-2x spread across models of one runtime.

Microcontroller runtimes (tflm-reference, tflm-cmsis-nn, x-cube-ai, vendor-optimized) are calibrated on one
Cortex-M4 board (NUCLEO-L4R5ZI, 120 MHz, MLPerf Tiny v0.5-v1.2; ``fit_runtime`` reproduces the constants from the
calibration CSV). Other cores scale those cycles by documented architectural factors (see ``CORES``). Application
processors (tflite, onnxruntime) use cycles per MAC anchored on a Cortex-A72 and the same scaling scheme.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tinymlops.profile.graph import MAC_KINDS, Graph, OpInfo

#: cost categories: the MAC kinds of the graph plus "conv_shallow", a standard conv reading <= 4 input channels
#: (first layers on audio/image input): SIMD kernels vectorise over input channels, so they run such layers at a
#: fraction of their usual rate (CMSIS-NN's arm_convolve_s8 packs channels into SMLAD pairs).
COST_KINDS = (*MAC_KINDS, "conv_shallow")
SHALLOW_IN_CHANNELS = 4


def cost_kind(op: OpInfo) -> str:
    """Return the cost category of a MAC-carrying op."""
    if op.kind == "conv" and 0 < op.in_channels <= SHALLOW_IN_CHANNELS:
        return "conv_shallow"
    return op.kind

MCU_RUNTIMES = ("tflm-reference", "tflm-cmsis-nn", "x-cube-ai", "vendor-optimized")
APP_RUNTIMES = ("tflite", "onnxruntime")
RUNTIMES = MCU_RUNTIMES + APP_RUNTIMES
MCU_CORES = ("cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55", "xtensa-lx7")
APP_CORES = ("cortex-a53", "cortex-a72", "x86-64")
CORE_NAMES = MCU_CORES + APP_CORES


@dataclass(frozen=True)
class RuntimeCost:
    """Cycles on the runtime's anchor core (Cortex-M4 for MCU runtimes, Cortex-A72 for tflite/onnxruntime)."""

    cycles_per_mac: dict[str, float]
    cycles_per_element: float
    op_overhead_cycles: float
    simd: bool             # kernels use the core's SIMD/DSP extensions (scaled by CoreSpec.simd)
    float_factor: float    # float32 compute relative to int8 on an FPU core


# Fitted with fit_runtime() on mlperf_tiny_calibration.csv (NUCLEO-L4R5ZI; benchmarks/profile_mlperf_tiny.py
# --fit prints the fit) from priors set by kernel structure: reference kernels are plain C loops (~6-10
# cycles/MAC, depthwise worst), CMSIS-NN uses SMLAD (2 MACs/cycle peak) with im2col, vendor engines fuse layers
# and keep weights in registers. (The CMSIS-NN row comes from microTVM submissions, whose pointwise layers were
# slower than their 3x3 convs.)
RUNTIME_COSTS: dict[str, RuntimeCost] = {
    "tflm-reference": RuntimeCost({"conv": 6.65, "conv_shallow": 8.91, "dwconv": 10.25, "pwconv": 8.41, "fc": 4.49}, 5.0, 2000, False, 1.0),
    # (float ops of a CMSIS-NN build run the reference kernels: see estimate())
    "tflm-cmsis-nn": RuntimeCost({"conv": 3.54, "conv_shallow": 5.37, "dwconv": 3.72, "pwconv": 4.36, "fc": 3.67}, 2.0, 3025, True, 1.0),
    "x-cube-ai": RuntimeCost({"conv": 1.48, "conv_shallow": 3.53, "dwconv": 2.67, "pwconv": 1.20, "fc": 2.33}, 1.0, 1002, True, 2.5),
    "vendor-optimized": RuntimeCost({"conv": 1.50, "conv_shallow": 3.63, "dwconv": 2.74, "pwconv": 1.37, "fc": 1.80}, 1.0, 501, True, 2.5),
    # Cortex-A72 anchors: TFLite+XNNPACK int8 MobileNetV1-1.0 ~ 0.2 cycles/MAC single-threaded (Raspberry Pi 4
    # benchmarks, Q-engineering / tensorflow.org/lite/performance/measurement); ~3-5 us dispatch per op
    "tflite": RuntimeCost({"conv": 0.25, "conv_shallow": 0.5, "dwconv": 0.6, "pwconv": 0.2, "fc": 0.35}, 0.3, 6000, True, 1.6),
    "onnxruntime": RuntimeCost({"conv": 0.3, "conv_shallow": 0.6, "dwconv": 0.7, "pwconv": 0.25, "fc": 0.3}, 0.3, 9000, True, 1.4),
}


@dataclass(frozen=True)
class CoreSpec:
    """Cycle factors of a core relative to the anchor core of its runtime class (smaller is faster)."""

    scalar: float                      # plain C code (CoreMark/MHz of the anchor / CoreMark/MHz of this core)
    simd: dict[str, float] | None      # SIMD kernels by op kind; None: no usable SIMD, kernels fall back to C
    fpu: bool = True
    app: bool = False                  # runs Linux-class runtimes (tflite, onnxruntime)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _same(v: float) -> dict[str, float]:
    return dict.fromkeys(COST_KINDS, v)


# Sources (CoreMark/MHz from Arm/EEMBC product pages; SIMD width from the Architecture Reference Manuals):
#   Cortex-M4   3.42 CoreMark/MHz, DSP extension: SMLAD = 2 x 16-bit MAC per cycle (anchor: factor 1).
#   Cortex-M0+  2.46 CoreMark/MHz (3.42/2.46 = 1.39), ARMv6-M: no DSP/SIMD, no FPU (float in software, ~10x).
#               CMSIS-NN builds its pure-C path there (arm_nn_math: "ARM_MATH_DSP not defined").
#   Cortex-M33  4.02 CoreMark/MHz (0.85), optional DSP extension = same SMLAD as M4 (ARMv8-M Mainline DSP).
#   Cortex-M7   5.01 CoreMark/MHz (0.68), dual-issue 6-stage pipeline, 64-bit AXI/TCM loads: CMSIS-NN kernels
#               run ~1.6-1.7x faster per clock than on M4 (Arm CMSIS-NN benchmarks; MLPerf Tiny STM32H7 vs L4).
#   Cortex-M55  4.2 CoreMark/MHz (0.81), Helium/MVE: 128-bit vectors, dual-beat = 8 int8 MACs/cycle (VMLADAV)
#               vs 2 on M4; Arm quotes up to 4-5x ML uplift per clock for CMSIS-NN MVE kernels over M4/M33.
#   Xtensa LX7  (ESP32-S3) ~2.5 CoreMark/MHz single core (1.37); PIE 128-bit SIMD used by ESP-NN; code and
#               weights execute from external flash through a 32 KB cache, which costs extra on big models.
#   Cortex-A53  in-order dual-issue, NEON 128-bit: ~2x the cycles of a Cortex-A72 on NEON GEMM kernels
#               (Arm Cortex-A optimisation guides; XNNPACK end-to-end benchmarks Pi 3 vs Pi 4 per clock).
#   Cortex-A72  out-of-order, 2 NEON pipes: anchor of tflite/onnxruntime.
#   x86-64      AVX2/AVX-512 (VNNI): 256/512-bit vectors, lower dispatch overhead (factors measured here).
CORES: dict[str, CoreSpec] = {
    "cortex-m4": CoreSpec(1.0, _same(1.0)),
    "cortex-m0plus": CoreSpec(1.39, None, fpu=False),
    # M33/M7 SIMD factors checked against MLPerf Tiny v1.0 (tiny_results_v1.0, same software on both boards):
    # X-CUBE-AI 7.1 NUCLEO-U575ZI-Q vs NUCLEO-L4R5ZI cycles ratio 0.77-0.85 (mean 0.81), NUCLEO-H7A3ZI-Q vs L4R5
    # 0.51-0.56 (mean 0.54); microTVM+CMSIS-NN nRF5340 (M33 128 MHz) vs L4R5 0.78-0.87 (mean 0.82). Both are a
    # little faster than CoreMark/MHz alone says: L4R5 runs from flash with 5 wait states at 120 MHz.
    "cortex-m33": CoreSpec(0.82, _same(0.80)),
    "cortex-m7": CoreSpec(0.62, _same(0.54)),
    "cortex-m55": CoreSpec(0.81, {"conv": 0.3, "conv_shallow": 0.5, "dwconv": 0.45, "pwconv": 0.28, "fc": 0.45}),
    "xtensa-lx7": CoreSpec(1.37, {"conv": 1.0, "conv_shallow": 1.2, "dwconv": 1.2, "pwconv": 0.9, "fc": 1.2}),
    "cortex-a53": CoreSpec(2.0, _same(2.0), app=True),
    "cortex-a72": CoreSpec(1.0, _same(1.0), app=True),
    # x86-64: set from this repository's host measurements (AMD EPYC, AVX-512 VNNI, TFLite/XNNPACK int8, one
    # thread, benchmarks/profile_mlperf_tiny.py): 3x3 convs run ~50 int8 MACs/cycle there, depthwise far fewer
    "x86-64": CoreSpec(0.3, {"conv": 0.075, "conv_shallow": 0.15, "dwconv": 0.25, "pwconv": 0.17, "fc": 0.25},
                       app=True),
}

#: float compute without an FPU goes through software floating point (libgcc __aeabi_fmul/fadd ~ 30-60 cycles)
SOFT_FLOAT_FACTOR = 10.0
#: CMSIS-NN's pure-C fallback is leaner than the TFLM reference kernels it replaces (fewer offset additions)
C_FALLBACK_FACTOR = 0.85
#: 16x8 kernels (int16 activations) issue half as many MACs per SIMD instruction
INT16_FACTOR = 1.6


@dataclass
class Estimate:
    cycles: float
    latency_ms: float
    energy_uj: float
    per_kind_ms: dict[str, float]
    notes: list[str]


def features(graph: Graph) -> dict[str, float]:
    """Return the quantities the cost model uses: MACs by op kind, element ops, and counted ops."""
    f: dict[str, float] = dict.fromkeys(COST_KINDS, 0.0)
    f["elem_ops"] = 0.0
    f["ops"] = 0.0
    for op in graph.ops:
        if op.kind in MAC_KINDS:
            f[cost_kind(op)] += op.macs
        f["elem_ops"] += op.elem_ops
        if op.kind != "reshape":
            f["ops"] += 1
    return f


def _kind_factor(core: CoreSpec, rc: RuntimeCost, runtime: str, kind: str) -> tuple[float, str | None]:
    """Return the core factor for one op kind of one runtime, and a note if kernels fall back to plain C."""
    if runtime in APP_RUNTIMES:
        return (core.simd or {}).get(kind, core.scalar), None
    if rc.simd:
        if core.simd is None:
            return core.scalar * C_FALLBACK_FACTOR * (
                RUNTIME_COSTS["tflm-reference"].cycles_per_mac[kind] / rc.cycles_per_mac[kind]), "no SIMD"
        return core.simd[kind], None
    return core.scalar, None


def estimate(graph: Graph, core: str, runtime: str, clock_mhz: float, active_power_mw: float) -> Estimate:
    """Estimate cycles, latency and energy of one inference of a graph on a core/runtime/clock."""
    spec = CORES[core]
    notes: list[str] = []
    per_kind: dict[str, float] = {}
    total = 0.0
    for op in graph.ops:
        if op.kind == "reshape":
            continue
        is_float = op.compute_dtype in ("float32", "float16", "float64")
        # CMSIS-NN has integer kernels only: TFLM runs float ops of a CMSIS-NN build with its reference kernels
        op_rt = "tflm-reference" if (is_float and runtime == "tflm-cmsis-nn") else runtime
        rc_op = RUNTIME_COSTS[op_rt]
        dtype_factor = 1.0
        if is_float:
            dtype_factor = rc_op.float_factor if (spec.simd is not None or runtime in APP_RUNTIMES) else 1.0
            if not spec.fpu:
                dtype_factor *= SOFT_FLOAT_FACTOR
        elif op.compute_dtype == "int16":
            dtype_factor = INT16_FACTOR
        cyc = rc_op.op_overhead_cycles * spec.scalar
        if op.kind in MAC_KINDS:
            kind = cost_kind(op)
            kf, note = _kind_factor(spec, rc_op, op_rt, kind)
            msg = f"{core} has no SIMD/DSP: {runtime} kernels run their plain-C path"
            if note and msg not in notes:
                notes.append(msg)
            cyc += op.macs * rc_op.cycles_per_mac[kind] * kf * dtype_factor
        else:
            ef = spec.scalar if (spec.simd is None or not rc_op.simd) else min(spec.simd.values())
            cyc += op.elem_ops * rc_op.cycles_per_element * ef * (dtype_factor if dtype_factor > 1 else 1.0)
        total += cyc
        per_kind[op.kind] = per_kind.get(op.kind, 0.0) + cyc
    hz = clock_mhz * 1e6
    latency_ms = total / hz * 1000.0
    return Estimate(total, latency_ms, latency_ms * active_power_mw,
                    {k: v / hz * 1000.0 for k, v in per_kind.items()}, notes)


# ---------------------------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------------------------

PARAM_NAMES = (*COST_KINDS, "cycles_per_element", "op_overhead_cycles")


def predict_cycles(theta: dict[str, float], feats: dict[str, float]) -> float:
    """Return the cycles of the linear cost model for one model's features on the anchor core."""
    return (sum(theta[k] * feats[k] for k in COST_KINDS) + theta["cycles_per_element"] * feats["elem_ops"]
            + theta["op_overhead_cycles"] * feats["ops"])


def fit_runtime(observations: list[tuple[dict[str, float], float]], prior: dict[str, float],
                prior_weight: float = 0.15) -> dict[str, float]:
    """Fit one runtime's parameters to (features, observed cycles) pairs, shrunk towards physical priors.

    Minimises the squared relative latency error plus ``prior_weight`` x squared log-ratio to the prior of each
    parameter: four benchmarks cannot pin six parameters alone, and the priors keep the kind ratios physical.
    """
    import numpy as np
    from scipy.optimize import least_squares

    names = list(PARAM_NAMES)
    p0 = np.log([prior[n] for n in names])

    def residuals(logp: Any) -> Any:
        theta = dict(zip(names, np.exp(logp), strict=True))
        fit = [predict_cycles(theta, f) / obs - 1.0 for f, obs in observations]
        reg = [math.sqrt(prior_weight) * (lp - lp0) for lp, lp0 in zip(logp, p0, strict=True)]
        return np.array(fit + reg)

    res = least_squares(residuals, p0)
    return dict(zip(names, (float(v) for v in np.exp(res.x)), strict=True))


def runtime_prior(runtime: str) -> dict[str, float]:
    """Return a runtime's current parameters as a dict (the prior for re-fitting)."""
    rc = RUNTIME_COSTS[runtime]
    return {**rc.cycles_per_mac, "cycles_per_element": rc.cycles_per_element,
            "op_overhead_cycles": rc.op_overhead_cycles}
