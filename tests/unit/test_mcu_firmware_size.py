"""The profiler's static firmware-size estimate: measured base + per-op table + model, with stated fallbacks."""

from __future__ import annotations

from typing import Any

import pytest

from tinymlops.profile import firmware_size
from tinymlops.profile.firmware_size_table import TABLE

ENTRY: dict[str, Any] = {"base_flash_bytes": 30_000, "base_ram_bytes": 600,
                         "op_flash_bytes": {"FULLY_CONNECTED": 20_000, "SOFTMAX": 9_000, "RESHAPE": 500},
                         "op_ram_bytes": {"FULLY_CONNECTED": 0, "SOFTMAX": 4, "RESHAPE": 0},
                         "shared_flash_bytes": [[["FULLY_CONNECTED", "RESHAPE", "SOFTMAX"], 300],
                                                [["FULLY_CONNECTED", "SOFTMAX"], 1_000]]}


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
    assert est.ram_bytes == 2_000 + 600 + 4 + firmware_size.STACK_BYTES
    assert est.table == "cortex-m7/cmsis_nn" and est.notes == []


def test_unknown_op_costs_the_largest_measured_op_and_says_so(table: dict[str, Any]) -> None:
    est = firmware_size.estimate(["RESHAPE", "GATHER_ND"], 1_000, "cortex-m4", "tflm-cmsis-nn", 0)
    assert est is not None and est.flash_bytes == 30_000 + 500 + 20_000 + 1_000   # GATHER_ND shares nothing
    assert any("GATHER_ND" in n and "20,000 B" in n for n in est.notes)


def test_a_core_without_a_table_falls_back_to_the_m4_and_names_it(table: dict[str, Any]) -> None:
    est = firmware_size.estimate(["SOFTMAX"], 0, "cortex-m55", "tflm-reference", 0)
    assert est is not None and est.table == "cortex-m4/cmsis_nn"   # no reference table at all: other kernels
    assert est.notes == ["firmware size: no table for cortex-m55/reference; used cortex-m4/cmsis_nn"]


def test_non_tflm_runtimes_keep_their_fixed_size(table: dict[str, Any]) -> None:
    assert firmware_size.estimate(["SOFTMAX"], 0, "cortex-m7", "x-cube-ai", 0) is None


def test_the_shipped_table_was_measured_for_the_m4_with_the_mlperf_ops() -> None:
    e = TABLE["cortex-m4/cmsis_nn"]
    for op in ("FULLY_CONNECTED", "SOFTMAX", "CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "RESHAPE", "ADD"):
        assert 0 < e["op_flash_bytes"][op] < 60_000, op
    assert 20_000 < e["base_flash_bytes"] < 60_000 and "rounding" in e["library"]


def test_device_arena_drops_the_64_bit_struct_bytes() -> None:
    # 10 tensors x (24 - 12) + 3 ops x (64 - 32) + 2 graph inputs/outputs x ((64 - 32) + (24 - 12))
    assert firmware_size.device_arena_bytes(1_000, 10, 3, 2) == 1_000 - 120 - 96 - 88
    assert firmware_size.device_arena_bytes(100, 10, 3, 2) == 0


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
    assert fw.ram_bytes == (1_000 - 120 - 96 - 88) + 600 + 4 + firmware_size.STACK_BYTES
    assert _firmware_size(st, TargetConfig(**{**board, "core": "cortex-a72", "runtime": "tflite"}), 0) is None
