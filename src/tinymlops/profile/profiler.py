"""Profile one model file on one target: static analysis, TFLM arena, host timing, device runner, cost model.

Expensive facts are computed once per artifact (keyed by its sha256) and shared across targets through a
:class:`ProfileCache`: static analysis, the TFLM-measured arena, host timing per runtime. The result is one
JSON-able dict (the ``tinymlops profile --json`` contract) that separates what was measured from what was
estimated.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinymlops.errors import ModelFormatError, RuntimeCrash
from tinymlops.profile import arena as arena_mod
from tinymlops.profile import costmodel, firmware_size
from tinymlops.profile.graph import MAC_KINDS, Graph, load_graph
from tinymlops.profile.targets import MCU_CORES, TargetConfig

#: builtin ops of TFLite Micro's op resolver (tflite-micro ``micro_mutable_op_resolver.h``, 2026)
TFLM_OPS = frozenset(["ABS", "ADD", "ADD_N", "ARG_MAX", "ARG_MIN", "ASSIGN_VARIABLE", "AVERAGE_POOL_2D", "BATCH_MATMUL", "BATCH_TO_SPACE_ND", "BROADCAST_ARGS", "BROADCAST_TO", "CALL_ONCE", "CAST", "CEIL", "CONCATENATION", "CONV_2D", "COS", "CUMSUM", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "DIV", "ELU", "EMBEDDING_LOOKUP", "EQUAL", "EXP", "EXPAND_DIMS", "FILL", "FLOOR", "FLOOR_DIV", "FLOOR_MOD", "FULLY_CONNECTED", "GATHER", "GATHER_ND", "GREATER", "GREATER_EQUAL", "HARD_SWISH", "IF", "L2_NORMALIZATION", "L2_POOL_2D", "LEAKY_RELU", "LESS", "LESS_EQUAL", "LOG", "LOGICAL_AND", "LOGICAL_NOT", "LOGICAL_OR", "LOGISTIC", "LOG_SOFTMAX", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MIRROR_PAD", "MUL", "NEG", "NOT_EQUAL", "PACK", "PAD", "PADV2", "PRELU", "QUANTIZE", "READ_VARIABLE", "REDUCE_MAX", "RELU", "RELU6", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "ROUND", "RSQRT", "SELECT_V2", "SHAPE", "SIN", "SLICE", "SOFTMAX", "SPACE_TO_BATCH_ND", "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "SQRT", "SQUARE", "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SVDF", "TANH", "TRANSPOSE", "TRANSPOSE_CONV", "UNIDIRECTIONAL_SEQUENCE_LSTM", "UNPACK", "VAR_HANDLE", "WHILE", "ZEROS_LIKE"])
#: formats each runtime loads
RUNTIME_FORMATS = {"tflm-reference": {"tflite"}, "tflm-cmsis-nn": {"tflite"}, "vendor-optimized": {"tflite"},
                   "x-cube-ai": {"tflite", "onnx"}, "tflite": {"tflite"}, "onnxruntime": {"onnx"}}
HOST_RUNTIME = {"tflite": "tflite", "onnxruntime": "onnxruntime"}


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of a file."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class StaticAnalysis:
    """Everything that depends on the artifact only (not on the target)."""

    sha256: str
    format: str
    graph: Graph
    macs: int
    params: int
    model_bytes: int
    weight_bytes: dict[str, int]
    activation_peak_bytes: int
    tflm_arena_bytes: dict[str, int]     # runtime flavour -> estimated whole arena
    op_types: dict[str, int]
    tensor_dtypes: set[str]
    hybrid_ops: list[str]                # float activations with integer weights (dynamic-range quantisation)

    def summary(self, layers: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format, "sha256": self.sha256, "model_bytes": self.model_bytes, "macs": self.macs,
            "params": self.params, "weight_bytes": self.weight_bytes, "ops": len(self.graph.ops),
            "op_types": self.op_types, "activation_peak_bytes": self.activation_peak_bytes,
            "tflm_arena_estimate_bytes": self.tflm_arena_bytes.get("tflm-reference"),
            "macs_by_kind": {k: sum(o.macs for o in self.graph.ops if o.kind == k) for k in MAC_KINDS},
        }
        if layers:
            t = self.graph.tensors
            out["layers"] = [{
                "index": o.index, "op": o.op_type, "kind": o.kind, "macs": o.macs, "params": o.params,
                "weight_bytes": o.weight_bytes,
                "input_bytes": sum(t[i].nbytes for i in o.inputs if not t[i].const),
                "output_bytes": sum(t[i].nbytes for i in o.outputs),
                "output_shape": list(t[o.outputs[0]].shape) if o.outputs else [],
            } for o in self.graph.ops]
        return out


def analyze(path: str | Path, sha: str | None = None) -> StaticAnalysis:
    """Run the static analysis of a .tflite/.onnx file."""
    g = load_graph(path)
    weight_bytes: Counter[str] = Counter()
    for o in g.ops:
        weight_bytes.update(o.weight_bytes)
    dtypes = {t.dtype for t in g.tensors}
    hybrid = [o.op_type for o in g.ops if o.kind in MAC_KINDS and o.compute_dtype == "float32"
              and any(d in ("int8", "uint8") for d in o.weight_bytes)]
    arenas = {}
    if g.format == "tflite":
        arenas = {rt: arena_mod.tflm_arena_bytes(g, rt) for rt in ("tflm-reference", "tflm-cmsis-nn")}
    return StaticAnalysis(
        sha256=sha or sha256_file(path), format=g.format, graph=g, macs=g.macs, params=g.params,
        model_bytes=g.model_bytes, weight_bytes=dict(weight_bytes),
        activation_peak_bytes=arena_mod.plan_arena(g).peak_bytes, tflm_arena_bytes=arenas,
        op_types=dict(Counter(o.op_type for o in g.ops)), tensor_dtypes=dtypes, hybrid_ops=sorted(set(hybrid)))


@dataclass
class ProfileCache:
    """Per-artifact results shared across targets (thread-safe; one instance per profiling session)."""

    static: dict[str, StaticAnalysis] = field(default_factory=dict)
    tflm_arena: dict[str, dict[str, Any]] = field(default_factory=dict)
    host: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    sha_by_path: dict[str, str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def sha(self, path: Path) -> str:
        key = str(path.resolve())
        with self.lock:
            if key not in self.sha_by_path:
                self.sha_by_path[key] = sha256_file(path)
            return self.sha_by_path[key]

    def get_static(self, path: Path) -> StaticAnalysis:
        sha = self.sha(path)
        with self.lock:
            if sha not in self.static:
                self.static[sha] = analyze(path, sha)
            return self.static[sha]

    def get_tflm_arena(self, path: Path) -> dict[str, Any]:
        """Measure the arena with TFLite Micro once per artifact: {'arena_bytes': n} or {'error', 'abort'}."""
        sha = self.sha(path)
        with self.lock:
            if sha not in self.tflm_arena:
                from tinymlops.runtimes.tflm import measure_arena

                try:
                    self.tflm_arena[sha] = {"arena_bytes": int(measure_arena(path))}
                except RuntimeCrash as exc:
                    self.tflm_arena[sha] = {"error": str(exc), "abort": True}
                except ModelFormatError as exc:
                    self.tflm_arena[sha] = {"error": str(exc), "abort": False}
            return self.tflm_arena[sha]

    def get_host(self, path: Path, runtime: str) -> dict[str, Any]:
        sha = self.sha(path)
        with self.lock:
            if (sha, runtime) not in self.host:
                self.prefetch_host([(path, runtime)])
            return self.host[(sha, runtime)]

    def prefetch_host(self, items: list[tuple[Path, str]]) -> None:
        """Measure several (model, runtime) pairs in one worker process (one TensorFlow import)."""
        from tinymlops.profile.host import measure

        todo = {(self.sha(p), rt): (p, rt) for p, rt in items if (self.sha(p), rt) not in self.host}
        if not todo:
            return
        try:
            results = measure(list(todo.values()))
        except RuntimeCrash as exc:
            results = {(str(p.resolve()), rt): {"runtime": rt, "error": str(exc)} for p, rt in todo.values()}
        with self.lock:
            for key, (p, rt) in todo.items():
                self.host[key] = results[(str(p.resolve()), rt)]


def _fmt(n: float) -> str:
    return f"{int(round(n)):,}"


def check_support(st: StaticAnalysis, target: TargetConfig) -> list[str]:
    """Return reasons the target's runtime cannot run this model (empty when it can)."""
    reasons = []
    rt = target.runtime
    if st.format not in RUNTIME_FORMATS[rt]:
        reasons.append(f"runtime {rt} cannot load .{st.format} models (needs "
                       f"{' or '.join('.' + f for f in sorted(RUNTIME_FORMATS[rt]))})")
        return reasons
    ops = set(st.op_types)
    custom = sorted(o for o in ops if o.startswith("CUSTOM:"))
    if custom:
        reasons.append(f"custom ops not supported by {rt}: {', '.join(custom)}")
    if rt.startswith("tflm") or rt in ("x-cube-ai", "vendor-optimized"):
        if st.format == "tflite":
            missing = sorted(o for o in ops - TFLM_OPS if not o.startswith("CUSTOM:"))
            if missing:
                reasons.append(f"ops not supported by {rt}: {', '.join(missing)}")
        if st.hybrid_ops:
            reasons.append(f"dynamic-range (hybrid float/int8) ops are not supported by {rt}: "
                           f"{', '.join(st.hybrid_ops)}")
    model_dtypes = {d for d in st.tensor_dtypes if d in ("int8", "uint8", "int16", "float16", "float32")}
    unsupported = sorted(model_dtypes - set(target.supported_dtypes))
    if unsupported:
        reasons.append(f"tensor dtypes not supported by {target.name} ({rt}): {', '.join(unsupported)}")
    return reasons


