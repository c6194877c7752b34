"""Microcontroller firmware end to end: train + ptq-int8 the vibration demo (small), export, build for Cortex-M4
(QEMU mps2-an386) and run the test split on the emulated device; outputs must match the TFLite interpreter.

Needs ``gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm`` and ``TINYMLOPS_TFLM_DIR`` (CI installs and
unpacks them, see .ci/run). The TFLM library is built once per core into ~/.cache/tinymlops (~5 min on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")
                                      and os.environ.get("TINYMLOPS_TFLM_DIR")),
                                 reason="needs the Arm toolchain, qemu-system-arm and TINYMLOPS_TFLM_DIR (.ci/run)")]

MODEL = "it-mcu"
SMALL: dict[str, Any] = {
    "kind": "pipeline", "project": "vibration-mcu-test",
    "mlflow": {"experiment": "it-mcu", "registered_model": MODEL},
    "dataset": {"name": "vibration", "seed": 5, "vibration": {"windows_per_class": 60}},
    "preprocessing": {"features": "spectral", "bands": 8},
    "model": {"arch": "mlp", "params": {"hidden": [16], "dropout": 0.0}},
    "train": {"epochs": 15, "early_stopping_patience": 0, "learning_rate": 0.01},
    "stages": ["train", "compress"],
    "compress": {"variants": [{"technique": "ptq-int8", "representative_samples": 50}, {"technique": "fp16"}]},
}


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Train the small demo model and register its ptq-int8 and fp16 variants in a fresh store: variant -> version."""
    home = tmp_path_factory.mktemp("mcu-home")
    os.environ["TINYMLOPS_HOME"] = str(home)
    from tinymlops import registry
    from tinymlops.compress.stage import run_compress
    from tinymlops.config import load_pipeline
    from tinymlops.train import run_train

    registry.connect()
    cfg_path = home / "pipeline.yaml"
    cfg_path.write_text(yaml.safe_dump(SMALL))
    cfg = load_pipeline(cfg_path)
    res = run_train(cfg)
    out = run_compress(cfg, res.version)
    assert all(v["status"] == "registered" for v in out.variants), out.variants
    return {str(v["variant"]): str(v["version"]) for v in out.variants}


@pytest.fixture(scope="module")
def int8_version(versions: dict[str, str]) -> str:
    return versions["ptq-int8"]


