"""Demo and test harness: a real fleet service, a simulated fleet per target, and faults bound to a package.

``run_demo`` starts ``tinymlops fleet serve`` (the installed command) on a fresh database, records it as the
project's fleet (``<home>/fleet.json``, so ``drift``, ``rollout status`` and ``fleet devices`` show it afterwards), enrols simulated devices per target (the real
agent code, async mode) running a baseline version, then rolls each target's candidate out in stages. One target's
candidate carries an injected fault — it only misbehaves on devices that run that package, exactly like a bad
model would — so the rollout of that target fails its canary gate and is rolled back automatically while the
healthy target's candidate reaches 100 % and becomes ``production-<target>``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinymlops import registry, settings
from tinymlops.errors import UsageError
from tinymlops.fleet.store import Store, list_devices, open_store, telemetry_window
from tinymlops.sim.command import product_command
from tinymlops.sim.faults import FAULTS, FaultSpec, PackageFault
from tinymlops.sim.simulator import CohortSpec, DriftSpec, Simulation, publish

__all__ = ["FAULTS", "FaultSpec", "PackageFault", "SimulatedFleet", "fleet_service", "fresh_fleet", "pick_versions",
           "run_demo", "run_monitored", "start_fleet", "wait_installed"]


def free_port() -> int:
    """Return a TCP port that is free right now on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def fleet_service(db_url: str, port: int | None = None, poll_interval_s: float = 1.0,
                  targets_dir: str | Path | None = None, log_path: Path | None = None) -> Iterator[str]:
    """Run ``tinymlops fleet serve`` in a subprocess for the block; yield its URL."""
    import httpx

    port = port or free_port()
    argv = product_command("fleet", "serve", "--db", db_url, "--port", str(port), "--poll-interval",
                           str(poll_interval_s))
    if targets_dir is not None:
        argv += ["--targets-dir", str(targets_dir)]
    log = (log_path or settings.home() / "fleet-service.log").open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=log, env={**os.environ, "TINYMLOPS_HOME": str(settings.home())})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise UsageError(f"fleet service exited with code {proc.returncode} (log: {log.name})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise UsageError(f"fleet service did not answer on {url} within 60 s (log: {log.name})")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class SimulatedFleet:
    """A running simulation in a background thread (async mode) and how to stop it."""

    sim: Simulation
    thread: threading.Thread
    error: list[BaseException] = field(default_factory=list)

    def stop(self) -> None:
        deadline = time.monotonic() + 30
        while self.thread.is_alive() and time.monotonic() < deadline:
            self.sim.stop()
            self.thread.join(timeout=0.5)


def start_fleet(server_url: str, operator_token: str, cohorts: list[CohortSpec], state_root: Path,
                report_interval_s: float = 2.0, inference_interval_s: float = 0.1, duration_s: float = 600.0,
                targets_dir: Path | None = None, seed: int = 0,
                package_faults: list[PackageFault] | None = None) -> SimulatedFleet:
    """Enrol and run simulated devices in a background thread until stopped (or ``duration_s``).

    ``package_faults`` make devices misbehave while, and only while, they run a given version on a given target.
    """
    sim = Simulation(server_url, operator_token, cohorts, state_root=state_root, mode="async",
                     report_interval_s=report_interval_s, inference_interval_s=inference_interval_s, seed=seed,
                     targets_dir=targets_dir, package_faults=package_faults)
    fleet = SimulatedFleet(sim, threading.Thread())

    def run() -> None:
        try:
            sim.run(duration_s=duration_s)
        except BaseException as exc:  # surfaced by wait_installed / the caller
            fleet.error.append(exc)

    fleet.thread = threading.Thread(target=run, name="simulated-fleet", daemon=True)
    fleet.thread.start()
    return fleet


def wait_installed(st: Store, expected: dict[str, str], devices: dict[str, int], timeout_s: float = 90.0,
                   fleet: SimulatedFleet | None = None) -> None:
    """Wait until every simulated device of each target runs its expected package (target -> package id)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if fleet is not None and fleet.error:
            raise UsageError(f"simulated fleet failed: {fleet.error[0]}")
        done = all(sum(1 for d in list_devices(st, target=t) if d.current_package_id == pid) >= devices[t]
                   for t, pid in expected.items())
        if done:
            return
        if time.monotonic() > deadline:
            state = {t: sum(1 for d in list_devices(st, target=t) if d.current_package_id == pid)
                     for t, pid in expected.items()}
            raise UsageError(f"devices did not install their baseline within {timeout_s:.0f} s: {state}")
        time.sleep(0.5)


def pick_versions(model_name: str, target: str, targets_dir: Path | None = None) -> tuple[str, str]:
    """Return (baseline, candidate) versions for a target: candidate alias; production alias or oldest fitting."""
    from tinymlops.fleet import packages
    from tinymlops.profile.targets import get_target

    runtime = get_target(target, targets_dir).runtime
    fitting = [str(v.version) for v in registry.list_versions(model_name)
               if packages.format_fits(v.tags.get("format", ""), runtime)]
    cand = registry.get_alias(model_name, f"candidate-{target}")
    candidate = str(cand.version) if cand is not None else (fitting[-1] if fitting else None)
    if candidate is None:
        raise UsageError(f"no version of {model_name} runs on {target} ({runtime})")
    prod = registry.get_alias(model_name, f"production-{target}")
    others = [v for v in fitting if v != candidate]
    if prod is not None and str(prod.version) != candidate:
        baseline = str(prod.version)
    elif others:
        baseline = others[0]
    else:
        raise UsageError(f"{model_name} has only one version that runs on {target} (v{candidate}): a rollout needs a "
                         "baseline version on the devices and a different candidate")
    return baseline, candidate


def fresh_fleet(work: Path) -> tuple[str, Store, str]:
    """Create the demo's fleet database in ``work`` (wiped first), record it as the project's fleet.

    Returns (database URL, open store, operator token). Recording it (``<home>/fleet.json``) is what makes
    ``tinymlops fleet devices``, ``rollout status`` and ``drift`` show the demo's fleet afterwards.
    """
    from tinymlops.fleet import service

    shutil.rmtree(work, ignore_errors=True)  # a fresh fleet every run: old simulated devices would be offline
    work.mkdir(parents=True)
    db_url = f"sqlite:///{work.resolve() / 'fleet.db'}"
    st = open_store(db_url)
    settings.record_fleet_db(db_url, "the rollout demo (tinymlops rollout demo / make demo)")
    return db_url, st, service.create_operator_token(st, "rollout-demo")


def run_demo(model_name: str, healthy_target: str = "raspberry-pi-4",
             faulty_target: str = "raspberry-pi-zero-2-w", config_path: str | Path = "configs/rollout.yaml",
             devices_per_target: int = 20, fault: str = "latency", targets_dir: Path | None = None,
             versions: dict[str, tuple[str, str]] | None = None, work_dir: Path | None = None,
             max_s: float = 240.0, runner: Callable[..., dict[str, Any]] | None = None,
             monitor_target: str | None = None, monitor_devices: int = 5,
             monitor_drift: DriftSpec | None = None) -> dict[str, Any]:
    """Run the staged-rollout demo on a fresh simulated fleet; return the rollout summary (with ``table``).

    Args:
        monitor_target: also run two monitored cohorts of ``monitor_devices`` on this target, on its candidate
            version and out of the rollout: ``line-a`` as deployed and ``line-b`` with ``monitor_drift``
            injected (a sensor-gain shift by default); both opt in to samples and feedback, so the drift check
            that follows has sketches, Evidently samples and labels to judge.
        versions: per target (baseline, candidate); default from aliases (see :func:`pick_versions`).
        fault: which fault the faulty target's candidate carries: latency, crash or corrupt.
        runner: what drives the rollouts (default :func:`tinymlops.rollout.run.run_rollout`; the Prefect flow
            ``flows.rollout.rollout_flow`` takes the same arguments).
    """
    from tinymlops.rollout.run import run_rollout

    if fault not in FAULTS:
        raise UsageError(f"fault must be one of {sorted(FAULTS)}, not {fault!r}")
    registry.client()
    targets = [healthy_target, faulty_target]
    chosen = {t: (versions or {}).get(t) or pick_versions(model_name, t, targets_dir) for t in targets}
    monitored: list[CohortSpec] = []
    if monitor_target is not None:
        if monitor_target in targets:
            raise UsageError(f"monitor_target {monitor_target!r} must not be one of the rollout targets {targets}")
        drift = monitor_drift or DriftSpec(gain=1.15)
        monitored = [CohortSpec(name=name, devices=monitor_devices, target=monitor_target, samples_opt_in=True,
                                feedback_opt_in=True, drift=d)
                     for name, d in (("line-a", DriftSpec()), ("line-b", drift))]
    work = Path(work_dir or settings.home() / "rollout-demo")
    db_url, st, token = fresh_fleet(work)
    with fleet_service(db_url, targets_dir=targets_dir, log_path=work / "service.log") as url:
        cohorts = [CohortSpec(name=t, devices=devices_per_target, target=t, feedback_opt_in=True) for t in targets]
        baseline_pkgs = {t: publish(url, token, model_name, [chosen[t][0]], [t], cohorts={t: t},
                                    reason="demo baseline", targets_dir=targets_dir)[t] for t in targets}
        installed = {t: devices_per_target for t in targets}
        if monitored and monitor_target is not None:
            cand = registry.get_alias(model_name, f"candidate-{monitor_target}")
            mon_versions = [str(cand.version)] if cand else [str(v.version) for v in registry.list_versions(model_name)]
            baseline_pkgs.update(publish(url, token, model_name, mon_versions, [monitor_target],
                                         cohorts={c.name: monitor_target for c in monitored},
                                         reason="demo monitored cohorts", targets_dir=targets_dir))
            installed[monitor_target] = 2 * monitor_devices
        bad = PackageFault(faulty_target, chosen[faulty_target][1], FAULTS[fault])
        fleet = start_fleet(url, token, cohorts + monitored, work / "devices", targets_dir=targets_dir,
                            duration_s=max_s + 120, package_faults=[bad])
        try:
            wait_installed(st, baseline_pkgs, installed, fleet=fleet)
            out = (runner or (lambda *a, **k: run_rollout(*a, **k).to_dict()))(
                model_name, targets, str(config_path), fleet_url=url, operator_token=token, db_url=db_url,
                versions={t: chosen[t][1] for t in targets}, max_s=max_s,
                targets_dir=str(targets_dir) if targets_dir else None)
        finally:
            fleet.stop()
    out["baselines"] = {t: chosen[t][0] for t in targets}
    out["fault"] = {"target": faulty_target, "kind": fault, **FAULTS[fault].model_dump(exclude_defaults=True)}
    out["fleet_db"] = db_url
    if monitored:
        out["monitored"] = {"target": monitor_target, "cohorts": [c.model_dump(exclude_defaults=True)
                                                                   for c in monitored]}
    return out


def scored_per_device(st: Store, model_name: str, cohort: str, since: float) -> dict[str, int]:
    """Return, per device of a cohort, the labelled inferences its personalisation was scored on since ``since``."""
    out: dict[str, int] = {}
    for r in telemetry_window(st, model_name, cohort=cohort, since=since):
        if r.sketch is not None and r.sketch.personal is not None:
            out[r.device_id] = out.get(r.device_id, 0) + r.sketch.personal.evaluated
    return out


def run_monitored(model_name: str, db_url: str, cohorts: list[CohortSpec], work_dir: Path | None = None,
                  targets_dir: Path | None = None, min_scored: int = 100, max_s: float = 120.0,
                  seed: int = 1) -> dict[str, Any]:
    """Run the demo's monitored cohorts again after a drift check: their devices (same state) on a restarted service.

    The fleet is the one :func:`run_demo` left (its database and the devices' state under ``work_dir``); whether a
    cohort personalises is the cohort's switch in that database, as a drift verdict with ``retrain: {strategy:
    personalise}`` set it: nothing here turns personalisation on. The devices run until every device of a
    personalising cohort has reported ``min_scored`` later labelled inferences scored by its personalisation (it
    needs ``min_inputs`` inputs and ``min_labelled`` labels first, see :mod:`tinymlops.fleet.agent_personal`), or
    ``max_s``. Returns the cohorts, which personalised, the seconds run and the scored counts per device.

    Raises:
        UsageError: no demo fleet in ``work_dir``, or none of the cohorts personalises.
    """
    from tinymlops.fleet import service
    from tinymlops.fleet.personal_switch import list_settings

    work = Path(work_dir or settings.home() / "rollout-demo")
    if not (work / "devices").is_dir():
        raise UsageError(f"no demo fleet in {work}: run the rollout demo first")
    st = open_store(db_url)
    names = {c.name: c.devices for c in cohorts}
    personalising = sorted({s["cohort"] for s in list_settings(st) if s["enabled"]} & set(names))
    if not personalising:
        st.dispose()
        raise UsageError(f"none of the cohorts {sorted(names)} personalises: switch one on first (a drift verdict "
                         "with retrain.strategy personalise, or tinymlops fleet personalise COHORT)")
    t0 = time.time()
    scored: dict[str, dict[str, int]] = {c: {} for c in personalising}
    with fleet_service(db_url, targets_dir=targets_dir, log_path=work / "service.log") as url:
        fleet = start_fleet(url, service.create_operator_token(st, "demo-monitored"), cohorts, work / "devices",
                            targets_dir=targets_dir, duration_s=max_s + 30, seed=seed)
        try:
            deadline = time.monotonic() + max_s
            while time.monotonic() < deadline:
                if fleet.error:
                    raise UsageError(f"simulated fleet failed: {fleet.error[0]}")
                time.sleep(1.0)
                scored = {c: scored_per_device(st, model_name, c, t0) for c in personalising}
                if all(len(scored[c]) >= names[c] and min(scored[c].values()) >= min_scored for c in personalising):
                    break
        finally:
            fleet.stop()
            st.dispose()
    return {"cohorts": sorted(names), "personalising": personalising, "since_unix_s": t0,
            "seconds": round(time.time() - t0, 1), "min_scored": min_scored, "scored": scored}
