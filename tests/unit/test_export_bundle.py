"""Export bundles without TensorFlow: a real int8 model (embedded below), a real MLflow store, the real CLI.

The model is the vibration demo's int8 MLP (36 features -> 4 classes, FULLY_CONNECTED x2 + SOFTMAX) as
``tinymlops compress`` wrote it; the arena is measured by the TFLM runtime adapter (tflite-micro, no TF).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from tinymlops.config import PipelineConfig, PreprocessingSection
from tinymlops.errors import ConfigError, ModelFormatError, UsageError
from tinymlops.export.bundle import (
    ARENA_MARGIN,
    ExportSource,
    arena_with_margin,
    verify_bundle,
)
from tinymlops.export.firmware import parse_map
from tinymlops.export.model_info import read_model_info, resolver_method
from tinymlops.export.run import write_bundle
from tinymlops.preprocessing import fit
from tinymlops.profile.targets import get_target

MODEL_B64 = """
HAAAAFRGTDMUACAAHAAYABQAEAAMAAAACAAEABQAAAAcAAAAlAAAAOwAAAC0BAAAxAQAALQJAAADAAAAAQAAABAAAAAAAAoAEAAMAAgABAAKAAAADAAA
ABwAAAA8AAAADwAAAHNlcnZpbmdfZGVmYXVsdAABAAAABAAAAJT///8HAAAABAAAAAgAAABvdXRwdXRfMAAAAAABAAAABAAAADb7//8EAAAACAAAAGZl
YXR1cmVzAAAAAAIAAAA0AAAABAAAANz///8KAAAABAAAABMAAABDT05WRVJTSU9OX01FVEFEQVRBAAgADAAIAAQACAAAAAkAAAAEAAAAEwAAAG1pbl9y
dW50aW1lX3ZlcnNpb24ACwAAAMQDAAC8AwAAnAMAAEwDAAD8AgAArAAAAKQAAACcAAAAlAAAAHQAAAAEAAAA2vv//wQAAABgAAAADAAAAAgADgAIAAQA
CAAAABAAAAAoAAAAAAAGAAgABAAGAAAABAAAAAEAAADrAwAADAAYABQAEAAMAAQADAAAANvW/bTgsgpMAwAAAAIAAAAEAAAABgAAADIuMjEuMAAARvz/
/wQAAAAQAAAAMS4xNC4wAAAAAAAAAAAAACD8//8k/P//KPz//278//8EAAAAQAIAAOIw3AoMExpA4ub99gLQGGNI4+rj9CsVNv8U3gL/dDT53TdQBrML
Mc+sAioGruP62/gIxbYG3SrSo/QkJJ6Pzxb3/urWvEAey0/ymffR5PvxHjPJ7Bjmru+zMNMlQE/r93c47tG+ChYiM9aRDJz8PG0RETBZ1jIsDJo1FGgp
2BP7nTftSrAM7xEkQvUvklAFKB8fNAda3i+5NvT/HC49DgZ/Is0IGqK1R/0J6Tk/XPjulTpZKAn1FSkJz9L7IcL74C8K8/er/vL8GPefLLvYCRPv37oo
GVYc5wo7CvlBCba3DebKXP0aMgvss581zzEyJI0GLxVa4sjk41/013nuHitLuSAvOtqgOQUhNTb4EBkMH+qxxtEuvDXe9tvWnBMi0fIkKOYQHjaX0UHb
0uezC77GMSUbIyE59nBBRuM1CuvvCZ2rRMowAKapQBb54wkWwgvx978K6UjzlQnkA6PlPSP70QEIoTkZ90f9GsPHl/Mw9OIjGeIdPq/euFPEGBXRLhcc
CGCiA+ruAqMOG/bmSAOeyvXaFuX7/KrTItqnQQbQujo1IQbx9tGg0RjHQxTHIuoiFyHrOM4Vx+ooIQW/S2sE+jTTDQQADyIjFQUFHDQWDALV5BDt9taq
rR4V1LsR6DLky6Ws3Gf60+LL8pTQtDqk6z35q0At6JkXXg/M/0DlrBQkvJs3u6Xc/OICAfoT/6L65fPK4cAIx0Hs3lDG/PnPzvoTAoyhRgsY38XbCN8o
Tq/FwqX2+c4k5+ICpSlNA7r+//8EAAAAQAAAAGn8//+xBAAANwcAAP0GAAC6BwAAEPz//28CAACgBQAAiggAAM////98AAAA9/7//+X8//+DBQAAhwQA
AHAFAAAG////BAAAAEAAAADLTZX2nvHfmOsx3RCkNCy05dXpiUM0+VaBwP7H1ymdF7qycpiY6LTSSac+MCLx6qUT7YlgYbwyFTHQjKcCofyxUv///wQA
AAAQAAAAR////wMCAADXAAAAfv7//yz///8w////DwAAAE1MSVIgQ29udmVydGVkLgABAAAAFAAAAAAADgAYABQAEAAMAAgABAAOAAAAFAAAABwAAAAA
AQAABAEAAAgBAAAEAAAAbWFpbgAAAAADAAAAqAAAAGAAAAAUAAAAAAAOABoAFAAQAAwACwAEAA4AAAAcAAAAAAAACRwAAAAgAAAAAQAAAAAABgAIAAQA
BgAAAAAAgD8BAAAABwAAAAEAAAAGAAAAAAAOABQAAAAQAAwACwAEAA4AAAAUAAAAAAAACBAAAAAUAAAABAAEAAQAAAABAAAABgAAAAMAAAAFAAAAAgAA
AAEAAAAAAA4AFgAAABAADAALAAQADgAAABgAAAAAAAAIGAAAABwAAAAAAAYACAAHAAYAAAAAAAABAQAAAAUAAAADAAAAAAAAAAQAAAADAAAAAQAAAAcA
AAABAAAAAAAAAAgAAABEAwAAxAIAAFgCAADkAQAAgAEAAPQAAABwAAAABAAAAPL8//8AAAABFAAAADAAAAAIAAAAAAAACUQAAADc/P//CAAAABAAAAAB
AAAAgP////////8BAAAAAACAOxkAAABTdGF0ZWZ1bFBhcnRpdGlvbmVkQ2FsbDowAAAAAgAAAAEAAAAEAAAAWv3//wAAAAEUAAAAMAAAAAcAAAAAAAAJ
XAAAAET9//8IAAAAEAAAAAEAAAAMAAAAAAAAAAEAAACuRb09MgAAAG1scC9wcm9iYWJpbGl0aWVzL01hdE11bDttbHAvcHJvYmFiaWxpdGllcy9CaWFz
QWRkAAACAAAAAQAAAAQAAADa/f//AAAAARQAAAA0AAAABgAAAAAAAAlkAAAAxP3//wgAAAAUAAAAAQAAAID/////////AAAAAAEAAAAmiyM9NwAAAG1s
cC9kZW5zZV8wL01hdE11bDttbHAvZGVuc2VfMC9SZWx1O21scC9kZW5zZV8wL0JpYXNBZGQAAgAAAAEAAAAQAAAAYv7//wAAAAEUAAAAMAAAAAUAAAAA
AAAJPAAAAEz+//8IAAAAEAAAAAEAAAAAAAAAAAAAAAEAAADhrp87EgAAAG1scC9kZW5zZV8wL01hdE11bAAAAgAAABAAAAAkAAAAwv7//wAAAAEUAAAA
MAAAAAQAAAAAAAACUAAAAKz+//8IAAAAEAAAAAEAAAAAAAAAAAAAAAEAAACCpg45JAAAAG1scC9kZW5zZV8wL1JlbHU7bWxwL2RlbnNlXzAvQmlhc0Fk
ZAAAAAABAAAAEAAAADL///8AAAABFAAAADAAAAADAAAAAAAACUQAAAAc////CAAAABAAAAABAAAAAAAAAAAAAAABAAAA0jDLOxgAAABtbHAvcHJvYmFi
aWxpdGllcy9NYXRNdWwAAAAAAgAAAAQAAAAQAAAAmv///wAAAAEUAAAAMAAAAAIAAAAAAAACRAAAAIT///8IAAAAEAAAAAEAAAAAAAAAAAAAAAEAAACH
zoE5GQAAAG1scC9wcm9iYWJpbGl0aWVzL0JpYXNBZGQAAAABAAAABAAAAAAAFgAcABgAFwAQAAwACAAAAAAAAAAHABYAAAAAAAABIAAAAEAAAAABAAAA
AAAACVQAAAAMAAwAAAAAAAgABAAMAAAACAAAABQAAAABAAAACwAAAAAAAAAAAAAAAQAAAJCx5DwaAAAAc2VydmluZ19kZWZhdWx0X2ZlYXR1cmVzOjAA
AAIAAAABAAAAJAAAAAIAAAAkAAAABAAAAPD///8ZAAAAAgAAAAAAABkMABAADwAAAAgABAAMAAAACQAAAAQAAAAAAAAJ"""
CLASSES = ["healthy", "imbalance", "misalignment", "bearing_fault"]
runner = CliRunner()


