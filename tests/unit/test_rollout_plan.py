"""Rollout plan and config: deterministic growing cohorts, stage sizes, rate limit, control group, bad plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinymlops.config import load
from tinymlops.errors import ConfigError
from tinymlops.fleet.store import DeviceInfo
from tinymlops.rollout import plan
from tinymlops.rollout.config import RolloutConfig, StageConfig

REPO = Path(__file__).resolve().parents[2]


def dev(i: int, target: str = "t", current: str | None = "old", revoked: bool = False) -> DeviceInfo:
    return DeviceInfo(id=f"d{i:03d}", target=target, cohort="c", labels={}, current_package_id=current,
                      current_version=None, previous_package_id=None, previous_version=None,
                      desired_package_id=current, last_seen_unix_s=0.0, enrolled_unix_s=0.0, samples_opt_in=False,
                      feedback_opt_in=False, revoked=revoked)


def test_order_is_deterministic_per_rollout_and_differs_between_rollouts():
    ids = [f"d{i:03d}" for i in range(100)]
    a = plan.device_order("r1", ids)
    assert a == plan.device_order("r1", list(reversed(ids)))
    assert sorted(a) == sorted(ids)
    assert a[:10] != plan.device_order("r2", ids)[:10]
    assert a != sorted(ids)  # not enrolment order


@pytest.mark.parametrize(("n", "pct", "min_devices", "size"), [
    (100, 5, 1, 5), (20, 5, 1, 1), (20, 5, 2, 2), (3, 5, 5, 3), (10, 25, 1, 3), (7, 100, 1, 7), (0, 50, 1, 0),
    (40, 50, 1, 20),
])
def test_stage_size(n: int, pct: float, min_devices: int, size: int):
    assert plan.stage_size(n, StageConfig(percent=pct, min_devices=min_devices)) == size


def test_cohorts_only_grow_across_stages():
    ids = [f"d{i:03d}" for i in range(200)]
    order = plan.device_order("r", ids)
    assigned: set[str] = set()
    previous: set[str] = set()
    for pct in (5, 25, 50, 100):
        size = plan.stage_size(len(ids), StageConfig(percent=pct))
        assigned |= set(plan.next_devices(order, assigned, size, allowance=10_000))
        assert len(assigned) == size and previous <= assigned
        previous = set(assigned)
    assert assigned == set(ids)


def test_rate_limit_releases_devices_over_time():
    stage = StageConfig(percent=100, rate_devices_per_min=60)
    assert plan.rate_allowance(stage, 100.0, 100.0) == 1
    assert plan.rate_allowance(stage, 100.0, 110.0) == 11
    assert plan.rate_allowance(stage, 100.0, 50.0) == 1  # clock skew never gives negative room
    order = [f"d{i}" for i in range(50)]
    assert len(plan.next_devices(order, set(), 50, allowance=11)) == 11
    assert plan.next_devices(order, set(order[:11]), 50, allowance=0) == []


def test_eligible_skips_other_targets_revoked_and_devices_without_a_version():
    devices = [dev(0), dev(1, target="other"), dev(2, revoked=True), dev(3, current=None), dev(4)]
    assert [d.id for d in plan.eligible(devices, "t")] == ["d000", "d004"]


def test_control_group_is_everything_not_assigned_and_not_on_the_candidate():
    devices = [dev(0), dev(1), dev(2, current="cand"), dev(3, current=None)]
    assert plan.control_group(devices, {"d000"}, "cand") == ["d001"]


def test_repo_rollout_yaml_loads_with_four_growing_stages():
    cfg = load(REPO / "configs/rollout.yaml")
    assert isinstance(cfg, RolloutConfig)
    assert [s.percent for s in cfg.stages] == [5, 25, 50, 100]
    assert cfg.on_timeout in ("fail", "stop")


@pytest.mark.parametrize(("yaml_text", "needle"), [
    ("stages: [{percent: 50}, {percent: 20}, {percent: 100}]\ngates: {}\n", "increase"),
    ("stages: [{percent: 50}]\ngates: {}\n", "100 percent"),
    ("stages: [{percent: 100, bake_s: 100, deadline_s: 50}]\ngates: {}\n", "bake_s"),
    ("stages: [{percent: 100}]\ngates: {max_error_rate: 2}\n", "gates.max_error_rate"),
    ("stages: [{percent: 100}]\ngates: {}\nbake: 3\n", "unknown key"),
    ("stages: []\ngates: {}\n", "stages"),
])
def test_bad_plans_name_the_key(tmp_path: Path, yaml_text: str, needle: str):
    p = tmp_path / "r.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as exc:
        load(p)
    assert needle in str(exc.value) and str(p) in str(exc.value)
