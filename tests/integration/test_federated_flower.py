"""Federated learning end to end: Flower server + gRPC clients, real MLflow store, compress, and the CLI with DP.

A tiny vibration MLP is trained with FedProx across 4 devices in 4 cohorts (gain/noise/speed shifts, skewed
class mixes); the global model must beat chance (0.25) clearly, be registered as a float32 version whose tags
and run carry the federated lineage, and be accepted by the compress stage as a parent. The CLI then runs a
FedAvgM run with DP (epsilon target 8) and registers a version whose lineage reports noise, clip and epsilon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CONFIG = """\
kind: pipeline
project: vibration
mlflow: {experiment: fed-test, registered_model: fed-vibration}
dataset:
  name: vibration
  seed: 7
  vibration: {windows_per_class: 60, window_samples: 256}
preprocessing: {features: spectral, bands: 8, normalize: standard}
model: {arch: mlp, params: {hidden: [32], dropout: 0.0}}
train: {epochs: 5, batch_size: 32, learning_rate: 0.005, seed: 7}
compress:
  variants:
    - technique: ptq-int8
"""


def test_federated_run_registers_a_version_with_lineage(tm_home: Path, tmp_path: Path) -> None:
    from tinymlops import registry
    from tinymlops.compress.stage import run_compress
    from tinymlops.learn.federated import run_federated

    cfg = tmp_path / "fed.yaml"
    cfg.write_text(CONFIG)
    lines: list[str] = []
    res = run_federated(cfg, {"clients": 4, "rounds": 4, "local_epochs": 5, "samples_per_client": 60,
                              "strategy": "fedprox", "proximal_mu": 0.05}, progress=lines.append)
    assert res.metrics["accuracy"] > 0.6 and res.metrics["fleet_accuracy"] > 0.55  # chance is 0.25
    assert [r["round"] for r in res.rounds] == [0, 1, 2, 3, 4]
    assert res.rounds[-1]["fleet_accuracy"] > res.rounds[0]["fleet_accuracy"] + 0.2  # the rounds learned
    assert any(line.startswith("round 4/4: global accuracy") for line in lines)

    mv = registry.get_version("fed-vibration", res.version)
    t = mv.tags
    assert (t["variant"], t["technique"], t["train_run_id"]) == ("float32", "federated", res.run_id)
    assert (t["federated.strategy"], t["federated.rounds"], t["federated.clients"]) == ("fedprox", "4", "4")
    assert (t["federated.clients_per_round"], t["federated.samples"]) == ("4", "240")
    assert (t["federated.proximal_mu"], t["federated.dp"]) == ("0.05", "False")
    run = registry.get_run(res.run_id)
    assert run.metrics["round_fleet_accuracy"] == pytest.approx(res.rounds[-1]["fleet_accuracy"])
    history = registry.client().get_metric_history(res.run_id, "round_fleet_accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]
    clients = json.loads((registry.download(res.run_id, "federated/clients.json", tmp_path / "a")).read_text())
    assert [c["cohort"] for c in clients["clients"]] == ["line-a", "line-b", "line-c", "line-d"]
    assert len({tuple(c["class_counts"]) for c in clients["clients"]}) == 4  # non-IID

    out = run_compress(cfg, res.version)  # the federated model is a parent like a centrally trained one
    (variant,) = out.to_dict()["variants"]
    assert variant["status"] == "registered" and variant["accuracy"] > 0.55
    assert registry.get_version("fed-vibration", variant["version"]).tags["parent_version"] == res.version


def test_cli_federates_with_differential_privacy(tm_home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "fed.yaml"
    cfg.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env["TINYMLOPS_HOME"] = str(tm_home)
    res = subprocess.run([str(Path(sys.executable).parent / "tinymlops"), "federate", str(cfg), "--rounds", "2",
                          "--clients", "4", "--per-round", "2", "--samples", "30", "--dp-epsilon", "8",
                          "--dp-clip", "0.5", "--strategy", "fedavgm", "--no-prefect", "--register-only", "--json"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    lin = out["lineage"]
    assert lin["dp"] and lin["dp_clip"] == 0.5 and lin["dp_sample_rate"] == 0.5
    assert (lin["strategy"], lin["server_momentum"], lin["proximal_mu"]) == ("fedavgm", 0.9, 0.0)
    assert 7.0 < lin["dp_epsilon"] <= 8.0 and lin["dp_noise_multiplier"] > 0.3
    from tinymlops import registry

    tags = registry.get_version("fed-vibration", out["version"]).tags
    assert float(tags["federated.dp_epsilon"]) == pytest.approx(lin["dp_epsilon"], rel=1e-4)
    assert tags["federated.dp_accountant"] == "dp-accounting RDP"
    assert registry.get_run(out["run_id"]).metrics["dp_epsilon"] == pytest.approx(lin["dp_epsilon"])


def test_a_failing_client_fails_the_run_with_its_error_instead_of_hanging() -> None:
    import numpy as np

    from tinymlops.learn.federated import Federation, federate
    from tinymlops.learn.fedplan import FederatedOptions
    from tinymlops.tf import keras

    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    bad = y[:30].copy()
    bad[3] = 7  # a label the 2-class model cannot have: the device's training step fails
    fed = Federation([(0, "a", X[:30], y[:30]), (1, "a", X[30:60], bad), (2, "a", X[60:], y[60:])],
                     {"test": (X, y)})
    model = keras.Sequential([keras.layers.Input((6,)), keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(RuntimeError, match=r"failed on 1 client\(s\); first: client 1: InvalidArgumentError"):
        federate(model, fed, FederatedOptions(clients=3, rounds=3), 0.01, 16, {}, lambda r, f: None)