@dataclass
class _Figures:
    """The figures of one model on one target as profiling refines them (estimate, then measurements)."""

    latency_ms: float
    energy_uj: float
    arena_bytes: int
    peak_ram_bytes: int = 0
    flash_bytes: int = 0
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    firmware: firmware_size.FirmwareSize | None = None


def _arena_estimate(st: StaticAnalysis, rt: str) -> int:
    """Return the runtime's working memory (arena / activations) estimated from the graph."""
    if rt.startswith("tflm") and st.format == "tflite":
        return st.tflm_arena_bytes[rt]
    if rt in ("tflite", "onnxruntime"):
        return st.activation_peak_bytes + st.model_bytes  # weights are loaded into RAM on Linux runtimes
    return st.activation_peak_bytes


def _measure_tflm(p: Path, st: StaticAnalysis, rt: str, cache: ProfileCache, fig: _Figures) -> None:
    """Replace the arena estimate by the arena TFLite Micro measures (or record why it could not run)."""
    m = cache.get_tflm_arena(p)
    if "arena_bytes" in m:
        # the interpreter here runs reference kernels; CMSIS-NN adds its scratch buffers on top
        fig.arena_bytes = m["arena_bytes"] + (st.tflm_arena_bytes[rt] - st.tflm_arena_bytes["tflm-reference"])
        fig.measured["tflm_arena_bytes"] = m["arena_bytes"]
        fig.measured["tflm_arena_estimate_bytes"] = st.tflm_arena_bytes["tflm-reference"]
        fig.measured["tflm_arena_error_pct"] = round(
            100.0 * (st.tflm_arena_bytes["tflm-reference"] - m["arena_bytes"]) / m["arena_bytes"], 2)
        fig.sources["peak_ram_bytes"] = "tflm-measured arena + runtime overhead"
    elif m.get("abort"):
        # an abort cannot be told apart from a model the interpreter really cannot run: do not recommend it
        fig.measured["tflm_error"] = m["error"]
        fig.reasons.append("TFLite Micro aborted on this model (" + m["error"].split(": TFLite Micro ", 1)[-1][:200]
                           + "); the static arena estimate is reported but the model is unverified on " + rt)
    else:
        fig.measured["tflm_error"] = m["error"]
        fig.reasons.append(f"TFLite Micro cannot run this model: {m['error'].split(': ', 1)[-1][:300]}")


