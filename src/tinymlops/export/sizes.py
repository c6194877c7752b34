"""Measure the firmware size table the profiler's static MCU estimate uses (tinymlops.profile.firmware_size).

For one (core, kernels, rounding) library the probe links the real firmware (bundle sources, test harness, startup,
newlib nano) around a 16-byte placeholder model, first with an empty op resolver (the *base*: TFLM's interpreter,
allocator and flatbuffer code, libc, startup, harness, identity pre-processing), then once per op with only that
op registered. An op's size is the linked flash it adds to the base (its kernel plus whatever library code only it
pulls in, libm included); RAM likewise (.data + .bss besides the arena and the harness's input buffer). The
resolver calls ``tm_probe_register()``; one object defines ``tm_probe_<OP>()`` (``resolver.AddX()``) for every op,
each in its own section, and a one-line C file per op picks one, so ``--gc-sections`` links exactly that op's code
and TFLM's headers are compiled twice per table, not once per op. The RAM a resolver slot takes (the probe's
resolver has one) is ``sizeof(MicroMutableOpResolver<N>)`` read from the compiler's assembly for two N.

Ops share code (CMSIS-NN's requantisation and matrix kernels, TFLM's kernel utilities): the sum of single-op sizes
over-counts a model with several ops. Each link's map lists its input sections (section name + object); a section
linked for several ops is shared, and the table lists the bytes of each group of sharing ops
(``shared_flash_bytes``), which the estimate counts once. Run ``python -m tinymlops.export.sizes --core cortex-m4 [--kernels cmsis_nn]``
with the toolchain and ``TINYMLOPS_TFLM_DIR``; it rewrites ``profile/firmware_size_table.py``.

The stack: single-op int8 models (random weights; conv/fully connected in several shapes, as CMSIS-NN picks a kernel
by shape) are exported and run under QEMU like the emulated profiler does; the painted stack's high-water per op
kind gives ``stack_base_bytes`` + ``op_stack_bytes`` (``--stack`` measures only these, into the existing entries).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pprint
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.errors import TinyMLOpsError

#: the ops measured: the MLPerf Tiny models' and the demo's, plus common int8 vision/audio/sequence ops
PROBE_OPS: tuple[str, ...] = (
    "FULLY_CONNECTED", "SOFTMAX", "CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE", "ADD",
    "MUL", "SUB", "QUANTIZE", "DEQUANTIZE", "LOGISTIC", "TANH", "RELU", "RELU6", "HARD_SWISH", "CONCATENATION",
    "MEAN", "PAD", "STRIDED_SLICE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE_CONV", "BATCH_MATMUL",
)
PROBE_ARENA_BYTES = 1024
TABLE_MODULE = Path(__file__).resolve().parents[1] / "profile" / "firmware_size_table.py"


def _probe_bundle(work: Path, target: Any) -> Path:
    """Render the bundle for a placeholder model whose resolver calls ``tm_probe_register()``; return its src dir."""
    from tinymlops.export.bundle import ExportSource, render_sources
    from tinymlops.export.model_info import ModelInfo, TensorSpec
    from tinymlops.preprocessing import FittedPreprocessing

    model = work / "probe.tflite"
    model.write_bytes(bytes(16))
    spec = FittedPreprocessing(raw_shape=[4], feature_names=[f"f{i}" for i in range(4)])
    src = ExportSource("size-probe", "0", "int8", model, {"preprocessing": spec.model_dump(mode="json"),
                                                          "class_names": ["a", "b"]})
    info = ModelInfo((), TensorSpec((1, 4), "int8", 0.1, 0), TensorSpec((1, 2), "int8", 1 / 256, -128), 16)
    files = render_sources(src, target, info, PROBE_ARENA_BYTES, PROBE_ARENA_BYTES, np.zeros(4, np.float32), "a")
    new = "  Resolver *resolver = new (resolver_storage) Resolver();\n"
    if new not in files["tm_model.cc"]:
        raise TinyMLOpsError("tm_model.cc.in changed: the size probe cannot find the resolver's construction")
    files["tm_model.cc"] = files["tm_model.cc"].replace(
        new, new + "  if (tm_probe_register(resolver) != 0) return -1;\n").replace(
        "namespace {", 'extern "C" int tm_probe_register(void *resolver);\n\nnamespace {', 1)
    out = work / "src"
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if not name.startswith("_") and name != "example_main.cc":
            (out / name).write_text(text)
    return out


def _flash_sections(map_file: Path) -> dict[tuple[str, str], int]:
    """Return bytes per (input section, object file name) of the flash output sections in a linker map."""
    from tinymlops.export.firmware import FLASH_SECTIONS, map_input_sections

    out: dict[tuple[str, str], int] = {}
    for out_sec, in_sec, obj, size in map_input_sections(map_file.read_text()):
        if out_sec in FLASH_SECTIONS and size:
            key = (in_sec, obj.rsplit("/", 1)[-1])
            out[key] = out.get(key, 0) + size
    return out


def shared_groups(sections_by_op: dict[str, dict[tuple[str, str], int]]) -> list[tuple[list[str], int]]:
    """Return (ops, bytes) for every group of >= 2 ops whose single-op links hold the same input sections."""
    owners: dict[tuple[str, str], set[str]] = {}
    for op, secs in sections_by_op.items():
        for key in secs:
            owners.setdefault(key, set()).add(op)
    groups: dict[tuple[str, ...], int] = {}
    for key, ops in owners.items():
        if len(ops) > 1:
            g = tuple(sorted(ops))
            groups[g] = groups.get(g, 0) + max(sections_by_op[op][key] for op in ops)
    return sorted(((list(g), n) for g, n in groups.items()), key=lambda x: -x[1])


def _sizes(fw: Any) -> tuple[int, int]:
    """Return (flash without the model, RAM .data + .bss without the arena and harness buffer) of a probe."""
    ram = fw.ram_static_bytes - fw.ram_by_component.get("test_io", 0) - PROBE_ARENA_BYTES
    return fw.flash_bytes - fw.flash_by_component.get("model", 0), ram


def _compile_probe_ops(work: Path, ops: tuple[str, ...], lib: Any, emu: Any) -> Path:
    """Compile ``tm_probe_<OP>()`` for every op into one object (each function in its own section)."""
    from tinymlops.export.firmware import _run, arch_flags
    from tinymlops.export.model_info import resolver_method

    funcs = "\n".join(f'extern "C" int tm_probe_{op}(void *r) {{ return static_cast<Resolver *>(r)->'
                      f'{resolver_method(op)}() == kTfLiteOk ? 0 : 1; }}' for op in ops)
    cc = work / "tm_probe_ops.cc"
    cc.write_text('#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n'
                  f"using Resolver = tflite::MicroMutableOpResolver<1>;\n{funcs}\n")
    obj = work / "tm_probe_ops.o"
    _run(["arm-none-eabi-g++", *lib.cxxflags, *arch_flags(emu), "-O2", "-ffunction-sections", *lib.includes, "-c",
          str(cc), "-o", str(obj)], work, "compiling the op probes")
    return obj


def _selector(work: Path, op: str | None, lib: Any, emu: Any) -> Path:
    """Compile the C file whose ``tm_probe_register()`` registers one op (None: no op)."""
    from tinymlops.export.firmware import _run, arch_flags

    c = work / "tm_probe_select.c"
    c.write_text(f"int tm_probe_{op}(void *r);\nint tm_probe_register(void *r) {{ return tm_probe_{op}(r); }}\n"
                 if op else "int tm_probe_register(void *r) { (void)r; return 0; }\n")
    _run(["arm-none-eabi-gcc", *lib.cflags, *arch_flags(emu), "-O2", "-c", str(c), "-o", str(c.with_suffix(".o"))],
         work, "compiling the op selector")
    return c.with_suffix(".o")


def resolver_slot_bytes(work: Path, lib: Any, emu: Any) -> int:
    """Return sizeof(MicroMutableOpResolver<N + 1>) - sizeof(<N>) on the core: the RAM each further op costs."""
    import re

    from tinymlops.export.firmware import _run, arch_flags

    cc = work / "tm_resolver_size.cc"
    cc.write_text('#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n'
                  "extern const unsigned tm_r4 = sizeof(tflite::MicroMutableOpResolver<4>);\n"
                  "extern const unsigned tm_r12 = sizeof(tflite::MicroMutableOpResolver<12>);\n")
    asm = work / "tm_resolver_size.s"
    _run(["arm-none-eabi-g++", *lib.cxxflags, *arch_flags(emu), "-O2", *lib.includes, "-S", str(cc), "-o",
          str(asm)], work, "compiling the resolver size probe")
    words = dict(re.findall(r"^(tm_r\d+):\s*\n\s*\.word\s+(\d+)", asm.read_text(), re.M))
    return (int(words["tm_r12"]) - int(words["tm_r4"])) // 8


def measure_table(core: str, kernels: str, rounding: str = "single", ops: tuple[str, ...] = PROBE_OPS,
                  tflm_dir: str | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Link the probe firmware for the base and every op; return the table entry for (core, kernels)."""
    from tinymlops.export.firmware import link_firmware
    from tinymlops.export.model_info import resolver_method
    from tinymlops.export.toolchain import build_library, emulated, find_tflm, require_tools
    from tinymlops.profile.targets import TargetConfig

    emu = emulated(core)
    require_tools(run=False)
    tflm = find_tflm(tflm_dir)
    lib = build_library(tflm, emu, kernels, log=say, rounding=rounding)
    header = (tflm / "tensorflow/lite/micro/micro_mutable_op_resolver.h").read_text()
    skipped = {op: f"this TFLM tree's MicroMutableOpResolver has no {resolver_method(op)}()" for op in ops
               if f" {resolver_method(op)}(" not in header}
    ops = tuple(op for op in ops if op not in skipped)
    target = TargetConfig(name="size-probe", core=core, clock_mhz=100, sram_bytes=1 << 20, flash_bytes=1 << 22,
                          runtime="tflm-cmsis-nn" if kernels else "tflm-reference", active_power_mw=1)
    op_flash: dict[str, int] = {}
    op_ram: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="tinymlops-size-probe-") as d:
        work = Path(d)
        bundle = _probe_bundle(work, target)
        fw_dir = work / "fw"
        fw_dir.mkdir()
        probes = _compile_probe_ops(fw_dir, ops, lib, emu)
        base_fw = link_firmware(bundle, fw_dir, lib, emu, extra_objects=(_selector(fw_dir, None, lib, emu), probes))
        base_flash, base_ram = _sizes(base_fw)
        base_secs = _flash_sections(fw_dir / "firmware.map")
        slot = resolver_slot_bytes(fw_dir, lib, emu)
        secs_by_op: dict[str, dict[tuple[str, str], int]] = {}
        say(f"{core} {kernels or 'reference'}: base flash {base_flash:,} B (tflm "
            f"{base_fw.flash_by_component.get('tflm', 0):,}), RAM {base_ram:,} B")
        for op in ops:
            fw = link_firmware(bundle, fw_dir, lib, emu, only=("-",),
                               extra_objects=(_selector(fw_dir, op, lib, emu), probes))
            flash, ram = _sizes(fw)
            secs_by_op[op] = {k: v for k, v in _flash_sections(fw_dir / "firmware.map").items()
                              if k not in base_secs and not k[0].startswith(".text.tm_probe_")}
            op_flash[op], op_ram[op] = flash - base_flash, ram - base_ram
            say(f"  {op:<30} +{op_flash[op]:>7,} B flash  +{op_ram[op]:>5,} B RAM")
    return {"base_flash_bytes": base_flash, "base_ram_bytes": base_ram,
            "base_flash_by_component": {k: v for k, v in base_fw.flash_by_component.items() if k != "model"},
            "base_ram_by_component": {k: v - (PROBE_ARENA_BYTES if k == "app" else 0)
                                      for k, v in base_fw.ram_by_component.items() if k != "test_io"},
            "resolver_ram_bytes_per_op": slot,
            "op_flash_bytes": op_flash, "op_ram_bytes": op_ram, "skipped": skipped,
            "shared_flash_bytes": [[ops_, n] for ops_, n in shared_groups(secs_by_op) if n >= 16],
            "library": f"{emu.target_arch} {kernels or 'reference'} kernels, {rounding} rounding, "
                       "BUILD_TYPE=release_with_logs, arm-none-eabi-gcc -O2 (TFLM's flags)",
            "measured": datetime.date.today().isoformat()}


