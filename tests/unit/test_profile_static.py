"""Static analysis, arena planning, cost model, targets, selection and device contract (no TensorFlow)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tinymlops.errors import ConfigError, ModelFormatError, RuntimeCrash
from tinymlops.profile import arena, costmodel
from tinymlops.profile.graph import Graph, OpInfo, TensorInfo, load_graph
from tinymlops.profile.profiler import ProfileCache, profile_model
from tinymlops.profile.select import pareto_front, recommend
from tinymlops.profile.targets import SHIPPED_TARGETS_DIR, TargetConfig, catalogue, resolve_target

TARGETS = SHIPPED_TARGETS_DIR
SINE = Path(next(iter(importlib.util.find_spec("tflite_micro").submodule_search_locations))) / "python" / \
    "tflite_micro" / "sine_float.tflite"


def _onnx_cnn(path: Path, group_dw: bool = True) -> Path:
    """Write a small real ONNX CNN: conv 3x3 (1->8) -> depthwise 3x3 -> pointwise (8->16) -> GAP -> Gemm 10."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in [
        ("w1", (8, 1, 3, 3)), ("b1", (8,)), ("w2", (8, 1, 3, 3)), ("w3", (16, 8, 1, 1)), ("wf", (16, 10)),
        ("bf", (10,))]]
    inits.append(numpy_helper.from_array(np.array([1, 16], np.int64), "shape"))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Conv", ["c2", "w3"], ["c3"]),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"]),
        helper.make_node("Reshape", ["g", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def test_onnx_macs_params_and_kinds(tmp_path: Path) -> None:
    g = load_graph(_onnx_cnn(tmp_path / "m.onnx"))
    kinds = {o.op_type + str(i): o.kind for i, o in enumerate(g.ops)}
    assert list(kinds.values()).count("dwconv") == 1 and list(kinds.values()).count("pwconv") == 1
    # conv 16*16*8*9, dw 16*16*8*9, pw 16*16*16*8, gemm 16*10
    assert g.macs == 16 * 16 * 8 * 9 * 2 + 16 * 16 * 16 * 8 + 160
    # weights + biases, not the reshape's shape tensor
    assert g.params == 8 * 9 + 8 + 8 * 9 + 16 * 8 + 160 + 10


def test_tflite_sine_model_parses_without_tensorflow() -> None:
    g = load_graph(SINE)
    assert g.format == "tflite"
    assert [o.op_type for o in g.ops] == ["FULLY_CONNECTED"] * 3
    assert g.macs == 1 * 16 + 16 * 16 + 16 * 1
    assert g.params == g.macs + 16 + 16 + 1
    code = "import sys; from tinymlops.profile.graph import load_graph; " \
           f"load_graph({str(SINE)!r}); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("content,suffix,match", [
    (b"", ".tflite", "too small"),
    (b"not a model at all, just text", ".tflite", "TFL3"),
    (b"\x08\x01\x12\x04junkjunkjunkjunkjunk", ".onnx", "corrupt|no graph"),
    (b"0123456789abcdefghij", ".bin", "unknown model format"),
])
def test_bad_files_raise_model_format_error(tmp_path: Path, content: bytes, suffix: str, match: str) -> None:
    p = tmp_path / f"bad{suffix}"
    p.write_bytes(content)
    with pytest.raises(ModelFormatError, match=match):
        load_graph(p)


def test_truncated_tflite_is_a_clear_error(tmp_path: Path) -> None:
    data = SINE.read_bytes()
    p = tmp_path / "cut.tflite"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFormatError):
        g = load_graph(p)
        # a cut that leaves the header readable must still not produce a plausible graph silently
        assert g.macs != load_graph(SINE).macs


def _chain_graph(sizes: list[int]) -> Graph:
    """A chain op_i: t_i -> t_{i+1} with int8 tensors of the given sizes."""
    tensors = [TensorInfo(i, f"t{i}", (s,), "int8", False) for i, s in enumerate(sizes)]
    ops = [OpInfo(i, "RELU", "eltwise", [i], [i + 1]) for i in range(len(sizes) - 1)]
    return Graph("tflite", "x", 0, tensors, ops, [0], [len(sizes) - 1])


