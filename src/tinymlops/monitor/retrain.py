"""Closing the loop: a ``retrain`` verdict starts a retrain, at most once per cooldown per model.

What it starts is the drift config's ``retrain.strategy`` (:func:`plan`): ``central`` runs the pipeline, or with
``retrain.field_data.enabled`` the field-data retrain (:mod:`tinymlops.monitor.field_retrain`: configured dataset +
consented field samples, compared with the old version on a held-out field test split); ``federated`` starts
``flows.federated:federated_flow`` (Flower; options from ``retrain.federated``); ``personalise`` switches the
drifted cohorts' on-device personalisation on (:mod:`tinymlops.fleet.personal_switch`).
The decision is pure (:func:`decide_retrain`); the state lives in a JSON file under the project home and is
updated under an exclusive file lock, so a storm of concurrent verdicts (many cohorts, overlapping scheduled
runs, several processes) starts exactly one retrain.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tinymlops import settings
from tinymlops.errors import ConfigError
from tinymlops.monitor.config import RetrainSection


@dataclass(frozen=True)
class RetrainDecision:
    """Whether to start a retrain now, and why."""

    start: bool
    reason: str
    now_unix_s: float
    last_trigger_unix_s: float | None
    next_allowed_unix_s: float


def decide_retrain(level: str, now_unix_s: float, last_trigger_unix_s: float | None, cooldown_s: float,
                   enabled: bool = True) -> RetrainDecision:
    """Decide whether a verdict starts a retrain, given the last trigger time and the cooldown."""
    last = last_trigger_unix_s
    next_allowed = (last + cooldown_s) if last is not None else now_unix_s
    if level != "retrain":
        return RetrainDecision(False, f"verdict is {level}", now_unix_s, last, next_allowed)
    if not enabled:
        return RetrainDecision(False, "retrain trigger disabled in the drift config", now_unix_s, last, next_allowed)
    if last is not None and now_unix_s < next_allowed:
        wait = next_allowed - now_unix_s
        return RetrainDecision(False, f"cooldown: last retrain started {now_unix_s - last:.0f} s ago, "
                                      f"next allowed in {wait:.0f} s", now_unix_s, last, next_allowed)
    return RetrainDecision(True, "retrain verdict outside the cooldown", now_unix_s, last, now_unix_s + cooldown_s)


@dataclass(frozen=True)
class RetrainPlan:
    """What a retrain verdict starts: a flow (``module:function``) with its parameters, or a deployment."""

    strategy: str
    entrypoint: str
    params: dict[str, Any]
    deployment: str | None = None  # run this Prefect deployment instead when it exists (mode auto/deployment)


def plan(section: RetrainSection, model: str, drift_config: str, store_url: str | None = None,
         cohorts: list[str] | None = None) -> RetrainPlan:
    """Choose what a retrain of ``model`` starts, from the drift config's ``retrain.strategy``.

    ``cohorts``: the cohorts whose verdict was retrain (``personalise`` switches exactly those on).

    Raises:
        ConfigError: a strategy this build cannot run (named with the value).
    """
    if section.strategy == "central":
        if section.field_data.enabled:
            return RetrainPlan("central", "flows.retrain:field_retrain_flow",
                               {"model": model, "drift_config": drift_config, "store_url": store_url})
        return RetrainPlan("central", section.entrypoint, {"config_path": section.pipeline_config},
                           section.deployment)
    if section.strategy == "federated":  # Flower across the devices' data: flows/federated.py, then compress/profile
        return RetrainPlan("federated", "flows.federated:federated_flow",
                           {"config_path": section.pipeline_config, "options": dict(section.federated)})
    if section.strategy == "personalise":  # the cohorts' devices adapt on the device (tinymlops.personalise)
        return RetrainPlan("personalise", "flows.personalise:personalise_flow",
                           {"model": model, "cohorts": sorted(set(cohorts or [])), "store_url": store_url})
    raise ConfigError(f"{drift_config}: retrain.strategy: {section.strategy!r} cannot run in this build "
                      "(expected central, federated or personalise)")


def state_path(model_name: str) -> Path:
    """Return the cooldown state file of a model."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name)
    d = settings.home() / "retrain"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{safe}.json"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any]]:
    """Open the state file under an exclusive lock; yield its content and write it back on exit."""
    with path.open("a+", encoding="utf-8") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            fh.seek(0)
            text = fh.read()
            try:
                state = json.loads(text) if text.strip() else {}
            except json.JSONDecodeError:
                state = {}  # a torn or hand-edited file must not block retraining forever
            yield state
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(state, indent=2))
            fh.flush()
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def claim(model_name: str, level: str, cooldown_s: float, enabled: bool = True, now_unix_s: float | None = None,
          details: dict[str, Any] | None = None) -> RetrainDecision:
    """Atomically decide and, when starting, record the trigger; suppressed verdicts are counted."""
    now = time.time() if now_unix_s is None else now_unix_s
    with _locked(state_path(model_name)) as state:
        decision = decide_retrain(level, now, state.get("last_trigger_unix_s"), cooldown_s, enabled)
        if decision.start:
            state.update({"last_trigger_unix_s": now, "suppressed_since_trigger": 0,
                          "triggers": int(state.get("triggers", 0)) + 1, "last_details": details or {}})
        elif level == "retrain":
            state["suppressed_since_trigger"] = int(state.get("suppressed_since_trigger", 0)) + 1
    return decision


def record_started(model_name: str, run: dict[str, Any]) -> None:
    """Remember what the last trigger started (deployment flow run id, subprocess pid)."""
    with _locked(state_path(model_name)) as state:
        state["last_started"] = run


def read_state(model_name: str) -> dict[str, Any]:
    """Return the persisted cooldown state of a model (empty if it never retrained)."""
    path = state_path(model_name)
    if not path.exists():
        return {}
    with _locked(path) as state:
        return dict(state)


def decision_dict(d: RetrainDecision) -> dict[str, Any]:
    """Return a decision as a JSON-friendly dict."""
    return asdict(d)