def _stack_probe_models() -> dict[str, Any]:
    """Return single-op Keras models (name -> model): each converts to an int8 graph of (mostly) one op kind.

    Conv and fully connected ops come in several shapes: CMSIS-NN picks a kernel by shape (1x1, strided, wide).
    """
    from tinymlops.tf import keras, tf

    k = keras.layers
    img, vec = (12, 12, 8), (32,)

    def m(shape: tuple[int, ...], layer: Any) -> Any:
        x = k.Input(shape)
        return keras.Model(x, layer(x))

    return {"fully_connected": m(vec, k.Dense(16)), "conv_2d": m(img, k.Conv2D(8, 3, padding="same")),
            "conv_2d_1x1": m(img, k.Conv2D(16, 1)), "conv_2d_1x1_s2": m(img, k.Conv2D(16, 1, strides=2)),
            "conv_2d_s2": m(img, k.Conv2D(8, 3, strides=2)), "conv_2d_1xn": m((1, 32, 8), k.Conv2D(8, (1, 3))),
            "conv_2d_rgb": m((16, 16, 3), k.Conv2D(16, 3, padding="same")),
            "conv_2d_wide": m((8, 8, 64), k.Conv2D(64, 3, padding="same")),
            "depthwise_conv_2d": m(img, k.DepthwiseConv2D(3, padding="same")),
            "depthwise_conv_2d_5x5": m(img, k.DepthwiseConv2D(5, padding="same")),
            "depthwise_conv_2d_s2": m(img, k.DepthwiseConv2D(3, strides=2, depth_multiplier=2)),
            "fully_connected_wide": m((640,), k.Dense(128)),
            "average_pool_2d": m(img, k.AveragePooling2D(2)), "max_pool_2d": m(img, k.MaxPooling2D(2)),
            "softmax": m(vec, k.Softmax()), "reshape": m(img, k.Reshape((-1,))),
            "add": m(vec, k.Lambda(lambda t: t + tf.linspace(-1.0, 1.0, 32))),
            "mul": m(vec, k.Lambda(lambda t: t * tf.linspace(-1.0, 1.0, 32))),
            "logistic": m(vec, k.Activation("sigmoid")), "tanh": m(vec, k.Activation("tanh")),
            "mean": m(img, k.GlobalAveragePooling2D()), "pad": m(img, k.ZeroPadding2D(1)),
            "concatenation": m(vec, k.Lambda(lambda t: tf.concat([t, t], -1))),
            "sub": m(vec, k.Lambda(lambda t: t - tf.linspace(-1.0, 1.0, 32))), "relu": m(vec, k.ReLU()),
            "relu6": m(vec, k.ReLU(6.0)), "hard_swish": m(vec, k.Lambda(lambda t: t * tf.nn.relu6(t + 3) / 6)),
            "strided_slice": m(vec, k.Lambda(lambda t: t[:, 2:30:2])),
            "transpose": m(img, k.Lambda(lambda t: tf.transpose(t, [0, 2, 1, 3]))),
            "transpose_conv": m(img, k.Conv2DTranspose(8, 3, strides=2, padding="same"))}


