"""Rollout controller: drives one target's staged rollout from state persisted in the fleet DB.

Every :meth:`Controller.tick` is one idempotent step: (re)assert the desired state of every device the rollout
touched, switch the next devices of the stage (rate-limited, in the plan's order), measure the stage window, apply
the pure gate, and act on it — advance, complete (move ``production-<target>``), hold, or roll back every touched
device to the package it ran before. State changes are written before their side effects are repeated, so a
controller killed at any point (SIGKILL included) and restarted resumes exactly where it was; a lease keeps two
controllers from driving the same rollout at once.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from tinymlops import registry
from tinymlops.errors import UsageError
from tinymlops.fleet import store as fleet_store
from tinymlops.fleet.store import DesiredState, Store
from tinymlops.rollout import gates, history, plan
from tinymlops.rollout.config import RolloutConfig
from tinymlops.rollout.figures import (
    PackageInfoCache,
    device_states,
    install_times,
    rejected_devices,
    window_figures,
)
from tinymlops.rollout.publish import expected_latency_ms, publish_package, target_slo_ms
from tinymlops.rollout.state import ACTIVE, TERMINAL, Rollout, RolloutDecision, RolloutDevice

Clock = Callable[[], float]


# --------------------------------------------------------------------------------------------------------------
# the controller
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TickResult:
    """What one step did."""

    rollout_id: str
    status: str
    stage_index: int
    action: str  # assign|hold|advance|complete|rollback|stop|abort|none|not-owner
    decision: gates.GateDecision | None = None
    assigned: int = 0


class Controller:
    """Drive staged rollouts stored in a fleet DB (one instance may drive several, each by its lease)."""

    def __init__(self, st: Store, owner: str | None = None, clock: Clock = time.time,
                 record_mlflow: bool = True, targets_dir: Any = None) -> None:
        self.store = st
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self.record_mlflow = record_mlflow
        self.targets_dir = Path(targets_dir) if targets_dir else None
        self._cache = PackageInfoCache(st)
        self._last_logged: dict[str, tuple[int, str, tuple[str, ...]]] = {}

    # ---- start / abort ------------------------------------------------------------------------------------------

    def start(self, model_name: str, target: str, config: RolloutConfig, version: str | None = None,
              override: bool = False, package_id: str | None = None, client: Any = None) -> str:
        """Create a rollout of a version (default: alias ``candidate-<target>``) and return its id.

        Starting again while the same version is active on that target returns the active rollout (idempotent).

        Raises:
            UsageError: no candidate; another version is rolling out on the target; the version failed before on
                this target and ``override`` is not set.
        """
        if version is None:
            mv = registry.get_alias(model_name, f"candidate-{target}")
            if mv is None:
                raise UsageError(f"{model_name} has no alias candidate-{target}: profile it first "
                                 f"(`tinymlops profile {model_name}`) or pass --version")
            version = str(mv.version)
        version = str(version)
        mv = registry.get_version(model_name, version)
        with self.store.session() as s:
            active = s.scalars(select(Rollout).where(Rollout.model_name == model_name, Rollout.target == target,
                                                     Rollout.status.in_(ACTIVE))).all()
            failed = s.scalars(select(Rollout).where(Rollout.model_name == model_name, Rollout.target == target,
                                                     Rollout.version == version,
                                                     Rollout.status == "rolled_back")).all()
        for r in active:
            if r.version == version:
                return r.id
            raise UsageError(f"rollout {r.id} of {model_name} v{r.version} is still {r.status} on {target}; "
                             f"abort it first (`tinymlops rollout abort {r.id}`)")
        if not plan.eligible(fleet_store.list_devices(self.store, target=target), target):
            raise UsageError(f"the fleet has no device of target {target} running a model (nothing to roll out to, "
                             "nothing to roll back to)")
        if failed and not override:
            raise UsageError(f"{model_name} v{version} was rolled back on {target} before ({failed[-1].id}: "
                             f"{failed[-1].reason[:200]}); pass --override to roll it out again")
        pid = package_id or publish_package(self.store, model_name, version, target, client, self.targets_dir)
        now = self.clock()
        rid = f"{target}-v{version}-{uuid.uuid4().hex[:8]}"
        with self.store.session() as s:
            s.add(Rollout(id=rid, model_name=model_name, version=version, target=target, package_id=pid,
                          variant=mv.tags.get("variant", "")[:64], status="running", stage_index=0,
                          stage_started_unix_s=now, stage_assigned_unix_s=None,
                          config_json=config.model_dump_json(),
                          expected_latency_ms=expected_latency_ms(model_name, version, target),
                          latency_slo_ms=target_slo_ms(target, self.targets_dir), override=override,
                          abort_requested=False, reason="", created_unix_s=now, updated_unix_s=now))
        self._enter_canary(rid)
        return rid

    def _enter_canary(self, rid: str) -> None:
        r = self.get(rid)
        if self.record_mlflow:
            history.move_alias(r.model_name, f"canary-{r.target}", r.version,
                               f"rollout {r.id} started: stage {self.config(r).stages[0].label}")
            registry.set_version_tags(r.model_name, r.version, {f"rollout.{r.target}": "canary"})

    def abort(self, rid: str, reason: str = "aborted by operator") -> TickResult:
        """Stop a rollout and roll back every device it touched (idempotent)."""
        now = self.clock()
        with self.store.session() as s:
            r = s.get(Rollout, rid)
            if r is None:
                raise UsageError(f"no rollout {rid!r}")
            if r.status in TERMINAL:
                return TickResult(rid, r.status, r.stage_index, "none")
            r.abort_requested, r.status, r.updated_unix_s = True, "rolling_back", now
            r.reason = reason
            s.add(RolloutDecision(rollout_id=rid, stage_index=r.stage_index, stage_label=self._label(r),
                                  at_unix_s=now, outcome="abort", action="abort", reasons_json=json.dumps([reason]),
                                  figures_json="{}"))
        return self._rollback(self.get(rid))

    # ---- queries ------------------------------------------------------------------------------------------------

    def get(self, rid: str) -> Rollout:
        with self.store.session() as s:
            r = s.get(Rollout, rid)
        if r is None:
            raise UsageError(f"no rollout {rid!r}")
        return r

    @staticmethod
    def config(r: Rollout) -> RolloutConfig:
        return RolloutConfig.model_validate_json(r.config_json)

    def _label(self, r: Rollout) -> str:
        stages = self.config(r).stages
        return stages[min(r.stage_index, len(stages) - 1)].label

    def assigned(self, rid: str) -> dict[str, RolloutDevice]:
        with self.store.session() as s:
            return {d.device_id: d for d in s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == rid))}

    # ---- lease --------------------------------------------------------------------------------------------------

    def _acquire(self, rid: str, lease_s: float) -> bool:
        now = self.clock()
        with self.store.session() as s:
            res = s.execute(update(Rollout).where(
                Rollout.id == rid,
                (Rollout.lease_owner.is_(None)) | (Rollout.lease_owner == self.owner)
                | (Rollout.lease_expires_unix_s < now)).values(lease_owner=self.owner,
                                                              lease_expires_unix_s=now + lease_s))
        return int(getattr(res, "rowcount", 0)) == 1

    def release(self, rid: str) -> None:
        """Give up the lease on a rollout (a clean exit; a killed controller's lease simply expires)."""
        with self.store.session() as s:
            s.execute(update(Rollout).where(Rollout.id == rid, Rollout.lease_owner == self.owner)
                      .values(lease_owner=None, lease_expires_unix_s=None))

    # ---- the step -----------------------------------------------------------------------------------------------

    def tick(self, rid: str) -> TickResult:
        """Run one idempotent step of a rollout."""
        r = self.get(rid)
        if r.status in TERMINAL:
            return TickResult(rid, r.status, r.stage_index, "none")
        cfg = self.config(r)
        if not self._acquire(rid, cfg.lease_s):
            return TickResult(rid, r.status, r.stage_index, "not-owner")
        if r.status == "rolling_back":
            return self._rollback(r)
        now = self.clock()
        stage = cfg.stages[r.stage_index]
        devices = fleet_store.list_devices(self.store, target=r.target)
        by_id = {d.id: d for d in devices}
        rows = self.assigned(rid)
        assigned = set(rows)
        pool = plan.eligible(devices, r.target)
        universe = {d.id for d in pool} | assigned
        size = plan.stage_size(len(universe), stage)
        order = plan.device_order(rid, {d.id for d in pool})
        in_stage = sum(1 for d in rows.values() if d.stage_index == r.stage_index)
        room = plan.rate_allowance(stage, r.stage_started_unix_s, now) - in_stage
        new = plan.next_devices(order, assigned, size, room)
        if new:
            with self.store.session() as s:
                for did in new:
                    d = by_id[did]
                    prev = d.current_package_id if d.current_package_id != r.package_id else d.previous_package_id
                    s.merge(RolloutDevice(rollout_id=rid, device_id=did, stage_index=r.stage_index,
                                          previous_package_id=prev, assigned_unix_s=now))
            rows = self.assigned(rid)
            assigned = set(rows)
        # re-assert desired state for every touched device: repairs a crash between recording and applying
        stale = sorted(did for did in assigned if did in by_id and by_id[did].desired_package_id != r.package_id)
        if stale:
            from tinymlops.fleet.packages import rollback_authorisation_for

            # a rollout of an older release (the profile may recommend a lower version) is a downgrade the
            # operator chose: devices get it signed, as for a rollback; everything else needs no authorisation
            by_current: dict[str | None, list[str]] = {}
            for did in stale:
                by_current.setdefault(by_id[did].current_package_id, []).append(did)
            for current, ids in by_current.items():
                auth = rollback_authorisation_for(self.store, r.package_id, current) if current else None
                fleet_store.set_desired(self.store, r.package_id, ids, reason=f"rollout {rid} stage {stage.label}",
                                        authorisation=auth)
            from tinymlops.fleet.grants import grant

            grant(self.store, r.package_id, stale)  # an encrypted package: wrap its key for these devices only
        if len(assigned) >= size and r.stage_assigned_unix_s is None:
            with self.store.session() as s:
                s.execute(update(Rollout).where(Rollout.id == rid, Rollout.stage_index == r.stage_index)
                          .values(stage_assigned_unix_s=now, updated_unix_s=now))
            r = self.get(rid)
        figures = self.stage_figures(r, cfg, rows, devices, size, now)
        decision = gates.decide(figures, stage, cfg.gates)
        return self._act(r, cfg, decision, now, len(new))

    def stage_figures(self, r: Rollout, cfg: RolloutConfig, rows: dict[str, RolloutDevice],
                      devices: list[fleet_store.DeviceInfo], size: int, now: float) -> gates.StageFigures:
        """Measure the current stage window of a rollout."""
        th = cfg.gates
        assigned = set(rows)
        since = max(r.stage_started_unix_s, now - cfg.window_s)
        win = window_figures(self.store, r.target, r.package_id, assigned, since, now - th.report_grace_s,
                             self._cache)
        installed, offline = device_states(devices, assigned, r.package_id, now, th.offline_after_s)
        rejected = rejected_devices(self.store, r.package_id, assigned, r.created_unix_s)
        by_id = {d.id: d for d in devices}
        # the grace runs from when the device started running the candidate: a slow download is not silence
        started = install_times(self.store, r.package_id, installed, r.created_unix_s)
        silent = {did for did in installed - offline
                  if max(rows[did].assigned_unix_s, started.get(did, 0.0)) <= now - th.report_grace_s
                  and win.last_candidate_report_unix_s.get(did, 0.0) < now - th.report_grace_s
                  and (by_id[did].last_seen_unix_s or 0.0) >= now - th.report_grace_s}
        ref = self._cache.manifest(r.package_id).get("reference") or {}
        mids = self._cache.midpoints(r.package_id)
        ref_conf = None
        if ref.get("confidence_counts") and mids is not None and sum(ref["confidence_counts"]):
            counts = ref["confidence_counts"]
            ref_conf = float(sum(c * m for c, m in zip(counts, mids, strict=False)) / sum(counts))
        metrics = self._cache.manifest(r.package_id).get("metrics") or {}
        return gates.StageFigures(
            target=r.target, version=r.version, stage_index=r.stage_index, assigned_devices=len(assigned),
            stage_devices=size, installed_devices=len(installed), rejected_devices=len(rejected),
            reporting_devices=len(win.reporting), silent_devices=len(silent), offline_devices=len(offline),
            baked_s=max(0.0, now - r.stage_assigned_unix_s) if r.stage_assigned_unix_s else 0.0,
            candidate=win.candidate, control=win.control if win.control.devices else None,
            reference_prediction_counts=ref.get("prediction_counts"), reference_confidence_mean=ref_conf,
            reference_accuracy=metrics.get("accuracy"), expected_latency_ms=r.expected_latency_ms,
            latency_slo_ms=r.latency_slo_ms)

    def _act(self, r: Rollout, cfg: RolloutConfig, decision: gates.GateDecision, now: float,
             n_new: int) -> TickResult:
        stage = cfg.stages[r.stage_index]
        last = r.stage_index == len(cfg.stages) - 1
        reasons = list(decision.reasons)
        if decision.outcome == "pass":
            action = "complete" if last else "advance"
        elif decision.outcome == "fail":
            action = "rollback"
        else:
            action = "hold"
            final = r.stage_started_unix_s + stage.deadline_s + cfg.hold_timeout_s
            if now >= final:
                action = "rollback" if cfg.on_timeout == "fail" else "stop"
                reasons.insert(0, f"inconclusive past the final deadline ({stage.deadline_s + cfg.hold_timeout_s:.0f}"
                                  f" s after the stage started): on_timeout={cfg.on_timeout}")
            elif now >= r.stage_started_unix_s + stage.deadline_s:
                reasons.insert(0, f"stage deadline ({stage.deadline_s:.0f} s) passed: holding")
        self._record(r, stage.label, decision.outcome, action, reasons, decision.figures, now)
        with self.store.session() as s:
            q = update(Rollout).where(Rollout.id == r.id, Rollout.status == "running",
                                      Rollout.stage_index == r.stage_index)
            if action == "advance":
                s.execute(q.values(stage_index=r.stage_index + 1, stage_started_unix_s=now,
                                   stage_assigned_unix_s=None, updated_unix_s=now))
            elif action == "complete":
                s.execute(q.values(status="succeeded", finished_unix_s=now, updated_unix_s=now,
                                   reason=f"passed all {len(cfg.stages)} stages"))
            elif action == "rollback":
                s.execute(q.values(status="rolling_back", updated_unix_s=now, reason="; ".join(reasons)[:4000]))
            elif action == "stop":
                s.execute(q.values(status="stopped", finished_unix_s=now, updated_unix_s=now,
                                   reason="; ".join(reasons)[:4000]))
        r2 = self.get(r.id)
        if action == "complete" and r2.status == "succeeded":
            self._complete(r2, decision.figures)
        if r2.status == "rolling_back":
            self._rollback(r2, decision.figures)
            r2 = self.get(r.id)
        if r2.status in TERMINAL:
            self.release(r.id)
        return TickResult(r.id, r2.status, r2.stage_index, action if action != "hold" or not n_new else "assign",
                          decision, n_new)

    def _record(self, r: Rollout, label: str, outcome: str, action: str, reasons: list[str],
                figures: dict[str, float], now: float) -> str | None:
        """Write a decision row; log it to MLflow when it changes something or its reasons change."""
        key = (r.stage_index, action, tuple(x.split(":")[0] for x in reasons))
        run_id = None
        if self.record_mlflow and (action != "hold" or self._last_logged.get(r.id) != key):
            run_id = history.record_decision(r.model_name, r.target, r.version, r.id, label, outcome, action,
                                             reasons, figures)
            self._last_logged[r.id] = key
        with self.store.session() as s:
            s.add(RolloutDecision(rollout_id=r.id, stage_index=r.stage_index, stage_label=label, at_unix_s=now,
                                  outcome=outcome, action=action, reasons_json=json.dumps(reasons),
                                  figures_json=json.dumps(figures), mlflow_run_id=run_id))
        return run_id

    def _complete(self, r: Rollout, figures: dict[str, float]) -> None:
        if not self.record_mlflow:
            return
        previous = registry.get_alias(r.model_name, f"production-{r.target}")
        replaces = f" (replaces v{previous.version})" if previous and str(previous.version) != r.version else ""
        history.move_alias(r.model_name, f"production-{r.target}", r.version,
                           f"rollout {r.id} passed all stages{replaces}", figures)
        history.move_alias(r.model_name, f"canary-{r.target}", None, f"rollout {r.id} promoted to production")
        registry.set_version_tags(r.model_name, r.version, {f"rollout.{r.target}": "production"})

    def _rollback(self, r: Rollout, figures: dict[str, float] | None = None) -> TickResult:
        """Point every touched device back at its previous package, then close the rollout (idempotent)."""
        now = self.clock()
        rows = [d for d in self.assigned(r.id).values()]
        groups: dict[str | None, list[str]] = {}
        for d in rows:
            groups.setdefault(d.previous_package_id, []).append(d.device_id)
        existing = {d.id for d in fleet_store.list_devices(self.store, target=r.target)}
        for prev, ids in groups.items():
            ids = sorted(i for i in ids if i in existing)
            if not ids:
                continue
            if prev is None:
                # nothing to go back to: clear the desired state so the device is not told to keep the candidate
                with self.store.session() as s:
                    for did in ids:
                        ds = s.get(DesiredState, did)
                        if ds is not None and ds.package_id == r.package_id:
                            s.delete(ds)
            else:
                from tinymlops.fleet.packages import rollback_authorisation_for

                # devices refuse a lower package sequence unless the rollback is signed (anti-rollback)
                fleet_store.set_desired(self.store, prev, ids, reason=f"rollback of rollout {r.id}",
                                        authorisation=rollback_authorisation_for(self.store, prev, r.package_id))
        with self.store.session() as s:
            s.execute(update(RolloutDevice).where(RolloutDevice.rollout_id == r.id,
                                                  RolloutDevice.rolled_back_unix_s.is_(None))
                      .values(rolled_back_unix_s=now))
        final = "aborted" if r.abort_requested else "rolled_back"
        if self.record_mlflow:
            history.move_alias(r.model_name, f"canary-{r.target}", None,
                               f"rollout {r.id} {final.replace('_', ' ')}: {r.reason}"[:4000], figures)
            registry.set_version_tags(r.model_name, r.version, {f"rollout.{r.target}": final})
        with self.store.session() as s:
            s.execute(update(Rollout).where(Rollout.id == r.id, Rollout.status == "rolling_back")
                      .values(status=final, finished_unix_s=now, updated_unix_s=now))
        self.release(r.id)
        r2 = self.get(r.id)
        return TickResult(r.id, r2.status, r2.stage_index, "rollback")

    # ---- loops --------------------------------------------------------------------------------------------------

    def run(self, rid: str, on_tick: Callable[[TickResult], None] | None = None, max_s: float | None = None,
            sleep: Callable[[float], None] = time.sleep) -> TickResult:
        """Tick a rollout every gate interval until it ends (or ``max_s`` passes); return the last step."""
        cfg = self.config(self.get(rid))
        t0 = time.monotonic()
        while True:
            res = self.tick(rid)
            if on_tick is not None:
                on_tick(res)
            if res.status in TERMINAL or (max_s is not None and time.monotonic() - t0 >= max_s):
                return res
            # while devices are still being switched, come back sooner: the rate limit releases devices steadily
            sleep(min(cfg.gate_interval_s, 1.0) if res.action == "assign" else cfg.gate_interval_s)


def list_rollouts(st: Store, model_name: str | None = None, target: str | None = None,
                  active_only: bool = False) -> list[dict[str, Any]]:
    """Return rollouts (newest first) with their status, stage and last decision."""
    q = select(Rollout).order_by(Rollout.created_unix_s.desc())
    if model_name:
        q = q.where(Rollout.model_name == model_name)
    if target:
        q = q.where(Rollout.target == target)
    if active_only:
        q = q.where(Rollout.status.in_(ACTIVE))
    out = []
    with st.session() as s:
        for r in s.scalars(q):
            cfg = RolloutConfig.model_validate_json(r.config_json)
            last = s.scalars(select(RolloutDecision).where(RolloutDecision.rollout_id == r.id)
                             .order_by(RolloutDecision.id.desc()).limit(1)).first()
            n_dev = len(s.scalars(select(RolloutDevice.device_id).where(RolloutDevice.rollout_id == r.id)).all())
            out.append({
                "id": r.id, "model": r.model_name, "version": r.version, "target": r.target,
                "package_id": r.package_id, "variant": r.variant, "status": r.status,
                "stage_index": r.stage_index, "stage": cfg.stages[min(r.stage_index, len(cfg.stages) - 1)].label,
                "stages": [s_.label for s_ in cfg.stages], "devices_touched": n_dev, "reason": r.reason,
                "created_unix_s": r.created_unix_s, "finished_unix_s": r.finished_unix_s,
                "last_decision": None if last is None else {
                    "outcome": last.outcome, "action": last.action, "at_unix_s": last.at_unix_s,
                    "reasons": json.loads(last.reasons_json)},
            })
    return out


def stages_reached(r: dict[str, Any]) -> str:
    """Describe how far a rollout got, e.g. ``5% > 25% > 50% > 100%`` or ``5% (rolled back)``."""
    labels = r["stages"]
    reached = labels[: r["stage_index"] + 1]
    return " > ".join(reached)
