"""Agent input sources (files, stdin-like streams, sockets) and the simulator's runtime wrappers (faults, timing).

The production agent has no simulation code: windows come from an input source, faults and emulated timing from
a runner factory the simulator hands it.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
import random
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tinymlops.errors import UsageError
from tinymlops.fleet import agent as agent_module
from tinymlops.fleet.inputs import InputSource, LineSource, open_input, parse_window
from tinymlops.fleet.install import Installed
from tinymlops.sim.faults import (
    DeviceRuntime,
    EmulatedTarget,
    FaultSpec,
    FaultyRunner,
    InjectedCrash,
    PackageFault,
)
from tinymlops.sim.streams import SyntheticStream


def _drain(src: InputSource, timeout_s: float = 5.0) -> list:
    out, t_end = [], time.monotonic() + timeout_s
    while not src.exhausted and time.monotonic() < t_end:
        w = src.read()
        if w is None:
            time.sleep(0.005)
        else:
            out.append(w)
    assert src.exhausted, "source did not end"
    return out


def test_json_lines_file_yields_windows_labels_and_skips_bad_lines(tmp_path: Path) -> None:
    f = tmp_path / "w.jsonl"
    f.write_text(json.dumps({"values": [[1, 2, 3], [4, 5, 6]], "label": 2}) + "\n"
                 + "not json\n\n" + json.dumps([[0.5, 0.5, 0.5], [1, 1, 1]]) + "\n"
                 + json.dumps({"values": [[1, 2, 3]], "label": "two"}) + "\n")
    src = open_input(str(f))
    ws = _drain(src)
    assert [w.label for w in ws] == [2, None] and ws[0].values.shape == (2, 3)
    assert ws[0].values.dtype == np.float32 and isinstance(src, LineSource) and src.bad_lines == 2
    src.close()


def test_npy_file_is_one_window_or_a_stack(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.ones((8, 3)))
    np.save(tmp_path / "many.npy", np.zeros((5, 8, 3)))
    assert len(_drain(open_input(str(tmp_path / "one.npy")))) == 1
    many = _drain(open_input(str(tmp_path / "many.npy")))
    assert len(many) == 5 and many[0].values.shape == (8, 3) and many[0].label is None


def test_bad_input_specs_are_one_line_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="nope.jsonl: no such file"):
        open_input(str(tmp_path / "nope.jsonl"))
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="bad.npy: not a readable"):
        open_input(str(tmp_path / "bad.npy"))
    with pytest.raises(UsageError, match="cannot connect"):
        open_input(f"unix:{tmp_path / 'none.sock'}")
    with pytest.raises(UsageError, match="tcp:HOST:PORT"):
        open_input("tcp:nohost")
    with pytest.raises(ValueError, match="values"):
        parse_window('{"label": 1}')


def test_tcp_source_reads_what_a_sensor_process_writes() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def sensor() -> None:
        conn, _ = srv.accept()
        with conn:
            for i in range(3):
                conn.sendall((json.dumps({"values": [[i, i, i]], "label": i}) + "\n").encode())

    t = threading.Thread(target=sensor, daemon=True)
    t.start()
    src = open_input(f"tcp:127.0.0.1:{port}")
    assert [w.label for w in _drain(src)] == [0, 1, 2]
    src.close()
    srv.close()


def test_agent_has_no_simulation_code_paths() -> None:
    fields = {f.name for f in dataclasses.fields(agent_module.AgentConfig)}
    assert not fields & {"faults", "stream", "stream_seed", "drift", "drift_after_s", "emulate_target_timing"}
    assert not hasattr(agent_module, "Faults") and not hasattr(agent_module, "AgentCrash")
    names = set()
    for node in ast.walk(ast.parse(Path(agent_module.__file__).read_text())):
        if isinstance(node, ast.Name | ast.arg | ast.FunctionDef | ast.Attribute):
            names.add(getattr(node, "id", None) or getattr(node, "arg", None) or getattr(node, "name", None)
                      or getattr(node, "attr", ""))
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    assert not [n for n in names if any(w in n.lower() for w in ("fault", "crash", "drift", "vibration",
                                                                  "emulate", "slow"))]


def test_synthetic_stream_is_an_input_source() -> None:
    assert isinstance(SyntheticStream(), InputSource)


class _Runner:
    arena_bytes = 123

    def __init__(self) -> None:
        self.closed = False

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.array([[0.25, 0.75]])

    def timed_predict(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        return np.array([0.25, 0.75]), 0.01

    def close(self) -> None:
        self.closed = True


def _installed(version: str, target: str = "gw", expected: dict | None = None) -> Installed:
    return Installed("p", Path(), {"model_version": version, "target": target, "expected": expected or {}})


def test_package_faults_apply_only_to_that_version_on_that_target() -> None:
    bad = PackageFault("gw", "2", FaultSpec(slow_inference_ms=30))
    rt = DeviceRuntime(lambda i, r: _Runner(), emulate_timing=False, package_faults=[bad])
    assert isinstance(rt(_installed("2"), "onnxruntime"), FaultyRunner)
    assert isinstance(rt(_installed("1"), "onnxruntime"), _Runner)
    assert isinstance(rt(_installed("2", target="mcu"), "onnxruntime"), _Runner)
    slow = rt(_installed("2"), "onnxruntime")
    t0 = time.monotonic()
    out, latency_ms = asyncio.run(slow.timed_predict(np.zeros(2)))
    assert latency_ms >= 30 and time.monotonic() - t0 >= 0.03 and slow.arena_bytes == 123
    slow.close()
    assert slow.inner.closed and rt.shared is False


def test_corrupt_outputs_and_crash_after_the_delay() -> None:
    corrupt = FaultyRunner(_Runner(), FaultSpec(corrupt_output_rate=1.0), random.Random(0), time.monotonic())
    out, _ = asyncio.run(corrupt.timed_predict(np.zeros(2)))
    assert not np.all(np.isfinite(out)) or out.max() > 1e3
    crash = FaultyRunner(_Runner(), FaultSpec(crash_after_s=0.05), random.Random(0), time.monotonic())
    asyncio.run(crash.timed_predict(np.zeros(2)))  # still up
    time.sleep(0.06)
    with pytest.raises(InjectedCrash):
        asyncio.run(crash.timed_predict(np.zeros(2)))
    assert not issubclass(InjectedCrash, Exception)  # the agent's error handling cannot swallow a crash


def test_emulated_target_reports_the_profiled_figures() -> None:
    r = EmulatedTarget(_Runner(), {"expected": {"latency_ms": 40.0, "peak_ram_bytes": 5000}}, random.Random(1))
    lat = [r.timed_predict(np.zeros(2))[1] for _ in range(50)]
    assert min(lat) > 35 and max(lat) < 46 and r.arena_bytes == 5000