def test_greedy_plan_reuses_memory_of_dead_tensors() -> None:
    g = _chain_graph([1600, 3200, 800, 3200, 160])
    plan = arena.plan_arena(g)
    # peak is the largest pair alive at the same op, never the sum of all tensors
    assert plan.peak_bytes == max(a + b for a, b in zip([1600, 3200, 800, 3200], [3200, 800, 3200, 160],
                                                        strict=True))
    assert plan.peak_bytes < sum([1600, 3200, 800, 3200, 160])
    # no two tensors alive at the same time overlap in memory
    life = plan.lifetimes
    for a in life:
        for b in life:
            if a < b and not (life[a][1] < life[b][0] or life[b][1] < life[a][0]):
                sa, sb = g.tensors[a].nbytes, g.tensors[b].nbytes
                oa, ob = plan.offsets[a], plan.offsets[b]
                assert oa + sa <= ob or ob + sb <= oa


def test_greedy_plan_aligns_to_16_bytes() -> None:
    g = _chain_graph([10, 10])
    assert arena.plan_arena(g).peak_bytes == 32


def test_cost_model_scales_with_clock_core_and_runtime() -> None:
    g = load_graph(SINE)
    m4 = costmodel.estimate(g, "cortex-m4", "tflm-reference", 120, 40)
    m4_fast = costmodel.estimate(g, "cortex-m4", "tflm-reference", 240, 40)
    assert m4_fast.latency_ms == pytest.approx(m4.latency_ms / 2)
    assert m4.energy_uj == pytest.approx(m4.latency_ms * 40)
    m7 = costmodel.estimate(g, "cortex-m7", "tflm-reference", 120, 40)
    m0 = costmodel.estimate(g, "cortex-m0plus", "tflm-reference", 120, 40)
    assert m7.latency_ms < m4.latency_ms < m0.latency_ms
    # the sine model is float: an M0+ has no FPU
    assert m0.latency_ms > 2 * m4.latency_ms


def test_cost_model_depends_on_layer_kind_not_only_macs() -> None:
    def one_op(kind: str, op_type: str) -> Graph:
        t = [TensorInfo(0, "x", (1, 32, 32, 16), "int8", False), TensorInfo(1, "y", (1, 32, 32, 16), "int8", False)]
        return Graph("tflite", "x", 0, t, [OpInfo(0, op_type, kind, [0], [1], macs=1_000_000, compute_dtype="int8",
                                                  in_channels=16)], [0], [1])

    dw = costmodel.estimate(one_op("dwconv", "DEPTHWISE_CONV_2D"), "cortex-m4", "tflm-reference", 100, 1)
    pw = costmodel.estimate(one_op("pwconv", "CONV_2D"), "cortex-m4", "tflm-reference", 100, 1)
    fc = costmodel.estimate(one_op("fc", "FULLY_CONNECTED"), "cortex-m4", "tflm-reference", 100, 1)
    assert len({round(dw.latency_ms, 6), round(pw.latency_ms, 6), round(fc.latency_ms, 6)}) == 3


def test_fit_runtime_recovers_parameters_from_synthetic_observations() -> None:
    truth = {"conv": 5.0, "conv_shallow": 7.0, "dwconv": 9.0, "pwconv": 4.0, "fc": 3.0,
             "cycles_per_element": 2.0, "op_overhead_cycles": 1500.0}
    rng = np.random.default_rng(1)
    feats = [{"conv": rng.uniform(0, 1e7), "conv_shallow": rng.uniform(0, 1e6), "dwconv": rng.uniform(0, 1e6),
              "pwconv": rng.uniform(0, 5e6), "fc": rng.uniform(0, 1e6), "elem_ops": rng.uniform(0, 1e5),
              "ops": rng.integers(5, 40)} for _ in range(12)]
    obs = [(f, costmodel.predict_cycles(truth, f)) for f in feats]
    prior = {k: v * 1.5 for k, v in truth.items()}
    fit = costmodel.fit_runtime(obs, prior, prior_weight=1e-6)
    for f, o in obs:
        assert costmodel.predict_cycles(fit, f) == pytest.approx(o, rel=0.02)