@pytest.fixture
def source(tmp_path: Path) -> ExportSource:
    model = tmp_path / "model.tflite"
    model.write_bytes(base64.b64decode("".join(MODEL_B64.split())))
    X = np.random.default_rng(0).normal(size=(20, 256, 3)).astype(np.float32)
    spec = fit(PreprocessingSection(features="spectral", bands=8), X, 1600.0)
    manifest = {"preprocessing": spec.model_dump(mode="json"), "class_names": CLASSES, "file": "model.tflite"}
    return ExportSource("vib", "2", "ptq-int8", model, manifest)


def _bundle(source: ExportSource, tmp_path: Path, fmt: str, target: str = "nucleo-l4r5zi") -> Any:
    X = np.zeros((256, 3), np.float32)
    res, _ = write_bundle(source, get_target(target), fmt, tmp_path / f"out-{fmt}", (X, "healthy"))
    return res


def test_model_info_and_resolver_methods(source: ExportSource) -> None:
    info = read_model_info(source.model_path)
    assert info.ops == ("FULLY_CONNECTED", "SOFTMAX")
    assert (info.input.dtype, info.input.shape, info.input.zero_point) == ("int8", (1, 36), 11)
    assert info.output.scale == pytest.approx(1 / 256) and info.output.zero_point == -128
    assert [resolver_method(o) for o in ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "RELU6",
                                         "BATCH_MATMUL", "L2_NORMALIZATION")] == [
        "AddConv2D", "AddDepthwiseConv2D", "AddAveragePool2D", "AddRelu6", "AddBatchMatMul", "AddL2Normalization"]