def test_float_variant_is_refused_for_a_microcontroller(versions: dict[str, str], tmp_path: Path) -> None:
    from tinymlops.errors import UsageError
    from tinymlops.export.run import run_export

    with pytest.raises(UsageError, match="needs a full-integer int8 model"):
        run_export(MODEL, versions["fp16"], "nucleo-l4r5zi", "c", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_export_build_run_on_cortex_m4_matches_tflite(int8_version: str, tmp_path: Path) -> None:
    from tinymlops import registry
    from tinymlops.export.firmware import run_qemu
    from tinymlops.export.run import run_export
    from tinymlops.export.toolchain import EMULATED

    res = run_export(MODEL, int8_version, "nucleo-l4r5zi", "c", tmp_path / "bundle", run=True, n_inputs=100)
    fw = res.firmware
    print("\nfirmware:", json.dumps({k: v for k, v in fw.items() if k not in ("elf", "library")}, indent=1))
    # the test split of 60 windows per class x 4 classes x 0.2 = 48 windows, all run on the device
    assert fw["machine"] == "mps2-an386" and fw["n_inputs"] == 48
    assert fw["class_agreement"] == 1.0
    # within 1 LSB of TFLite's reference kernels (the bar) and of its optimized kernels: the TFLM library is built
    # with TFLite's single-rounding requantisation (stock TFLM's double rounding was 7-10 LSB off after SOFTMAX)
    assert fw["rounding"] == "single"
    assert fw["output_max_lsb_diff"] <= 1 and fw["optimized_max_lsb_diff"] <= 1
    # the device's own pre-processing + quantisation lands on the same int8 input as Python's (float32 vs 64)
    assert fw["input_max_lsb_diff"] <= 1
    assert fw["device_accuracy"] == fw["tflite_accuracy"]
    flash = fw["flash_by_component"]
    model_bytes = (tmp_path / "bundle/src/tm_model_data.cc").read_text().count("0x")
    assert model_bytes <= flash["model"] < model_bytes + 64
    assert flash["tflm"] > 20_000 and flash["preprocessing"] > 1_000 and flash["libc"] > 1_000
    # the map counts mergeable string sections before the linker merges them: components sum within 1 %
    assert abs(fw["flash_bytes"] - sum(flash.values())) <= 0.01 * fw["flash_bytes"]
    assert fw["ram_by_component"]["app"] >= res.arena_bytes   # the arena is a static array of tm_model.cc
    assert 0 < fw["arena_used_bytes"] <= res.arena_bytes
    assert 0 < fw["stack_high_water_bytes"] < 32 * 1024
    assert 1_000 < fw["instructions_per_inference"] < 1_000_000
    assert fw["preprocessing_instructions"] > 10_000   # an FFT of 256 samples x 3 axes
    # the profiler's static RAM estimate is the firmware's RAM part by part: the declared arena, the pre-processing
    # buffers of the version's blocks and the rest of .data/.bss exactly (ELF symbols and sections); the stack
    # (measured base + the deepest op's measured stack + one interrupt frame) covers the high-water mark the device
    # reached, without the old fixed allowance's ~700 B excess for a fully connected model
    from tinymlops.profile.profiler import profile_model
    from tinymlops.profile.targets import get_target

    source = _source(int8_version, tmp_path)
    est = profile_model(source.model_path, get_target("nucleo-l4r5zi"), measure_host=False)["firmware_estimate"]
    ram = est["ram_by_part"]
    linked = fw["ram_buffers"]
    assert ram["arena"] == linked["arena"] == res.arena_bytes
    assert ram["preprocessing"] == linked["preprocessing"] > 2_000   # 3 x 256-sample FFT work + features
    rest = fw["ram_static_bytes"] - fw["ram_by_component"]["test_io"] - linked["arena"] - linked["preprocessing"]
    assert ram["base"] + ram["resolver"] + ram["ops"] == rest
    assert fw["stack_high_water_bytes"] <= ram["stack"] <= fw["stack_high_water_bytes"] + 256
    # instruction counts are deterministic: a second run of the same ELF counts the same
    from tinymlops.export.run import load_test_split

    src_X = load_test_split(source, 5)[0]
    a = run_qemu(Path(fw["elf"]), EMULATED["cortex-m4"], src_X, 36, 4)
    b = run_qemu(Path(fw["elf"]), EMULATED["cortex-m4"], src_X, 36, 4)
    assert a.inf_ticks.tolist() == b.inf_ticks.tolist() and a.pre_ticks.tolist() == b.pre_ticks.tolist()
    # logged on the version, with the firmware figures as tags
    mv = registry.get_version(MODEL, int8_version)
    assert int(mv.tags["firmware.nucleo-l4r5zi.instructions_per_inference"]) == fw["instructions_per_inference"]
    assert (registry.download(mv.run_id, "export/nucleo-l4r5zi/c/export.json", tmp_path / "dl")).is_file()

    # a second export + build of the same core reuses the cached TFLM library
    again = run_export(MODEL, int8_version, "nucleo-l4r5zi", "cmake", tmp_path / "bundle2", build=True,
                       log_to_mlflow=False)
    assert again.firmware["library_cached"] is True
    assert again.firmware["flash_bytes"] == fw["flash_bytes"]


def _source(version: str, tmp_path: Path) -> Any:
    from tinymlops.export.run import load_source

    return load_source(MODEL, version, tmp_path / "src")


def test_cli_run_prints_the_firmware_table(int8_version: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    r = CliRunner().invoke(app, ["export", MODEL, int8_version, "--target", "nucleo-l4r5zi", "--run", "-n", "10",
                                 "--out", str(tmp_path / "b"), "--no-log"])
    assert r.exit_code == 0, r.output
    assert "firmware on mps2-an386" in r.output and "cortex-m4, TFLM with cmsis_nn kernels" in r.output
    assert "class agreement with the TFLite interpreter 100.0 %" in r.output


def test_emulated_profiling_method_uses_the_linked_firmware(int8_version: str, tmp_path: Path) -> None:
    """A target with `emulator: qemu` is profiled from real firmware; the static estimate stays beside it."""
    from tinymlops.export.emulated import cpi
    from tinymlops.profile.profiler import profile_model
    from tinymlops.profile.targets import TargetConfig, get_target

    src = _source(int8_version, tmp_path)
    target = TargetConfig.model_validate({**get_target("nucleo-l4r5zi").model_dump(), "emulator": "qemu"})
    r = profile_model(src.model_path, target, measure_host=False)
    em = r["measured"]["emulated"]
    assert r["sources"]["latency_ms"].startswith("emulated (mps2-an386 firmware")
    assert r["sources"]["flash_bytes"] == "linked firmware ELF"
    assert r["flash_bytes"] == em["flash_bytes"] and 40_000 < r["flash_bytes"] < 150_000
    assert r["peak_ram_bytes"] == em["ram_bytes"]
    # the firmware carries the version's pre-processing (read from the package's manifest): its buffers are linked
    assert em["ram_buffers"]["preprocessing"] == r["firmware_estimate"]["ram_by_part"]["preprocessing"] > 2_000
    assert r["latency_ms"] == pytest.approx(em["instructions_per_inference"] * cpi("cortex-m4", "tflm-cmsis-nn")
                                            / (120 * 1e3), rel=1e-3)
    assert em["static"]["flash_bytes"] == r["estimated"]["flash_bytes"]   # the static estimate is kept
    assert set(em["difference_pct"]) == {"latency_ms", "flash_bytes", "peak_ram_bytes"}
    # the shipped board (no emulator field) keeps the static method
    plain = profile_model(src.model_path, get_target("nucleo-l4r5zi"), measure_host=False)
    assert plain["sources"]["latency_ms"] == "estimated" and "emulated" not in plain.get("measured", {})


def test_the_bundle_example_runs_on_the_emulated_board(int8_version: str, tmp_path: Path) -> None:
    """examples/main.cc of a c bundle, linked with the bundle's sources and TFLM, classifies its example window."""
    import subprocess

    from tinymlops.export.firmware import LINK_FLAGS, arch_flags, write_board_files
    from tinymlops.export.run import run_export
    from tinymlops.export.toolchain import EMULATED, build_library, find_tflm

    res = run_export(MODEL, int8_version, "nucleo-l4r5zi", "c", tmp_path / "bundle", log_to_mlflow=False)
    emu = EMULATED["cortex-m4"]
    lib = build_library(find_tflm(None), emu, "cmsis_nn")   # cached by the tests above
    startup, link = write_board_files(tmp_path / "fw", emu)
    src = res.out_dir / "src"
    objs = []
    for f in [*src.glob("*.c"), startup]:
        objs.append(tmp_path / "fw" / (f.stem + ".o"))
        subprocess.run(["arm-none-eabi-gcc", *lib.cflags, *arch_flags(emu), "-O2", "-std=c99", f"-I{src}", "-c",
                        str(f), "-o", str(objs[-1])], check=True, capture_output=True)
    for f in [*src.glob("*.cc"), res.out_dir / "examples/main.cc"]:
        objs.append(tmp_path / "fw" / (f.stem + ".o"))
        subprocess.run(["arm-none-eabi-g++", *lib.cxxflags, *arch_flags(emu), "-O2", f"-I{src}", *lib.includes,
                        "-c", str(f), "-o", str(objs[-1])], check=True, capture_output=True)
    elf = tmp_path / "fw" / "example.elf"
    subprocess.run(["arm-none-eabi-g++", *arch_flags(emu), *LINK_FLAGS, "-T", str(link), *map(str, objs),
                    str(lib.lib_path), "-lm", "-o", str(elf)], check=True, capture_output=True)
    run = subprocess.run(["qemu-system-arm", "-machine", emu.machine, "-nographic", "-monitor", "none", "-serial",
                          "none", "-semihosting", "-icount", "shift=0", "-kernel", str(elf)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    line = next(x for x in run.stdout.splitlines() if x.startswith("class: "))
    predicted = line.split("class: ")[1].split(" (expected ")[0]
    # the same class as the TFLite interpreter gives the example window (Python pre-processing)
    import numpy as np

    from tinymlops.export.run import load_test_split, reference_outputs
    from tinymlops.preprocessing import FittedPreprocessing, transform
    from tinymlops.runtimes import quantize

    source = _source(int8_version, tmp_path)
    X, _, names = load_test_split(source, 1)
    q = quantize(transform(FittedPreprocessing(**source.manifest["preprocessing"]), X), res.input["scale"],
                 res.input["zero_point"], np.int8)
    assert predicted == names[int(reference_outputs(source.model_path, q)[0].argmax())], run.stdout