def measure_stack(core: str, kernels: str, tflm_dir: str | None = None,
                  say: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the stack high-water of firmware per op kind under QEMU; return the table's stack fields.

    Each probe model (:func:`_stack_probe_models`, int8, random weights) is exported, linked and run by the
    emulated profiler's path (identity pre-processing); every op kind in its graph gets the largest high-water of
    the probes holding it. ``stack_base_bytes`` = the smallest probe's high-water (main, harness, interpreter and
    pre-processing call chain with the shallowest kernel); ``op_stack_bytes[op]`` = what the op adds to it.
    """
    from tinymlops.export.emulated import firmware_figures
    from tinymlops.profile.graph import load_graph
    from tinymlops.profile.reference_models import to_tflite_int8
    from tinymlops.profile.targets import TargetConfig

    target = TargetConfig(name="stack-probe", core=core, clock_mhz=100, sram_bytes=1 << 20, flash_bytes=1 << 22,
                          runtime="tflm-cmsis-nn" if kernels else "tflm-reference", active_power_mw=1)
    out: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="tinymlops-stack-probe-") as d:
        for name, model in _stack_probe_models().items():
            path = Path(d) / f"{name}.tflite"
            try:
                path.write_bytes(to_tflite_int8(model))
                ops = sorted({o.op_type for o in load_graph(path).ops})
                hw = int(firmware_figures(path, target, tflm_dir)["stack_high_water_bytes"])
            except Exception as exc:  # noqa: BLE001  (a probe this converter/TFLM cannot run: skip it, say why)
                say(f"  stack {name:<20} skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                continue
            say(f"  stack {name:<20} {hw:>6,} B  ops {', '.join(ops)}")
            for op in ops:
                out[op] = max(out.get(op, 0), hw)
    if not out:
        raise TinyMLOpsError(f"no stack probe ran on {core} ({kernels or 'reference'} kernels): see the lines above")
    base = min(out.values())
    return {"stack_base_bytes": base, "op_stack_bytes": {op: hw - base for op, hw in sorted(out.items())},
            "stack_measured": f"{datetime.date.today().isoformat()}: single-op probe firmware under QEMU "
                              f"({len(out)} ops; high-water of the painted stack)"}


def write_table(entries: dict[str, dict[str, Any]]) -> None:
    """Merge entries ('core/kernels' -> entry) into the table module and rewrite it."""
    from tinymlops.profile.firmware_size_table import TABLE

    table = {**TABLE, **entries}
    text = TABLE_MODULE.read_text().split("TABLE: dict[str, dict[str, Any]] = ", 1)[0]
    TABLE_MODULE.write_text(text + "TABLE: dict[str, dict[str, Any]] = " +
                            pprint.pformat(dict(sorted(table.items())), width=116, sort_dicts=True) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--core", action="append", required=True, help="cortex-m4, cortex-m7 or cortex-m33 (repeatable)")
    ap.add_argument("--kernels", default="cmsis_nn", help="cmsis_nn or '' (reference kernels)")
    ap.add_argument("--rounding", default="single", choices=["single", "double"])
    ap.add_argument("--tflm-dir", default=None)
    ap.add_argument("--stack", action="store_true",
                    help="measure only the per-op stack (QEMU runs) and merge it into the existing entries")
    ap.add_argument("--dry-run", action="store_true", help="print the entries as JSON, do not rewrite the table")
    args = ap.parse_args()
    from tinymlops.profile.firmware_size_table import TABLE

    entries = {}
    for core in args.core:
        key = f"{core}/{args.kernels or 'reference'}"
        if args.stack and key not in TABLE:
            ap.error(f"--stack: no {key} entry in the table to add the stack to; measure it first without --stack")
        entry = TABLE[key] if args.stack else measure_table(core, args.kernels, args.rounding, tflm_dir=args.tflm_dir)
        entries[key] = {**entry, **measure_stack(core, args.kernels, args.tflm_dir)}
    if args.dry_run:
        print(json.dumps(entries, indent=1))
    else:
        write_table(entries)
        print(f"wrote {TABLE_MODULE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
