"""Stage cohorts: which devices of a target receive the candidate at each stage, how fast, and the control group.

Devices are ordered by a hash of (rollout id, device id): the order is deterministic (a restarted controller picks
the same devices), unrelated to enrolment order or device names, and different for every rollout (the same devices
are not always the guinea pigs). Stage ``i`` reaches the first ``size_i`` devices of that order, so cohorts only
grow; every device not yet assigned and still on its old version is the control group.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

from tinymlops.fleet.store import DeviceInfo
from tinymlops.rollout.config import StageConfig


def device_order(rollout_id: str, device_ids: Iterable[str]) -> list[str]:
    """Return device ids in the rollout's deterministic pseudo-random order."""
    return sorted(set(device_ids), key=lambda d: hashlib.sha256(f"{rollout_id}\x00{d}".encode()).digest())


def stage_size(n_devices: int, stage: StageConfig) -> int:
    """Return how many devices a stage reaches: its percent of the fleet, at least its minimum, at most all."""
    if n_devices <= 0:
        return 0
    want = math.ceil(n_devices * stage.percent / 100.0 - 1e-9)
    return min(n_devices, max(want, stage.min_devices))


def rate_allowance(stage: StageConfig, stage_started_unix_s: float, now_unix_s: float) -> int:
    """Return how many devices the stage may have switched by now under its rate limit (one immediately)."""
    elapsed = max(0.0, now_unix_s - stage_started_unix_s)
    return 1 + math.floor(stage.rate_devices_per_min * elapsed / 60.0 + 1e-9)


def eligible(devices: Iterable[DeviceInfo], target: str) -> list[DeviceInfo]:
    """Return the devices a rollout on ``target`` may touch: that target, not revoked, with a version to go back to."""
    return [d for d in devices if d.target == target and not d.revoked and d.current_package_id is not None]


def next_devices(order: list[str], assigned: set[str], size: int, allowance: int) -> list[str]:
    """Return the next devices to assign: up to the stage size and the rate allowance, in rollout order."""
    room = min(size - len(assigned), allowance)
    if room <= 0:
        return []
    return [d for d in order if d not in assigned][:room]


def control_group(devices: Iterable[DeviceInfo], assigned: set[str], candidate_package_id: str) -> list[str]:
    """Return the devices of the target neither assigned nor running the candidate (they keep the old version)."""
    return [d.id for d in devices if d.id not in assigned and d.current_package_id != candidate_package_id
            and d.current_package_id is not None]