def test_catalogue_has_real_boards_and_host() -> None:
    cat = catalogue(TARGETS)
    assert len(cat) >= 9
    cores = {t.core for t in cat.values()}
    assert {"cortex-m4", "cortex-m7", "cortex-m0plus", "xtensa-lx7", "cortex-a72"} <= cores
    assert any(t.host for t in cat.values())
    for p in TARGETS.glob("*.yaml"):
        assert "Source" in p.read_text() or "source" in p.read_text() or "host" in p.name


def test_target_yaml_errors_name_file_and_key(tmp_path: Path) -> None:
    p = tmp_path / "board.yaml"
    p.write_text("kind: target\nname: b\ncore: cortex-m4\nclock_mhz: 80\nruntime: tflm-reference\n")
    with pytest.raises(ConfigError, match=r"board\.yaml: sram_bytes: required key is missing"):
        resolve_target(p)
    p.write_text("kind: target\nname: b\ncore: cortex-m4\nclock_mhz: 80\nsram_bytes: 1\nflash_bytes: 1\n"
                 "runtime: tflite\nactive_power_mw: 1\n")
    with pytest.raises(ConfigError, match="application processor"):
        resolve_target(p)
    with pytest.raises(ConfigError, match="unknown target"):
        resolve_target("no-such-board", TARGETS)


def _board(tmp_path: Path, **extra: object) -> TargetConfig:
    base = {"kind": "target", "name": "tiny-board", "core": "cortex-m4", "clock_mhz": 64, "sram_bytes": 4096,
            "flash_bytes": 8192, "runtime": "tflm-reference", "active_power_mw": 10, **extra}
    p = tmp_path / "tiny.yaml"
    import yaml

    p.write_text(yaml.safe_dump(base))
    return resolve_target(p)


def test_fits_false_with_reasons_instead_of_crash(tmp_path: Path) -> None:
    t = _board(tmp_path, sram_bytes=512, flash_bytes=1024, latency_slo_ms=1e-6)
    r = profile_model(SINE, t, measure_tflm=False)
    assert r["fits"] is False
    text = " | ".join(r["reasons"])
    assert "peak RAM" in text and "> SRAM 512 B" in text
    assert "flash" in text and "SLO" in text
    onnx_path = _onnx_cnn(tmp_path / "m.onnx")
    r2 = profile_model(onnx_path, _board(tmp_path, sram_bytes=10**6, flash_bytes=10**7), measure_tflm=False)
    assert r2["fits"] is False and "cannot load .onnx" in r2["reasons"][0]


def test_result_contract_keys(tmp_path: Path) -> None:
    r = profile_model(SINE, _board(tmp_path, sram_bytes=10**6, flash_bytes=10**7), measure_tflm=False)
    for k in ("target", "latency_ms", "energy_uj", "peak_ram_bytes", "flash_bytes", "macs", "params", "fits",
              "reasons"):
        assert k in r
    assert r["fits"] is True and r["reasons"] == []
    assert r["sources"]["latency_ms"] == "estimated" and "measured" not in r
    json.dumps(r)


def _runner_script(tmp_path: Path, body: str) -> str:
    script = tmp_path / "device.py"
    script.write_text(textwrap.dedent(body))
    return f"{sys.executable} {script} {{model}} {{target}}"


def test_device_runner_measurements_replace_estimates(tmp_path: Path) -> None:
    cmd = _runner_script(tmp_path, """
        import json, os, sys
        size = os.path.getsize(sys.argv[1])
        print("flashing", sys.argv[2])
        print(json.dumps({"latency_ms": 1.25, "energy_uj": 9.5, "arena_bytes": 1000, "flash_bytes": size + 1,
                          "device": "sim-" + sys.argv[2]}))
    """)
    t = _board(tmp_path, sram_bytes=10**6, flash_bytes=10**7, runner={"kind": "command", "command": cmd})
    r = profile_model(SINE, t, measure_tflm=False)
    assert r["latency_ms"] == 1.25 and r["energy_uj"] == 9.5
    assert r["flash_bytes"] == SINE.stat().st_size + 1
    assert r["peak_ram_bytes"] == 1000 + t.ram_overhead_bytes
    assert r["measured"]["device"]["label"] == "device-measured"
    assert r["measured"]["device"]["device"] == "sim-tiny-board"
    assert r["sources"]["latency_ms"] == "device-measured"


