"""The export entry point: registered version -> signed bundle (-> firmware -> QEMU run checked against TFLite).

``run_export`` is what ``tinymlops export`` calls. Firmware steps need the Arm toolchain, QEMU and a TFLM tree
(see :mod:`tinymlops.export.toolchain`); without ``--build`` nothing but Python and the registry is needed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.errors import ConfigError, UsageError
from tinymlops.export.bundle import (
    FORMATS,
    ExportResult,
    ExportSource,
    arena_with_margin,
    check_exportable,
    layout,
    measure_arena_bytes,
    render_sources,
    sign_bundle,
)
from tinymlops.export.model_info import ModelInfo

Say = Callable[[str], None]


def load_source(model_name: str, version: str, dst: Path) -> ExportSource:
    """Download a registered version's package (model file + manifest) from MLflow."""
    from tinymlops import registry

    mv = registry.get_version(model_name, version)
    pkg = registry.download_package(model_name, version, dst)
    manifest = registry.read_manifest(pkg)
    return ExportSource(model_name, str(version), str(manifest.get("variant") or mv.tags.get("variant", "")),
                        pkg / manifest["file"], manifest, mv.run_id)


def load_test_split(src: ExportSource, n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return up to ``n`` raw inputs and labels of the version's test split (regenerated from its train config)."""
    from tinymlops import registry
    from tinymlops.config import PipelineConfig
    from tinymlops.data import load_splits

    train_run = registry.get_version(src.model_name, src.version).tags.get("train_run_id") or src.run_id
    try:
        path = registry.download(train_run, "config/pipeline.json")
    except Exception as exc:  # noqa: BLE001  (any MLflow failure: say which run lacks the config)
        raise ConfigError(f"train run {train_run} of {src.model_name} v{src.version} has no config/pipeline.json: "
                          f"cannot rebuild the test split ({type(exc).__name__})") from None
    cfg = PipelineConfig.model_validate_json(Path(path).read_text())
    test = load_splits(cfg.dataset)["test"]
    return test.X[:n], test.y[:n], list(test.class_names)


def write_bundle(src: ExportSource, target: Any, fmt: str, out: Path, example: tuple[np.ndarray, str],
                 say: Say = lambda s: None) -> tuple[ExportResult, ModelInfo]:
    """Check, measure, render, lay out and sign a bundle in ``out`` (replaced if it exists)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    info = check_exportable(src, target)
    say(f"measuring the TFLM arena of {src.model_name} v{src.version}")
    measured = measure_arena_bytes(src.model_path)
    arena = arena_with_margin(measured)
    files = layout(fmt, render_sources(src, target, info, arena, measured, example[0], example[1]), src, target)
    if out.exists():
        if not (out / "export.json").is_file() and any(out.iterdir()):
            raise UsageError(f"{out}: directory exists and is not a tinymlops export; choose another --out")
        shutil.rmtree(out)
    for rel, text in files.items():
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    io = {"input": {"shape": list(info.input.shape), "dtype": info.input.dtype, "scale": info.input.scale,
                    "zero_point": info.input.zero_point},
          "output": {"shape": list(info.output.shape), "dtype": info.output.dtype, "scale": info.output.scale,
                     "zero_point": info.output.zero_point}}
    kid = sign_bundle(out, {"model_name": src.model_name, "model_version": src.version, "variant": src.variant,
                            "target": target.name, "core": target.core, "runtime": target.runtime, "format": fmt,
                            "arena_bytes": arena, "arena_measured_bytes": measured, "ops": list(info.ops),
                            "class_names": src.manifest["class_names"], **io})
    res = ExportResult(out, fmt, target.name, sorted(files), arena, measured, list(info.ops), io["input"],
                       io["output"], kid)
    return res, info


def _interpreter(model_path: Path, kernels: str) -> Any:
    """Open the TFLite interpreter (LiteRT when installed) with its optimized or its reference kernels."""
    from tinymlops.runtimes.tflite import litert_available, load_interpreter

    if kernels == "optimized":
        return load_interpreter(model_path)[0]
    if litert_available():
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        return Interpreter(model_path=str(model_path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    import warnings

    from tinymlops.tf import tf

    with warnings.catch_warnings():  # tf.lite's deprecation notice
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(model_path=str(model_path),
                                   experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)


def reference_outputs(model_path: Path, inputs_q: np.ndarray, kernels: str = "reference") -> np.ndarray:
    """Run int8 inputs through the TFLite interpreter; return its int8 outputs.

    Args:
        kernels: "reference" (TFLite's reference kernels, ``OpResolverType.BUILTIN_REF``: the bar for a TFLM
            firmware) or "optimized" (the default kernels + XNNPACK, what evaluation and the Linux agent run).
    """
    it = _interpreter(model_path, kernels)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for x in inputs_q:
        it.set_tensor(i["index"], x.reshape(i["shape"]).astype(np.int8))
        it.invoke()
        out.append(it.get_tensor(o["index"]).reshape(-1).copy())
    return np.stack(out).astype(np.int8)


def compare(src: ExportSource, info: ModelInfo, X: np.ndarray, y: np.ndarray, device: Any) -> dict[str, Any]:
    """Compare the device run with Python pre-processing + the TFLite interpreter; return the figures."""
    from tinymlops.preprocessing import FittedPreprocessing, transform
    from tinymlops.runtimes import dequantize, open_runner, quantize

    feats = transform(FittedPreprocessing(**src.manifest["preprocessing"]), X)
    py_in = quantize(feats, info.input.scale, info.input.zero_point, np.int8)
    dev = device.outputs_q.astype(int)
    # the runtime alone, same int8 input: TFLite's reference kernels (the bar) and its optimized kernels
    d_out = np.abs(dev - reference_outputs(src.model_path, device.inputs_q, "reference").astype(int))
    d_opt = np.abs(dev - reference_outputs(src.model_path, device.inputs_q, "optimized").astype(int))
    ref_cls = reference_outputs(src.model_path, py_in, "optimized").argmax(axis=1)  # end to end, as evaluated
    # TFLM's own Python interpreter (stock TFLM: double rounding) tells what the single-rounding build changed
    with open_runner(src.model_path, "tflm") as tflm:
        y_tflm = tflm.predict(dequantize(device.inputs_q, info.input.scale, info.input.zero_point))
    tflm_q = quantize(y_tflm, info.output.scale, info.output.zero_point, np.int8).reshape(dev.shape)
    return {
        "n_inputs": len(X),
        "input_max_lsb_diff": int(np.abs(device.inputs_q.astype(int) - py_in.astype(int)).max()),
        "output_max_lsb_diff": int(d_out.max()),
        "outputs_off_by_1_lsb": int((d_out == 1).sum()),
        "outputs_within_1_lsb": bool(d_out.max() <= 1),
        "optimized_max_lsb_diff": int(d_opt.max()),
        "optimized_outputs_off_by_1_lsb": int((d_opt == 1).sum()),
        "tflm_host_max_lsb_diff": int(np.abs(dev - tflm_q.astype(int)).max()),
        "class_agreement": float((device.classes == ref_cls).mean()),
        "device_accuracy": float((device.classes == y).mean()),
        "tflite_accuracy": float((ref_cls == y).mean()),
    }


def build_and_run(res: ExportResult, src: ExportSource, target: Any, info: ModelInfo,
                  data: tuple[np.ndarray, np.ndarray] | None, *, tflm_dir: str | None, jobs: int = 2,
                  say: Say = lambda s: None, rounding: str = "single") -> dict[str, Any]:
    """Build the firmware for the target's QEMU board (and run it on raw inputs ``data`` = (X, y)); return figures.

    ``rounding``: the TFLM library's requantisation ("single" = the TFLite interpreter's; "double" = stock TFLM).
    """
    from tinymlops.export.firmware import link_firmware, run_qemu
    from tinymlops.export.toolchain import build_library, emulated, find_tflm, kernels_for, require_tools

    emu = emulated(target.core)
    require_tools(data is not None)
    tflm = find_tflm(tflm_dir)
    lib = build_library(tflm, emu, kernels_for(target.runtime), jobs=jobs, log=say, rounding=rounding)
    fw = link_firmware(res.out_dir / "src", res.out_dir / "firmware", lib, emu, jobs)
    fig: dict[str, Any] = {
        "machine": emu.machine, "core": emu.core, "kernels": kernels_for(target.runtime) or "reference",
        "rounding": lib.rounding,
        "library": str(lib.lib_path), "library_cached": lib.cached, "library_build_s": round(lib.build_seconds, 1),
        "link_s": round(fw.link_seconds, 2), "elf": str(fw.elf),
        "flash_bytes": fw.flash_bytes, "flash_by_component": fw.flash_by_component,
        "ram_static_bytes": fw.ram_static_bytes, "ram_by_component": fw.ram_by_component,
        "ram_buffers": fw.ram_buffers,
        "arena_bytes": res.arena_bytes,
    }
    if data is not None:
        X, y = data
        say(f"running {len(X)} test inputs on {emu.machine} (qemu-system-arm -icount shift=0)")
        dev = run_qemu(fw.elf, emu, X, info.input.elements, info.output.elements)
        insn_per_tick = 1e9 / emu.systick_hz
        inf = dev.inf_ticks * insn_per_tick
        fig.update({
            "instructions_per_inference": int(np.median(inf)),
            "instructions_per_inference_min_max": [int(inf.min()), int(inf.max())],
            "preprocessing_instructions": int(np.median(dev.pre_ticks * insn_per_tick)),
            "instruction_resolution": int(insn_per_tick),
            "arena_used_bytes": dev.arena_used_bytes, "stack_high_water_bytes": dev.stack_bytes,
            # RAM of the model's code path: .data + .bss (arena included) + stack high-water, without the test
            # harness's raw-input buffer (test_io) and the heap newlib's stdio takes (harness_heap_bytes)
            "ram_bytes": fw.ram_static_bytes - fw.ram_by_component.get("test_io", 0) + dev.stack_bytes,
            # the same with the arena the interpreter really used instead of the declared one (margin removed)
            "ram_used_bytes": fw.ram_static_bytes - fw.ram_by_component.get("test_io", 0) + dev.stack_bytes
            - res.arena_bytes + dev.arena_used_bytes,
            "harness_heap_bytes": dev.heap_bytes, "qemu_s": round(dev.seconds, 2),
            **compare(src, info, X, y, dev),
        })
    return fig


def run_export(model_name: str, version: str, target_name: str, fmt: str = "c", out: str | Path | None = None,
               *, build: bool = False, run: bool = False, tflm_dir: str | None = None, n_inputs: int = 100,
               log_to_mlflow: bool = True, targets_dir: str | Path | None = None, jobs: int = 2,
               say: Say = lambda s: None) -> ExportResult:
    """Export a registered version as a signed bundle for a target (THE entry point of ``tinymlops export``).

    Raises:
        ConfigError: unknown target, missing toolchain/TFLM tree (naming what to install or set).
        UsageError: a float or unsupported model for a microcontroller target, a bad format.
    """
    from tinymlops import registry
    from tinymlops.profile.targets import resolve_target

    target = resolve_target(target_name, targets_dir)
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if run:
        build = True
    if build:  # fail before any work when the firmware cannot be built here
        from tinymlops.export.toolchain import emulated, find_tflm, require_tools

        emulated(target.core)
        require_tools(run)
        find_tflm(tflm_dir)
    out_dir = Path(out or f"export-{model_name}-v{version}-{target.name}-{fmt}").resolve()
    with tempfile.TemporaryDirectory(prefix="tinymlops-export-") as tmp:
        src = load_source(model_name, version, Path(tmp))
        check_exportable(src, target)
        X, y, names = load_test_split(src, 1)
        res, info = write_bundle(src, target, fmt, out_dir, (X[0], names[int(y[0])]), say)
        if build:
            data = load_test_split(src, n_inputs)[:2] if run else None
            res.firmware = build_and_run(res, src, target, info, data, tflm_dir=tflm_dir, jobs=jobs, say=say)
        if log_to_mlflow:
            res.artifact_path = f"export/{target.name}/{fmt}"
            for p in sorted(out_dir.iterdir()):  # the bundle, not the firmware build directory
                if p.name != "firmware":
                    registry.log_artifact(src.run_id, p, res.artifact_path + ("/" + p.name if p.is_dir() else ""))
            tags = {f"export.{target.name}.{fmt}": res.key_id, f"export.{target.name}.arena_bytes": res.arena_bytes}
            for k in ("flash_bytes", "ram_bytes", "instructions_per_inference"):
                if k in res.firmware:
                    tags[f"firmware.{target.name}.{k}"] = res.firmware[k]
            registry.set_version_tags(model_name, version, tags)
    return res