def _measure_host(p: Path, target: TargetConfig, cache: ProfileCache, fig: _Figures) -> None:
    """Replace latency/energy (and RAM) by timing the model in its runtime on this host."""
    rt = target.runtime
    h = cache.get_host(p, HOST_RUNTIME[rt])
    fig.measured["host"] = {**h, "label": "host-measured"}
    if "error" in h:
        fig.reasons.append(f"{rt} on this host failed: {h['error'][:300]}")
        return
    fig.latency_ms = h["latency_ms"]
    fig.energy_uj = fig.latency_ms * target.active_power_mw
    fig.sources["latency_ms"] = "host-measured"
    fig.sources["energy_uj"] = "host-measured latency x nominal power"
    if h.get("peak_rss_increase_bytes") is not None:
        fig.peak_ram_bytes = h["peak_rss_increase_bytes"] + target.ram_overhead_bytes
        fig.sources["peak_ram_bytes"] = "host-measured RSS increase + runtime baseline"


def _run_device(p: Path, target: TargetConfig, fig: _Figures) -> None:
    """Replace figures by what the target's own device runner measured (estimates stay if it fails)."""
    from tinymlops.profile.device import run_command

    assert target.runner is not None
    try:
        d = run_command(target.runner, p.resolve(), target.name)
    except RuntimeCrash as exc:
        fig.measured["device"] = {"error": str(exc), "label": "device-measured"}
        fig.notes.append(f"device runner failed, figures are estimates: {exc}")
        return
    fig.measured["device"] = {**d, "label": "device-measured"}
    fig.latency_ms = d["latency_ms"]
    fig.sources["latency_ms"] = "device-measured"
    if "energy_uj" in d:
        fig.energy_uj = d["energy_uj"]
        fig.sources["energy_uj"] = "device-measured"
    else:
        fig.energy_uj = fig.latency_ms * target.active_power_mw
        fig.sources["energy_uj"] = "device-measured latency x active power"
    if "peak_ram_bytes" in d:
        fig.peak_ram_bytes = d["peak_ram_bytes"]
        fig.sources["peak_ram_bytes"] = "device-measured"
    elif "arena_bytes" in d:
        fig.peak_ram_bytes = d["arena_bytes"] + target.ram_overhead_bytes
        fig.sources["peak_ram_bytes"] = "device-measured arena + runtime overhead"
    if "flash_bytes" in d:
        fig.flash_bytes = d["flash_bytes"]
        fig.sources["flash_bytes"] = "device-measured"