def test_c_bundle_has_exact_ops_aligned_model_measured_arena_and_is_signed(
        source: ExportSource, tmp_path: Path, tm_home: Path) -> None:
    res = _bundle(source, tmp_path, "c")
    out = res.out_dir
    assert sorted(res.files) == ["README.md", "examples/main.cc", "src/tm_example_input.c", "src/tm_model.cc",
                                 "src/tm_model.h", "src/tm_model_data.cc", "src/tm_pp_config.c",
                                 "src/tm_preprocess.c", "src/tm_preprocess.h"]
    cc = (out / "src/tm_model.cc").read_text()
    assert "MicroMutableOpResolver<2>" in cc
    assert re.findall(r"resolver->(Add\w+)\(\)", cc) == ["AddFullyConnected", "AddSoftmax"]
    data = (out / "src/tm_model_data.cc").read_text()
    assert "alignas(16)" in data and "const unsigned char tm_model_tflite[" in data
    body = data.split("{", 1)[1].split("}", 1)[0]
    assert bytes(int(b, 16) for b in re.findall(r"0x([0-9a-f]{2})", body)) == source.model_path.read_bytes()
    # the arena comes from TFLM's recording allocator, with the stated margin on top
    assert 500 < res.arena_measured_bytes < 4096
    assert res.arena_bytes == arena_with_margin(res.arena_measured_bytes) >= res.arena_measured_bytes * (
        1 + ARENA_MARGIN)
    h = (out / "src/tm_model.h").read_text()
    assert f"#define TM_ARENA_BYTES {res.arena_bytes} " in h
    assert "#define TM_INPUT_ZERO_POINT 11" in h and "#define TM_NUM_CLASSES 4" in h
    assert "#define TM_RAW_INPUT_LEN 768 " in h and "#define TM_NUM_FEATURES 36 " in h
    assert '"healthy", "imbalance", "misalignment", "bearing_fault"' in cc
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["key_id"] == res.key_id and manifest["target"] == "nucleo-l4r5zi"
    assert set(manifest["files"]) == set(res.files)
    from tinymlops.fleet.packages import load_public_key

    pub = load_public_key(tm_home / "keys" / "package_signing.pub")
    verify_bundle(out, pub)
    (out / "src/tm_model_data.cc").write_text(data.replace("0x", "0X", 1))
    with pytest.raises(UsageError, match="tm_model_data.cc: missing or altered"):
        verify_bundle(out, pub)


