"""Extraction detection end to end: real agent processes (one probing the model's decision boundaries, two reading
natural sensor windows) report telemetry to a real fleet service; the drift check names the prober.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import numpy as np
import pytest
from _fleet import demo_fleet
from typer.testing import CliRunner

from tinymlops.fleet import store

pytestmark = pytest.mark.integration
MODEL = "it-ip-extraction"
TARGET = "host-onnxruntime"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from demo_fleet(tmp_path_factory.mktemp("ip-extraction"), MODEL)


def _cli(*args: str) -> Any:
    import json

    from cli import app

    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _model(version: str) -> Any:
    """The registered package as the attacker's black box: raw windows in, probabilities out."""
    from tinymlops import registry
    from tinymlops.preprocessing import FittedPreprocessing, transform
    from tinymlops.runtimes import open_runner

    pkg = registry.download_package(MODEL, version)
    manifest = registry.read_manifest(pkg)
    spec = FittedPreprocessing.model_validate(manifest["preprocessing"])
    runner = open_runner(pkg / manifest["file"])
    return lambda raw: runner.predict(transform(spec, np.asarray(raw, dtype=np.float32)))


def test_a_probing_device_is_flagged_in_the_drift_check(fleet: Any) -> None:
    from tinymlops.data.config import VibrationParams
    from tinymlops.ip import attacks
    from tinymlops.monitor.check import run_drift_check
    from tinymlops.sim.command import product_command
    from tinymlops.sim.streams import SyntheticStream

    url, token, root = fleet["srv"].url, fleet["token"], fleet["root"]
    info = _cli("package", MODEL, fleet["version"], "--target", TARGET, "--upload", "--server", url, "--token",
                token, "--out", str(root / "pkg"), "--json")
    enrol = _cli("fleet", "enrol-token", "--server", url, "--token", token, "--cohort", "line", "--count", "5",
                 "--json")
    _cli("fleet", "deploy", info["package_id"], "--cohort", "line", "--server", url, "--token", token, "--json")
    n = 320
    inputs = {}
    streams = {"honest-0": SyntheticStream(seed=100), "honest-1": SyntheticStream(seed=101),
               # honest but drifted (line-b's sensors read 15 % high; an offset): more uncertain answers, no probing
               "honest-gain": SyntheticStream(seed=102, drift=VibrationParams(gain=1.15)),
               "honest-offset": SyntheticStream(seed=103, drift=VibrationParams(offset=0.05))}
    for device, s in streams.items():  # natural sensor windows
        inputs[device] = np.stack([s.read().values for _ in range(n)])  # type: ignore[union-attr]
    own = SyntheticStream(seed=7)  # the attacker's few natural windows, bisected towards the decision boundaries
    seed_windows = np.stack([own.read().values for _ in range(40)])  # type: ignore[union-attr]
    inputs["prober"] = np.stack(list(attacks.boundary_seeking(seed_windows, _model(fleet["version"]), n,
                                                              np.random.default_rng(3))))
    procs = []
    for (device, windows), tok in zip(inputs.items(), enrol["tokens"], strict=True):
        np.save(root / f"{device}.npy", windows.astype(np.float32))
        cmd = [*product_command("agent"), "--server", url, "--device-id", device, "--target", TARGET,
               "--input", str(root / f"{device}.npy"), "--state-dir", str(root / device),
               "--report-interval", "0.5", "--inference-interval", "0.002", "--max-reports", "60"]
        procs.append(subprocess.Popen(cmd, env={**os.environ, "TINYMLOPS_ENROLMENT_TOKEN": tok},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
    recs = store.telemetry_window(fleet["st"], MODEL, fleet["version"])
    assert {r.device_id for r in recs} == set(inputs)
    last = {r.device_id: r.sketch.extraction for r in recs if r.sketch.extraction is not None}
    assert all(f.queries == n for f in last.values())  # the statistic spans the device's windows
    assert last["honest-gain"].low_margin_fraction > 2 * last["honest-0"].low_margin_fraction, last
    cfg = root / "drift.yaml"
    cfg.write_text("kind: drift\nwindow: 1h\nexperiment: it-ip-extraction-checks\nthresholds: {}\n")
    result = run_drift_check(MODEL, cfg, version=fleet["version"], store_url=fleet["url"], log=False)
    out = result.to_dict()
    assert out["level"] == "suspected-extraction", out
    group = next(g for g in out["groups"] if g["level"] == "suspected-extraction")
    assert group["reasons"][0].startswith("device prober:") and "low-margin" in group["reasons"][0]
    assert not any("honest" in r for r in group["reasons"])
    assert group["summary"]["devices_suspected_extraction"] == 1