def profile_model(path: str | Path, target: TargetConfig, cache: ProfileCache | None = None,
                  measure_tflm: bool = True, measure_host: bool = True, run_device: bool = True,
                  layers: bool = False, preprocessing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Profile a model file on a target and return the JSON-able result (the CLI contract).

    The cost model's estimate comes first; each measurement that applies replaces the figures it measured, in
    this order: TFLite Micro's arena, host timing (``host: true`` targets), the target's device runner.
    ``preprocessing`` (a manifest's fitted pre-processing; default: the ``manifest.json`` of the package the model
    file is in) sizes the pre-processing buffers of a microcontroller firmware.
    """
    p = Path(path)
    cache = cache or ProfileCache()
    st = cache.get_static(p)
    rt = target.runtime
    est = costmodel.estimate(st.graph, target.core, rt, target.clock_mhz, target.active_power_mw)
    arena_est = _arena_estimate(st, rt)
    fig = _Figures(est.latency_ms, est.energy_uj, arena_est, reasons=check_support(st, target),
                   notes=list(est.notes))
    fig.sources.update({"latency_ms": "estimated", "energy_uj": "estimated", "peak_ram_bytes": "estimated"})
    if measure_tflm and rt.startswith("tflm") and st.format == "tflite" and not fig.reasons:
        _measure_tflm(p, st, rt, cache, fig)
    fig.peak_ram_bytes = fig.arena_bytes + target.ram_overhead_bytes
    fig.flash_bytes = st.model_bytes + target.flash_overhead_bytes
    pp = preprocessing if preprocessing is not None else _package_preprocessing(p)
    host_arena = int(fig.measured.get("tflm_arena_bytes", _export_arena(st)))
    fw = fig.firmware = _firmware_size(st, target, host_arena, pp)
    # TFLM on a microcontroller: measured base + per-op sizes (profile/firmware_size.py); a YAML's runtime_*_bytes wins
    if fw is not None and target.runtime_flash_bytes is None:
        fig.flash_bytes = fw.flash_bytes
        fig.sources["flash_bytes"] = fw.method
        fig.notes.extend(fw.notes)
    if fw is not None and target.runtime_ram_bytes is None:
        fig.peak_ram_bytes = fw.ram_bytes
    if st.format == "tflite" and not fig.reasons:  # `emulator: qemu` targets: figures of the linked firmware
        from tinymlops.export.emulated import measure_emulated

        measure_emulated(p, target, fig, pp)
    if measure_host and target.host and rt in HOST_RUNTIME and st.format in RUNTIME_FORMATS[rt] and not fig.reasons:
        _measure_host(p, target, cache, fig)
    if run_device and target.runner is not None and not fig.reasons:
        _run_device(p, target, fig)
    return _result(p, st, target, est, arena_est, fig, layers, pp)


def _package_preprocessing(model: Path) -> dict[str, Any] | None:
    """Return the fitted pre-processing of the package a model file sits in (its ``manifest.json``), if any."""
    manifest = model.parent / "manifest.json"
    try:
        m = json.loads(manifest.read_text()) if manifest.is_file() else {}
    except (OSError, ValueError):
        return None
    pp = m.get("preprocessing") if isinstance(m, dict) and m.get("file") == model.name else None
    return pp if isinstance(pp, dict) else None


def _export_arena(st: StaticAnalysis) -> int:
    """Return the static estimate of the arena ``tinymlops export`` measures (TFLM reference kernels)."""
    return int((st.tflm_arena_bytes or {}).get("tflm-reference", 0))


def _firmware_size(st: StaticAnalysis, target: TargetConfig, host_arena_bytes: int,
                   preprocessing: dict[str, Any] | None = None) -> firmware_size.FirmwareSize | None:
    """Return the firmware size estimate for a TFLM microcontroller target (None otherwise).

    ``host_arena_bytes``: TFLM's arena as the export measures it (reference kernels, this host) or its estimate.
    """
    if st.format != "tflite" or target.core not in MCU_CORES:
        return None
    return firmware_size.estimate(st.op_types, st.model_bytes, target.core, target.runtime, host_arena_bytes,
                                  preprocessing)


def _result(p: Path, st: StaticAnalysis, target: TargetConfig, est: costmodel.Estimate, arena_est: int,
            fig: _Figures, layers: bool, preprocessing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Judge fit (RAM, flash, latency SLO) and assemble the JSON contract."""
    fw_est = _firmware_size(st, target, _export_arena(st), preprocessing)
    latency_ms, peak_ram, flash, reasons = fig.latency_ms, fig.peak_ram_bytes, fig.flash_bytes, fig.reasons
    fits_ram = peak_ram <= target.sram_bytes
    fits_flash = flash <= target.flash_bytes
    meets_slo = target.latency_slo_ms is None or latency_ms <= target.latency_slo_ms
    if not fits_ram:
        reasons.append(f"peak RAM {_fmt(peak_ram)} B > SRAM {_fmt(target.sram_bytes)} B")
    if not fits_flash:
        reasons.append(f"flash {_fmt(flash)} B > flash {_fmt(target.flash_bytes)} B")
    if not meets_slo:
        reasons.append(f"latency {latency_ms:.3g} ms > SLO {target.latency_slo_ms:g} ms")
    result: dict[str, Any] = {
        "target": target.name, "model": str(p), "format": st.format, "sha256": st.sha256, "core": target.core,
        "runtime": target.runtime, "clock_mhz": target.clock_mhz,
        "latency_ms": round(latency_ms, 6), "energy_uj": round(fig.energy_uj, 4), "peak_ram_bytes": int(peak_ram),
        "flash_bytes": int(flash), "macs": st.macs, "params": st.params,
        "fits": bool(fits_ram and fits_flash and meets_slo and not reasons),
        "fits_ram": fits_ram, "fits_flash": fits_flash, "meets_slo": meets_slo,
        "ops_supported": not check_support(st, target),
        "reasons": reasons, "notes": fig.notes, "sources": fig.sources,
        "estimated": {"latency_ms": round(est.latency_ms, 6), "energy_uj": round(est.energy_uj, 4),
                      "cycles": int(est.cycles), "arena_bytes": int(arena_est),
                      "peak_ram_bytes": int(arena_est + target.ram_overhead_bytes if fw_est is None
                                            or target.runtime_ram_bytes is not None else fw_est.ram_bytes),
                      "flash_bytes": int(st.model_bytes + target.flash_overhead_bytes if fw_est is None
                                         or target.runtime_flash_bytes is not None else fw_est.flash_bytes),
                      "latency_ms_by_kind": {k: round(v, 6) for k, v in est.per_kind_ms.items()},
                      "method": "per-op-kind cost model (tinymlops.profile.costmodel)"},
        "static": st.summary(layers),
    }
    if fig.firmware is not None:   # the microcontroller firmware's parts (profile/firmware_size.py)
        result["firmware_estimate"] = {"flash_by_part": fig.firmware.flash_by_part,
                                       "ram_by_part": fig.firmware.ram_by_part, "table": fig.firmware.table}
    if fig.measured:
        result["measured"] = fig.measured
    return result