def test_cmake_and_arduino_layouts(source: ExportSource, tmp_path: Path, tm_home: Path) -> None:
    cm = _bundle(source, tmp_path, "cmake")
    cmake = (cm.out_dir / "CMakeLists.txt").read_text()
    assert "${TFLM_DIR}" in cmake and "project(vib_v2 C CXX)" in cmake and "src/tm_preprocess.c" in cmake
    ard = _bundle(source, tmp_path, "arduino")
    props = (ard.out_dir / "library.properties").read_text()
    assert "name=vib_v2" in props and "depends=Arduino_TensorFlowLite" in props
    ino = ard.out_dir / "examples/vib_v2/vib_v2.ino"
    assert "void setup()" in ino.read_text() and "#include <vib_v2.h>" in ino.read_text()
    assert "tm_run_inference(tm_example_input, scores)" in ino.read_text()
    assert '#include "tm_model.h"' in (ard.out_dir / "src/vib_v2.h").read_text()
    assert (ard.out_dir / "src/tm_model.cc").is_file() and not (ard.out_dir / "src/tm_example_input.c").exists()


def test_refuses_what_cannot_run_on_a_microcontroller(source: ExportSource, tmp_path: Path,
                                                      tm_home: Path) -> None:
    with pytest.raises(UsageError, match="raspberry-pi-4 is a cortex-a72 application processor"):
        _bundle(source, tmp_path, "c", target="raspberry-pi-4")
    with pytest.raises(UsageError, match="unknown export format 'zip'"):
        _bundle(source, tmp_path, "zip")
    onnx = ExportSource("vib", "1", "", source.model_path.with_suffix(".onnx"), source.manifest)
    with pytest.raises(UsageError, match="export an int8 .tflite variant"):
        _bundle(onnx, tmp_path, "c")
    wrong = ExportSource("vib", "2", "ptq-int8", source.model_path, {**source.manifest, "class_names": ["a", "b"]})
    with pytest.raises(ModelFormatError, match="do not match the manifest"):
        _bundle(wrong, tmp_path, "c")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a tinymlops export"):
        write_bundle(source, get_target("nucleo-l4r5zi"), "c", tmp_path / "mine", (np.zeros((256, 3)), "x"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_toolchain_errors_say_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tinymlops.export import toolchain

    with pytest.raises(UsageError, match="no emulator for core xtensa-lx7"):
        toolchain.emulated("xtensa-lx7")
    assert toolchain.emulated("cortex-m33").machine == "mps2-an505"
    monkeypatch.delenv(toolchain.TFLM_DIR_ENV, raising=False)
    with pytest.raises(ConfigError, match="set TINYMLOPS_TFLM_DIR or pass --tflm-dir"):
        toolchain.find_tflm(None)
    with pytest.raises(ConfigError, match=r"not a tflite-micro tree"):
        toolchain.find_tflm(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi "
                                          "qemu-system-arm"):
        toolchain.require_tools(run=True)


MAP = """
Linker script and memory map

.text           0x00000040    0x1234
 *(.text*)
 .text.Reset_Handler
                0x00000040       0x60 /w/firmware/fw_startup.o
 .text._ZN6tflite3FooEv
                0x000000a0      0x100 /c/gen/lib/libtensorflow-microlite.a(fully_connected.o)
 .text.tm_pp_run
                0x000001a0       0x80 /w/firmware/tm_preprocess.o
 .text          0x00000220       0x40 /usr/lib/arm-none-eabi/newlib/thumb/libc_nano.a(lib_a-memcpy.o)
 .rodata.tm_model_tflite
                0x00000260      0xa20 /w/firmware/tm_model_data.o
.data           0x20000000        0x8 load address 0x00001000
 .data.x        0x20000000        0x8 /usr/lib/gcc/arm-none-eabi/12.2.1/thumb/libgcc.a(_udivdi3.o)
.bss            0x20000008     0x1000
 .bss._ZN12_GLOBAL__N_15arenaE
                0x20000008     0x1000 /w/firmware/tm_model.o
"""


def test_linker_map_is_attributed_to_components() -> None:
    sizes = parse_map(MAP)
    assert sizes[".text"] == {"app": 0x60, "tflm": 0x100, "preprocessing": 0x80, "libc": 0x40, "model": 0xa20}
    assert sizes[".data"] == {"libc": 8}
    assert sizes[".bss"] == {"app": 0x1000}


def _register(source: ExportSource, tmp_path: Path) -> str:
    """Register the int8 model as a real MLflow version with a package and its train config."""
    from tinymlops import registry
    from tinymlops.compress.export import write_package

    cfg = PipelineConfig.model_validate({
        "kind": "pipeline", "project": "unit", "mlflow": {"experiment": "unit-export", "registered_model": "vib"},
        "dataset": {"name": "vibration", "seed": 3, "vibration": {"windows_per_class": 10}},
        "preprocessing": {"features": "spectral", "bands": 8}, "model": {"arch": "mlp"}})
    with registry.run("unit-export", "ptq-int8") as ref:
        pkg = write_package(tmp_path / "package", source.model_path, {**source.manifest, "variant": "ptq-int8",
                                                                       "format": "tflite"})
        registry.log_artifact(ref.run_id, pkg, "package")
        registry.log_dict(ref.run_id, cfg.model_dump(mode="json"), "config/pipeline.json")
    return registry.register_version("vib", ref.run_id, {"variant": "ptq-int8", "train_run_id": ref.run_id}, "t")


def test_cli_export_logs_the_bundle_on_the_version(source: ExportSource, tmp_path: Path, tm_home: Path) -> None:
    from tinymlops import registry

    version = _register(source, tmp_path)
    out = tmp_path / "bundle"
    r = runner.invoke(app, ["export", "vib", version, "--target", "nucleo-l4r5zi", "--format", "cmake",
                            "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["mlflow_artifact_path"] == "export/nucleo-l4r5zi/cmake" and doc["ops"] == ["FULLY_CONNECTED",
                                                                                          "SOFTMAX"]
    mv = registry.get_version("vib", version)
    logged = registry.download(mv.run_id, "export/nucleo-l4r5zi/cmake", tmp_path / "dl")
    assert (logged / "export.json").read_bytes() == (out / "export.json").read_bytes()
    assert (logged / "src" / "tm_model.cc").is_file() and (logged / "CMakeLists.txt").is_file()
    assert mv.tags["export.nucleo-l4r5zi.cmake"] == doc["key_id"]
    ok = runner.invoke(app, ["verify-export", str(out)])
    assert ok.exit_code == 0 and "signature OK" in ok.output
    (out / "src" / "tm_model.h").write_text("/* edited */")
    bad = runner.invoke(app, ["verify-export", str(out)])
    assert bad.exit_code == 2 and "tm_model.h: missing or altered since export" in bad.output
    # the example input is a real window of the version's test split, labelled with its class
    example = (out / "examples/main.cc").read_text()
    assert re.search(r"expected (healthy|imbalance|misalignment|bearing_fault)\)", example)


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "nope"], "unknown target 'nope'"),
    (["--target", "raspberry-pi-4"], "application processor"),
    (["--target", "esp32-s3-devkitc-1", "--build"], "no emulator for core xtensa-lx7"),
    (["--target", "nucleo-l4r5zi", "--format", "zip"], "unknown export format"),
])
def test_cli_errors_are_one_line_exit_2(source: ExportSource, tmp_path: Path, tm_home: Path, args: list[str],
                                        message: str) -> None:
    version = _register(source, tmp_path)
    r = runner.invoke(app, ["export", "vib", version, *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_identity_preprocessing_streams_into_the_input_tensor(source: ExportSource, tmp_path: Path,
                                                              tm_home: Path) -> None:
    """An identity block keeps no float copy of the input (VWW's would be 108 KB of RAM); spectral keeps F floats."""
    assert "float features[36];" in (_bundle(source, tmp_path, "c").out_dir / "src/tm_model.cc").read_text()
    spec = fit(PreprocessingSection(features="identity", scale=4.0),
               np.random.default_rng(0).normal(size=(10, 36)).astype(np.float32))
    ident = ExportSource("vib", "2", "ptq-int8", source.model_path,
                         {**source.manifest, "preprocessing": spec.model_dump(mode="json")})
    res, _ = write_bundle(ident, get_target("nucleo-l4r5zi"), "c", tmp_path / "ident", (np.zeros(36), "healthy"))
    cc = (res.out_dir / "src/tm_model.cc").read_text()
    assert "float features[1];" in cc and "tm_pp_run_int8(" in cc
    pp = (res.out_dir / "src/tm_pp_config.c").read_text()
    assert ".kind = TM_PP_STANDARDIZE" in pp and "tm_pp_config_model = {4.000000000e+00f, 36, 1, pp_blocks" in pp
