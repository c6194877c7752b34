"""Federated learning, pure parts: options, non-IID devices, DP accounting, CLI errors, lazy imports (no TF)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinymlops.data.config import VibrationParams
from tinymlops.errors import ConfigError
from tinymlops.learn.fedplan import (
    FederatedOptions,
    class_mixes,
    cohort_of,
    dp_epsilon,
    dp_noise_for_epsilon,
    parse_options,
    partition_labels,
    vibration_clients,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("values", "needle"), [
    ({"clients": 4, "clients_per_round": 5}, "clients_per_round (5) exceeds clients (4)"),
    ({"dp_epsilon": 8, "dp_noise_multiplier": 1.0}, "not both"),
    ({"strategy": "fedsgd"}, "federated strategy"),
    ({"rounds": 0}, "federated rounds"),
    ({"clients": 1}, "federated clients"),
    ({"dp_epsilon": -1}, "federated dp_epsilon"),
    ({"cohorts": [{"name": "a"}, {"name": "a"}]}, "cohort names must be unique"),
    ({"cohorts": [{"name": "a", "gian": 2}]}, "federated cohorts.0.gian"),
    ({"roundz": 3}, "federated roundz"),
])
def test_bad_options_are_one_line_config_errors(values: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_options(values)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_defaults_and_derived_figures() -> None:
    o = parse_options({"clients": 10, "clients_per_round": None})
    assert (o.rounds, o.clients, o.per_round, o.strategy, o.dp) == (10, 10, 10, "fedavg", False)
    o = parse_options({"clients": 10, "clients_per_round": 4, "dp_epsilon": 8.0})
    assert o.per_round == 4 and o.dp


def test_partition_covers_every_sample_once_and_skews_labels() -> None:
    y = np.repeat(np.arange(4), 250)
    parts = partition_labels(y, 20, alpha=0.1, seed=3)
    allidx = np.concatenate(parts)
    assert len(parts) == 20 and all(len(p) for p in parts)
    assert sorted(allidx.tolist()) == list(range(len(y)))
    # skewed: with alpha 0.1 most devices are dominated by one class; with alpha 1000 none is
    dominant = np.mean([np.bincount(y[p], minlength=4).max() / len(p) for p in parts])
    iid = partition_labels(y, 20, alpha=1000.0, seed=3)
    dominant_iid = np.mean([np.bincount(y[p], minlength=4).max() / len(p) for p in iid])
    assert dominant > 0.7 > 0.4 > dominant_iid
    assert [p.tolist() for p in partition_labels(y, 20, 0.1, 3)] == [p.tolist() for p in parts]  # seeded


def test_partition_refuses_fewer_samples_than_clients() -> None:
    with pytest.raises(ConfigError, match="5 clients but only 3 training samples"):
        partition_labels(np.array([0, 1, 0]), 5, 0.5, 0)
    parts = partition_labels(np.zeros(5, dtype=int), 5, 0.01, 0)  # extreme skew: still nobody empty
    assert all(len(p) == 1 for p in parts)


def test_vibration_devices_follow_their_cohort_and_own_class_mix() -> None:
    opts = FederatedOptions(clients=8, samples_per_client=40, label_alpha=0.3, seed=5)
    base = VibrationParams(window_samples=128)
    devs = vibration_clients(base, opts)
    assert [d.cohort for d in devs] == [cohort_of(i, opts).name for i in range(8)]
    assert [d.cohort for d in devs[:4]] == ["line-a", "line-b", "line-c", "line-d"]
    assert all(d.X.shape == (40, 128, 3) and len(d.y) == 40 for d in devs)
    mixes = class_mixes(8, 4, 0.3, 5)
    for d, mix in zip(devs, mixes, strict=True):  # each device's labels follow its own mix
        assert np.argmax(d.class_counts) == np.argmax(mix) or max(mix) < 0.5
    assert len({tuple(d.class_counts) for d in devs}) == 8  # non-IID: no two devices alike
    # line-b's sensors read 15 % high: the same seed and mix under gain 1 vs 1.15 differ exactly by the gain
    same = FederatedOptions(clients=2, samples_per_client=40, label_alpha=0.3, seed=5,
                            cohorts=[{"name": "a"}, {"name": "a2"}])  # type: ignore[list-item]
    plain = vibration_clients(base, same)[1]
    assert np.allclose(devs[1].X, plain.X * 1.15, atol=1e-5) and (devs[1].y == plain.y).all()
    assert [d.y.tolist() for d in vibration_clients(base, opts)] == [d.y.tolist() for d in devs]  # seeded


def test_dp_epsilon_behaves_like_the_gaussian_mechanism() -> None:
    rounds, delta = 10, 1e-5
    eps = [dp_epsilon(z, 1.0, rounds, delta) for z in (0.8, 1.5, 3.0)]
    assert eps[0] > eps[1] > eps[2] > 0  # more noise, less privacy loss
    # full participation: RDP of T Gaussians is T*a/(2 z^2); the classic conversion bounds the accountant's epsilon
    z = 1.5
    classic = min(rounds * a / (2 * z * z) + math.log(1 / delta) / (a - 1) for a in range(2, 200))
    assert 0.6 * classic < dp_epsilon(z, 1.0, rounds, delta) <= classic + 1e-9
    assert dp_epsilon(z, 0.25, rounds, delta) < dp_epsilon(z, 1.0, rounds, delta)  # sampling amplifies privacy
    assert dp_epsilon(0.0, 1.0, rounds, delta) == float("inf")


def test_noise_is_calibrated_to_the_target_epsilon() -> None:
    for q, target in ((1.0, 8.0), (0.5, 8.0), (1.0, 2.0)):
        z = dp_noise_for_epsilon(target, q, 10, 1e-5)
        assert dp_epsilon(z, q, 10, 1e-5) <= target + 1e-6
        assert dp_epsilon(z * 0.97, q, 10, 1e-5) > target  # the smallest such noise, not any noise


def test_light_imports_stay_light() -> None:
    code = ("import sys, tinymlops, tinymlops.learn.fedplan, tinymlops.learn.federated, cli.federate; "
            "heavy = [m for m in ('flwr', 'tensorflow', 'dp_accounting', 'ray') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_cli_rejects_bad_options_with_exit_2(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "tinymlops"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env["TINYMLOPS_HOME"] = str(tmp_path / "home")
    for args, needle in ((["--clients", "4", "--per-round", "9"], "clients_per_round (9) exceeds clients (4)"),
                         (["--dp-epsilon", "8", "--dp-noise", "1"], "not both"),
                         (["--strategy", "fedsgd"], "fedsgd")):
        res = subprocess.run([str(exe), "federate", "configs/pipeline.yaml", *args], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 2, res.stderr
        assert needle in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([str(exe), "federate", str(tmp_path / "missing.yaml")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2 and "missing.yaml" in res.stderr


def test_drift_retrain_strategy_federated_starts_the_federated_flow() -> None:
    from pydantic import ValidationError

    from tinymlops.monitor.config import RetrainSection
    from tinymlops.monitor.retrain import plan

    sec = RetrainSection(strategy="federated", federated={"rounds": 3, "strategy": "fedprox", "dp_epsilon": 8})
    p = plan(sec, "m", "configs/drift.yaml")
    assert (p.strategy, p.entrypoint, p.deployment) == ("federated", "flows.federated:federated_flow", None)
    assert p.params == {"config_path": "configs/pipeline.yaml",
                        "options": {"rounds": 3, "strategy": "fedprox", "dp_epsilon": 8}}
    with pytest.raises(ValidationError, match="clients_per_round"):
        RetrainSection(strategy="federated", federated={"clients": 2, "clients_per_round": 3})


def test_other_datasets_are_split_over_devices_with_label_skew(tmp_path: Path) -> None:
    from tinymlops.config import load_pipeline
    from tinymlops.learn.federated import build_federation
    from tinymlops.train import prepare

    cfg_file = tmp_path / "digits.yaml"
    cfg_file.write_text("kind: pipeline\nproject: digits\nmlflow: {experiment: e, registered_model: m}\n"
                        "dataset: {name: digits, seed: 1}\npreprocessing: {features: identity, normalize: standard}\n"
                        "model: {arch: mlp, params: {hidden: [8]}}\n")
    cfg = load_pipeline(cfg_file)
    prep = prepare(cfg)
    fed = build_federation(cfg, prep, FederatedOptions(clients=6, label_alpha=0.2, seed=2))
    assert [c[1] for c in fed.clients] == ["all"] * 6 and set(fed.tests) == {"test"}
    X, y = fed.pooled()
    assert len(y) == len(prep.splits["train"].y) and X.shape[1] == prep.preprocessing.n_features
    assert sorted(y.tolist()) == sorted(prep.splits["train"].y.tolist())  # every training sample on one device