@pytest.mark.parametrize("body,match", [
    ("import sys; sys.exit(3)", "exit code 3"),
    ("print('no json here')", "not a JSON object"),
    ("import json; print(json.dumps({'energy_uj': 1}))", "latency_ms"),
    ("import json; print(json.dumps({'latency_ms': -1}))", "non-negative"),
])
def test_device_runner_failures_are_reported(tmp_path: Path, body: str, match: str) -> None:
    from tinymlops.profile.device import run_command

    t = _board(tmp_path, runner={"kind": "command", "command": _runner_script(tmp_path, body)})
    with pytest.raises(RuntimeCrash, match=match):
        run_command(t.runner, SINE, t.name)
    r = profile_model(SINE, _board(tmp_path, sram_bytes=10**6, flash_bytes=10**7,
                                   runner={"kind": "command", "command": _runner_script(tmp_path, body)}),
                      measure_tflm=False)
    assert r["measured"]["device"]["error"] and r["sources"]["latency_ms"] == "estimated"


def test_runner_command_needs_model_placeholder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="placeholder"):
        _board(tmp_path, runner={"kind": "command", "command": "echo hi"})


def test_recommend_and_pareto() -> None:
    rows = [
        {"version": "1", "accuracy": 0.95, "latency_ms": 50, "energy_uj": 500, "fits": True},
        {"version": "2", "accuracy": 0.95, "latency_ms": 40, "energy_uj": 300, "fits": True},
        {"version": "3", "accuracy": 0.90, "latency_ms": 10, "energy_uj": 100, "fits": True},
        {"version": "4", "accuracy": 0.99, "latency_ms": 5, "energy_uj": 50, "fits": False},
        {"version": "5", "accuracy": 0.80, "latency_ms": 20, "energy_uj": 90, "fits": True},
    ]
    assert recommend(rows)["version"] == "2"  # tie on accuracy -> lower energy; v4 does not fit
    assert [r["version"] for r in pareto_front(rows)] == ["3", "2"]
    assert recommend([{**r, "fits": False} for r in rows]) is None


def test_cache_analyses_each_artifact_once(tmp_path: Path) -> None:
    cache = ProfileCache()
    t = _board(tmp_path, sram_bytes=10**6, flash_bytes=10**7)
    copy = tmp_path / "same.tflite"
    copy.write_bytes(SINE.read_bytes())
    profile_model(SINE, t, cache, measure_tflm=False)
    profile_model(copy, t, cache, measure_tflm=False)
    assert len(cache.static) == 1


def test_onnx_qdq_int8_counts_weights_once_and_runs_integer_kernels(tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32 = _onnx_cnn(tmp_path / "f.onnx")
    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": rng.standard_normal((1, 1, 16, 16)).astype(np.float32)} for _ in range(4)])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    q = tmp_path / "q.onnx"
    quantize_static(str(fp32), str(q), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    gf, gq = load_graph(fp32), load_graph(q)
    assert gq.macs == gf.macs
    assert gq.params == gf.params  # dequantised weights are not counted a second time
    mac_ops = [o for o in gq.ops if o.macs]
    assert mac_ops and all(o.compute_dtype == "int8" for o in mac_ops)
    assert all(o.kind == "reshape" for o in gq.ops if o.op_type in ("QuantizeLinear", "DequantizeLinear"))
    wb: dict[str, int] = {}
    for o in gq.ops:
        for k, v in o.weight_bytes.items():
            wb[k] = wb.get(k, 0) + v
    assert wb.get("int8", 0) >= 8 * 9 + 8 * 9 + 16 * 8 + 160
