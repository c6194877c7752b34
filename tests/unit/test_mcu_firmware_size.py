"""The profiler's static firmware-size estimate: measured base + per-op table + model, with stated fallbacks; RAM
as the exported firmware allocates it (arena with the export's margin, resolver slots, pre-processing buffers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tinymlops.profile import firmware_size
from tinymlops.profile.firmware_size_table import TABLE

ENTRY: dict[str, Any] = {"base_flash_bytes": 30_000, "base_ram_bytes": 600, "resolver_ram_bytes_per_op": 40,
                         "op_flash_bytes": {"FULLY_CONNECTED": 20_000, "SOFTMAX": 9_000, "RESHAPE": 500},
                         "op_ram_bytes": {"FULLY_CONNECTED": 0, "SOFTMAX": 4, "RESHAPE": 0},
                         "shared_flash_bytes": [[["FULLY_CONNECTED", "RESHAPE", "SOFTMAX"], 300],
                                                [["FULLY_CONNECTED", "SOFTMAX"], 1_000]],
                         "stack_base_bytes": 580, "op_stack_bytes": {"FULLY_CONNECTED": 260, "SOFTMAX": 8,
                                                                     "RESHAPE": 0}}


@pytest.fixture()
def table(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    fake = {"cortex-m4/cmsis_nn": ENTRY, "cortex-m7/cmsis_nn": {**ENTRY, "base_flash_bytes": 31_000}}
    monkeypatch.setattr("tinymlops.profile.firmware_size_table.TABLE", fake)
    return fake


def test_flash_is_base_plus_each_distinct_op_plus_model(table: dict[str, Any]) -> None:
    est = firmware_size.estimate({"FULLY_CONNECTED": 3, "SOFTMAX": 1}, 16_000, "cortex-m7", "tflm-cmsis-nn", 2_000)
    assert est is not None
    # an op used 3 times is linked once; code FC and SOFTMAX share (1,000 + 300 B) is in both sizes, linked once
    assert est.flash_by_part == {"base": 31_000, "ops": 29_000 - 1_300, "model": 16_000}
    assert est.flash_bytes == sum(est.flash_by_part.values())
    # RAM: the arena the export declares (2,000 x 1.25 + 2,048 -> 5 KiB), the base (its identity pre-processing's
    # 8 B swapped for the model's), one more resolver slot, SOFTMAX's 4 B, the stack: measured base + the deepest
    # op (FULLY_CONNECTED) + the margin
    assert est.ram_by_part == {"arena": 5 * 1024, "base": 600 - 8, "resolver": 40, "ops": 4, "preprocessing": 8,
                               "stack": 580 + 260 + firmware_size.STACK_MARGIN_BYTES}
    assert est.ram_bytes == sum(est.ram_by_part.values())
    assert est.table == "cortex-m7/cmsis_nn"
    assert est.notes == ["firmware RAM: pre-processing unknown (a model file without its version's manifest): its "
                         "buffers not counted"]


def test_unknown_op_costs_the_largest_measured_op_and_says_so(table: dict[str, Any]) -> None:
    est = firmware_size.estimate(["RESHAPE", "GATHER_ND"], 1_000, "cortex-m4", "tflm-cmsis-nn", 0)
    assert est is not None and est.flash_bytes == 30_000 + 500 + 20_000 + 1_000   # GATHER_ND shares nothing
    assert any("GATHER_ND" in n and "20,000 B" in n for n in est.notes)


def test_stack_is_the_base_plus_the_deepest_of_the_models_ops(table: dict[str, Any]) -> None:
    def stack(ops: list[str]) -> int:
        est = firmware_size.estimate(ops, 0, "cortex-m4", "tflm-cmsis-nn", 0)
        assert est is not None
        return est.ram_by_part["stack"]

    margin = firmware_size.STACK_MARGIN_BYTES
    assert stack(["RESHAPE"]) == 580 + margin
    assert stack(["RESHAPE", "SOFTMAX"]) == 580 + 8 + margin                  # max over ops, not their sum
    assert stack(["FULLY_CONNECTED", "RESHAPE", "SOFTMAX"]) == 580 + 260 + margin


def test_an_op_without_a_measured_stack_falls_back_to_the_allowance_and_says_so(table: dict[str, Any]) -> None:
    est = firmware_size.estimate(["RESHAPE", "GATHER_ND"], 0, "cortex-m4", "tflm-cmsis-nn", 0)
    assert est is not None and est.ram_by_part["stack"] == firmware_size.STACK_BYTES
    assert any("no measured stack for GATHER_ND" in n and "1,536 B" in n for n in est.notes)
    # a measured figure above the allowance is kept (the allowance is a floor for the unknown op, not a cap)
    table["cortex-m4/cmsis_nn"] = {**ENTRY, "stack_base_bytes": 1_600}
    est = firmware_size.estimate(["RESHAPE", "GATHER_ND"], 0, "cortex-m4", "tflm-cmsis-nn", 0)
    assert est is not None and est.ram_by_part["stack"] == 1_600 + firmware_size.STACK_MARGIN_BYTES
    # a table without stack figures: the allowance
    table["cortex-m4/cmsis_nn"] = {k: v for k, v in ENTRY.items() if "stack" not in k}
    est = firmware_size.estimate(["RESHAPE"], 0, "cortex-m4", "tflm-cmsis-nn", 0)
    assert est is not None and est.ram_by_part["stack"] == firmware_size.STACK_BYTES
    assert any("no measured stack for any op" in n for n in est.notes)


def test_a_core_without_a_table_falls_back_to_the_m4_and_names_it(table: dict[str, Any]) -> None:
    est = firmware_size.estimate(["SOFTMAX"], 0, "cortex-m55", "tflm-reference", 0)
    assert est is not None and est.table == "cortex-m4/cmsis_nn"   # no reference table at all: other kernels
    assert est.notes[0] == "firmware size: no table for cortex-m55/reference; used cortex-m4/cmsis_nn"


def test_non_tflm_runtimes_keep_their_fixed_size(table: dict[str, Any]) -> None:
    assert firmware_size.estimate(["SOFTMAX"], 0, "cortex-m7", "x-cube-ai", 0) is None


def test_the_shipped_table_was_measured_for_the_m4_with_the_mlperf_ops() -> None:
    e = TABLE["cortex-m4/cmsis_nn"]
    for op in ("FULLY_CONNECTED", "SOFTMAX", "CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "RESHAPE", "ADD"):
        assert 0 < e["op_flash_bytes"][op] < 60_000, op
    assert 20_000 < e["base_flash_bytes"] < 60_000 and "rounding" in e["library"]
    # the stack measured per op under QEMU: a convolution's kernel goes deeper than a fully connected one's
    assert 300 < e["stack_base_bytes"] < 1_500
    assert 0 <= e["op_stack_bytes"]["FULLY_CONNECTED"] < e["op_stack_bytes"]["CONV_2D"] < 1_500


def test_arena_is_what_the_export_declares() -> None:
    from tinymlops.export.bundle import arena_with_margin

    for host in (0, 1_044, 15_828, 100_644):
        est = firmware_size.estimate(["FULLY_CONNECTED"], 0, "cortex-m4", "tflm-cmsis-nn", host)
        assert est is not None and est.ram_by_part["arena"] == arena_with_margin(host)


def _spectral_spec() -> dict[str, Any]:
    import numpy as np

    from tinymlops.config import PreprocessingSection
    from tinymlops.preprocessing import fit

    x = np.random.default_rng(0).normal(size=(8, 256, 3)).astype(np.float32)
    return fit(PreprocessingSection(features="spectral", bands=8), x).model_dump(mode="json")


def test_preprocessing_buffers_are_sized_as_the_exported_c_declares_them(table: dict[str, Any]) -> None:
    """The estimate's pre-processing RAM equals the feature + work arrays the bundle's tm_model.cc declares."""
    import re

    import numpy as np

    from tinymlops.export.bundle import ExportSource, render_sources
    from tinymlops.export.model_info import ModelInfo, TensorSpec
    from tinymlops.profile.targets import get_target

    spec = _spectral_spec()
    n_features = len(spec["feature_names"])
    est = firmware_size.estimate(["FULLY_CONNECTED"], 0, "cortex-m4", "tflm-cmsis-nn", 1_000, spec)
    assert est is not None and est.notes == []
    src = ExportSource("m", "1", "int8", Path(__file__), {"preprocessing": spec, "class_names": ["a", "b"]})
    info = ModelInfo(("FULLY_CONNECTED",), TensorSpec((1, n_features), "int8", 0.1, 0),
                     TensorSpec((1, 2), "int8", 1 / 256, -128), 16)
    cc = render_sources(src, get_target("nucleo-l4r5zi"), info, 1024, 1000, np.zeros(256 * 3, np.float32),
                        "a")["tm_model.cc"]
    floats = sum(int(n) for n in re.findall(r"^float (?:features|pp_work)\[(\d+)\];", cc, re.M))
    assert est.ram_by_part["preprocessing"] == 4 * floats
    # the demo's chain: 256 x 3 spectral (FFT work buffers) + standardize in place: kilobytes, not the probe's 8 B
    assert est.ram_by_part["preprocessing"] > 2_000


def test_preprocessing_without_c_is_named_not_counted(table: dict[str, Any], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from tinymlops.config import PreprocessingSection
    from tinymlops.preprocessing import fit

    (tmp_path / "pp_fs_blocks.py").write_text("def double(X):\n    return 2 * X\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = fit(PreprocessingSection(blocks=["pp_fs_blocks:double"]), np.ones((2, 3))).model_dump(mode="json")
    est = firmware_size.estimate(["SOFTMAX"], 0, "cortex-m4", "tflm-cmsis-nn", 0, spec)
    assert est is not None and est.ram_by_part["preprocessing"] == 8
    assert any("pre-processing buffers not counted" in n and "pp_fs_blocks:double" in n for n in est.notes)


def test_profiler_estimate_for_an_mcu_target(table: dict[str, Any]) -> None:
    from types import SimpleNamespace

    from tinymlops.profile.profiler import StaticAnalysis, _firmware_size
    from tinymlops.profile.targets import TargetConfig

    st = StaticAnalysis.__new__(StaticAnalysis)
    st.format, st.op_types, st.model_bytes = "tflite", {"FULLY_CONNECTED": 2, "SOFTMAX": 1}, 5_000
    st.graph = SimpleNamespace(tensors=[None] * 10, ops=[None] * 3, inputs=[0], outputs=[9])
    board = {"name": "b", "core": "cortex-m4", "clock_mhz": 80, "sram_bytes": 1 << 18, "flash_bytes": 1 << 20,
             "runtime": "tflm-cmsis-nn", "active_power_mw": 10}
    fw = _firmware_size(st, TargetConfig(**board), 1_000)
    assert fw is not None and fw.flash_bytes == 30_000 + 29_000 - 1_300 + 5_000
    assert fw.ram_bytes == 4 * 1024 + 600 + 40 + 4 + 580 + 260 + firmware_size.STACK_MARGIN_BYTES
    assert _firmware_size(st, TargetConfig(**{**board, "core": "cortex-a72", "runtime": "tflite"}), 0) is None


def test_profiler_reads_the_preprocessing_from_the_package_manifest(tmp_path: Path) -> None:
    import json

    from tinymlops.profile.profiler import _package_preprocessing

    spec = _spectral_spec()
    model = tmp_path / "model.tflite"
    model.write_bytes(b"x")
    assert _package_preprocessing(model) is None                       # a bare model file
    (tmp_path / "manifest.json").write_text(json.dumps({"file": "model.tflite", "preprocessing": spec}))
    assert _package_preprocessing(model) == spec
    (tmp_path / "manifest.json").write_text(json.dumps({"file": "other.tflite", "preprocessing": spec}))
    assert _package_preprocessing(model) is None                       # another model's manifest
    (tmp_path / "manifest.json").write_text("{not json")
    assert _package_preprocessing(model) is None


def test_measure_stack_takes_each_ops_deepest_probe_over_the_shallowest(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table's stack fields from probe runs (QEMU replaced by fixed high-water marks; no TensorFlow here)."""
    from types import SimpleNamespace

    from tinymlops.errors import TinyMLOpsError
    from tinymlops.export import sizes

    probes = {"relu": (["RELU"], 500), "conv_a": (["CONV_2D"], 1_300), "conv_b": (["CONV_2D"], 1_340),
              "fc": (["FULLY_CONNECTED"], 840), "broken": (["X"], 0)}

    def figures(path: Path, target: Any, tflm_dir: str | None) -> dict[str, int]:
        if path.stem == "broken":
            raise TinyMLOpsError("cannot run this probe")
        return {"stack_high_water_bytes": probes[path.stem][1]}

    monkeypatch.setattr(sizes, "_stack_probe_models", lambda: {name: name for name in probes})
    monkeypatch.setattr("tinymlops.profile.reference_models.to_tflite_int8", lambda model: model.encode())
    monkeypatch.setattr("tinymlops.profile.graph.load_graph", lambda p: SimpleNamespace(
        ops=[SimpleNamespace(op_type=op) for op in probes[Path(p).stem][0]]))
    monkeypatch.setattr("tinymlops.export.emulated.firmware_figures", figures)
    said: list[str] = []
    out = sizes.measure_stack("cortex-m4", "cmsis_nn", say=said.append)
    assert out["stack_base_bytes"] == 500
    assert out["op_stack_bytes"] == {"CONV_2D": 840, "FULLY_CONNECTED": 340, "RELU": 0}
    assert any("broken" in s and "skipped" in s and "cannot run this probe" in s for s in said)
    monkeypatch.setattr(sizes, "_stack_probe_models", lambda: {"broken": "broken"})
    with pytest.raises(TinyMLOpsError, match="no stack probe ran on cortex-m4"):
        sizes.measure_stack("cortex-m4", "cmsis_nn", say=said.append)
