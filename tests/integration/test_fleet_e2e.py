"""End to end: registered MLflow version -> signed package -> service -> real agents (process, TFLM) -> telemetry.

Also the simulator: async cohorts with drift and faults, and process mode.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from _fleet import demo_fleet
from typer.testing import CliRunner

from tinymlops.fleet import agent, packages, store
from tinymlops.sim import demo_model, simulator
from tinymlops.sim.command import product_command
from tinymlops.sim.streams import SyntheticStream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    for f in demo_fleet(tmp_path_factory.mktemp("fleet-e2e"), "e2e"):
        yield {**f, "onnx_version": f["version"]}


def _cli(*args: str) -> Any:
    from cli import app

    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_registered_version_is_packaged_installed_by_an_agent_process_and_reports(env: Any) -> None:
    url, token = env["srv"].url, env["token"]
    info = _cli("package", "e2e", env["onnx_version"], "--target", "host-onnxruntime", "--upload", "--server", url,
                "--token", token, "--out", str(env["root"] / "pkg-out"), "--json")
    assert (Path(info["path"]) / "manifest.sig").is_file()
    manifest = json.loads((Path(info["path"]) / "manifest.json").read_text())
    assert manifest["model_version"] == env["onnx_version"] and manifest["target"] == "host-onnxruntime"
    assert manifest["source"]["run_id"] and manifest["reference"]["features"]
    enrol = _cli("fleet", "enrol-token", "--server", url, "--token", token, "--cohort", "gw", "--json")
    _cli("fleet", "deploy", info["package_id"], "--cohort", "gw", "--server", url, "--token", token, "--json")
    cmd = [*product_command("agent"), "--server", url,
           "--device-id", "gw-1", "--target", "host-onnxruntime",
           "--report-interval", "0.3", "--inference-interval", "0.01", "--max-reports", "3"]
    # the one-time token comes through the environment (or a file), never argv where `ps` shows it
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TINYMLOPS_ENROLMENT_TOKEN": enrol["tokens"][0]})
    assert p.returncode == 0, p.stderr[-3000:]
    devices = _cli("fleet", "devices", "--server", url, "--token", token, "--json")
    dev = next(d for d in devices if d["id"] == "gw-1")
    assert dev["current_package_id"] == info["package_id"] and dev["current_version"] == env["onnx_version"]
    events = _cli("fleet", "events", "--server", url, "--token", token, "--device", "gw-1", "--json")
    assert [e["kind"] for e in events] == ["installed"]
    recs = store.telemetry_window(env["st"], "e2e", env["onnx_version"], device_id="gw-1")
    assert len(recs) >= 3 and sum(r.sketch.n_inferences for r in recs) > 0
    merged = _cli("fleet", "telemetry", "e2e", "--version", env["onnx_version"], "--server", url, "--token", token,
                  "--json")
    assert merged["devices"] == 1 and merged["sketch"]["n_inferences"] == sum(r.sketch.n_inferences for r in recs)
    assert merged["sketch"]["energy_uj_total"] > 0  # host-onnxruntime declares active_power_mw


def test_microcontroller_target_runs_the_package_in_tflite_micro(env: Any) -> None:
    version = demo_model.register_demo_model("e2e", fmt="tflite")
    bundle = packages.build_package("e2e", version, "nucleo-l4r5zi")
    with pytest.raises(Exception, match="runs"):
        packages.build_package("e2e", env["onnx_version"], "nucleo-l4r5zi")  # onnx cannot run in TFLM
    op = httpx.Client(base_url=env["srv"].url, headers={"Authorization": f"Bearer {env['token']}"})
    pid = op.post("/v1/packages", json=bundle.upload_json()).json()["id"]
    tok = op.post("/v1/enrolment-tokens", json={"cohort": "mcu"}).json()["tokens"][0]
    op.put("/v1/desired-state", json={"package_id": pid, "cohort": "mcu"}).raise_for_status()
    cfg = agent.AgentConfig(server=env["srv"].url, device_id="mcu-1", target="nucleo-l4r5zi",
                            runtime="tflm-cmsis-nn", state_dir=env["root"] / "mcu-1",
                            trusted_keys=[packages.signing_key().public_key()], enrolment_token=tok,
                            report_interval_s=0.5, inference_interval_s=0.01, duration_s=3.0, energy_mw=40.0)
    a = agent.Agent(cfg, SyntheticStream())
    asyncio.run(a.run())
    assert a.installed is not None and a.installed.package_id == pid and a.inferences > 10
    recs = store.telemetry_window(env["st"], "e2e", version, target="nucleo-l4r5zi")
    assert recs and all(r.package_id == pid for r in recs)
    peak = max(r.sketch.peak_memory_bytes for r in recs)
    assert 0 < peak < 64 * 1024  # the TFLM arena measured by its recording allocator, not a file size
    op.close()


def _tv(a: list[list[int]], b: list[list[int]]) -> float:
    """Mean total-variation distance between two sets of per-feature histograms."""
    out = []
    for x, y in zip(a, b, strict=True):
        p, q = np.asarray(x, float), np.asarray(y, float)
        out.append(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())
    return float(np.mean(out))


def test_simulator_cohorts_with_drift_and_faults(env: Any) -> None:
    url, token = env["srv"].url, env["token"]
    ids = simulator.publish(url, token, "e2e", [env["onnx_version"]], ["host-onnxruntime"],
                            {"sim-normal": "host-onnxruntime", "sim-drift": "host-onnxruntime",
                             "sim-faulty": "host-onnxruntime"})
    cohorts = [
        simulator.CohortSpec(name="sim-normal", devices=2, target="host-onnxruntime"),
        simulator.CohortSpec(name="sim-drift", devices=2, target="host-onnxruntime",
                             drift=simulator.DriftSpec(gain=2.0, offset=0.5, noise_std=0.3)),
        simulator.CohortSpec(name="sim-faulty", devices=2, target="host-onnxruntime",
                             faults=simulator.FaultSpec(crash_after_s=1.2, slow_inference_ms=5.0,
                                                        corrupt_output_rate=0.3),
                             samples_opt_in=True),
    ]
    result = simulator.run_simulation(url, token, cohorts, duration_s=4.0, mode="async", report_interval_s=0.5,
                                      inference_interval_s=0.01, state_root=env["root"] / "sim")
    summary = result.summary()
    assert summary["mode"] == "async" and all(c["installed"] == c["devices"] for c in summary["cohorts"].values())
    assert summary["cohorts"]["sim-faulty"]["restarts"] >= 2 and summary["cohorts"]["sim-normal"]["restarts"] == 0
    st = env["st"]
    ref = json.loads(json.dumps(packages.Bundle.read(next((env["root"] / "sim").glob("sim-normal-0000/packages/*"))
                                                     ).manifest["reference"]))
    ref_counts = [f["counts"] for f in ref["features"]]

    def merged(cohort: str) -> Any:
        from tinymlops.monitor.sketches import merge_all

        return merge_all([r.sketch for r in store.telemetry_window(st, "e2e", cohort=cohort)])

    normal, drift, faulty = merged("sim-normal"), merged("sim-drift"), merged("sim-faulty")
    assert _tv(drift.feature_counts, ref_counts) > 2 * _tv(normal.feature_counts, ref_counts)
    assert faulty.errors > 0 and normal.errors == 0  # corrupted outputs are caught, counted, not sketched
    assert faulty.latency_quantile_ms(0.5) >= 5.0 > normal.latency_quantile_ms(0.5)
    assert any(r.samples for r in store.telemetry_window(st, "e2e", cohort="sim-faulty"))
    assert not any(r.samples for r in store.telemetry_window(st, "e2e", cohort="sim-normal"))
    assert ids["host-onnxruntime"]


def test_simulator_process_mode_runs_real_agent_processes(env: Any) -> None:
    url, token = env["srv"].url, env["token"]
    simulator.publish(url, token, "e2e", [env["onnx_version"]], ["host-onnxruntime"],
                      {"proc": "host-onnxruntime"})
    cohorts = [simulator.CohortSpec(name="proc", devices=2, target="host-onnxruntime",
                                    faults=simulator.FaultSpec(crash_after_s=3.0))]
    result = simulator.run_simulation(url, token, cohorts, duration_s=8.0, mode="processes", report_interval_s=0.5,
                                      inference_interval_s=0.02, state_root=env["root"] / "sim-proc")
    s = result.summary()["cohorts"]["proc"]
    assert result.mode == "processes" and s["installed"] == 2 and s["reports"] >= 2 and s["inferences"] > 0
    assert s["restarts"] >= 1 and s["stopped"] == 0


def test_fleet_simulate_command(env: Any) -> None:
    out = _cli("fleet", "simulate", "--devices", "3", "--model", "e2e", "--target", "host-onnxruntime",
               "--duration", "3", "--report-interval", "0.5", "--inference-interval", "0.02", "--mode", "async",
               "--server", env["srv"].url, "--token", env["token"], "--json")
    c = out["cohorts"]["sim-host-onnxruntime"]
    assert out["mode"] == "async" and c["devices"] == 3 and c["installed"] == 3 and c["reports"] >= 3
    assert out["packages"]["host-onnxruntime"].startswith("e2e-v")
