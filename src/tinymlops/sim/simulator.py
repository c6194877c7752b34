"""Fleet simulator: enrol N devices across catalogue targets and run the real agent code for each.

Small fleets run one ``tinymlops agent --input synthetic`` process per device (``mode="processes"``); large ones
run the same :class:`~tinymlops.fleet.agent.Agent` class as asyncio tasks in one process (``mode="async"``),
sharing one HTTP connection pool and one loaded model per package (a process stands for one device; an async task
stands for one device's control loop). Per cohort: target, drift injection (VibrationParams knobs gain, offset,
noise_std, shaft_hz, from ``drift_after_s``; or live with :meth:`Simulation.set_drift` in async mode), faults
(crash after some seconds — the simulator restarts the agent like a supervisor; in process mode the crash is a
SIGKILL —, slow inference and corrupted outputs, which wrap the runtime and so need async mode) and opt-in to
samples/feedback. Sensor windows come from :class:`~tinymlops.sim.streams.SyntheticStream`, faults and emulated
target timing from :class:`~tinymlops.sim.faults.DeviceRuntime`: the agent itself has no simulation code.

Library use (demo, benchmarks, rollout)::

    cohorts = [CohortSpec("canary", devices=5, target="cortex-m4"),
               CohortSpec("field", devices=50, target="cortex-m7", drift={"gain": 1.4}, drift_after_s=30)]
    result = run_simulation(server_url, operator_token, cohorts, duration_s=60)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from tinymlops import settings
from tinymlops.config_base import Strict
from tinymlops.data.config import VibrationParams
from tinymlops.errors import UsageError
from tinymlops.fleet.agent import Agent, AgentConfig, AgentStopped, Installed, open_model
from tinymlops.fleet.client import OperatorClient
from tinymlops.profile.targets import catalogue as target_catalogue
from tinymlops.sim.command import product_command
from tinymlops.sim.faults import DeviceRuntime, FaultSpec, InjectedCrash, PackageFault
from tinymlops.sim.streams import SyntheticStream

__all__ = ["CohortSpec", "DriftSpec", "FaultSpec", "Simulation", "SimulationResult", "SimulationSpec",
           "cohort_stream", "publish", "run_simulation"]

PROCESS_MODE_MAX_DEVICES = 8


class DriftSpec(Strict):
    """Covariate shift of a cohort's sensor stream (unset knobs keep the stream's value)."""

    gain: float | None = Field(None, gt=0)
    offset: float | None = None
    noise_std: float | None = Field(None, ge=0)
    shaft_hz: float | None = Field(None, gt=0)


class CohortSpec(Strict):
    """One group of simulated devices."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=48)
    devices: int = Field(ge=1, le=100000)
    target: str
    drift: DriftSpec = Field(default_factory=lambda: DriftSpec())
    drift_after_s: float = Field(0.0, ge=0)
    faults: FaultSpec = Field(default_factory=lambda: FaultSpec())
    samples_opt_in: bool = False
    feedback_opt_in: bool = False
    personalise: bool = False  # the agents adapt the model on the device (tinymlops.personalise)


class SimulationSpec(Strict):
    """A simulation file (``tinymlops fleet simulate --spec sim.yaml``)."""

    cohorts: list[CohortSpec]
    report_interval_s: float = Field(5.0, gt=0)
    inference_interval_s: float = Field(0.1, gt=0)
    duration_s: float = Field(30.0, gt=0)
    seed: int = 0


@dataclass
class DeviceResult:
    device_id: str
    cohort: str
    target: str
    reports_sent: int = 0
    inferences: int = 0
    restarts: int = 0
    installed: str | None = None
    stopped: str | None = None


@dataclass
class SimulationResult:
    mode: str
    duration_s: float
    devices: list[DeviceResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        by: dict[str, dict[str, Any]] = {}
        for d in self.devices:
            c = by.setdefault(d.cohort, {"devices": 0, "reports": 0, "inferences": 0, "restarts": 0,
                                         "installed": 0, "stopped": 0, "target": d.target})
            c["devices"] += 1
            c["reports"] += d.reports_sent
            c["inferences"] += d.inferences
            c["restarts"] += d.restarts
            c["installed"] += d.installed is not None
            c["stopped"] += d.stopped is not None
        return {"mode": self.mode, "duration_s": round(self.duration_s, 2), "cohorts": by,
                "reports": sum(d.reports_sent for d in self.devices)}


def cohort_stream(base: VibrationParams, drift: DriftSpec) -> VibrationParams | None:
    """Return the drifted stream parameters of a cohort (None when no knob is set)."""
    knobs = drift.model_dump(exclude_none=True)
    return base.model_copy(update=knobs) if knobs else None


class _SharedRunners:
    """One loaded model per (package content, runtime) for async mode; closed when the simulation ends."""

    shared = True  # agents must not close these

    def __init__(self) -> None:
        self._runners: dict[tuple[str, str], Any] = {}

    def __call__(self, installed: Installed, runtime: str) -> Any:
        key = (installed.manifest["sha256"], runtime)
        if key not in self._runners:
            self._runners[key] = open_model(installed, runtime)
        return self._runners[key]

    def close(self) -> None:
        for r in self._runners.values():
            with contextlib.suppress(Exception):
                r.close()
        self._runners.clear()


class Simulation:
    """A simulated fleet bound to one fleet service."""

    def __init__(self, server_url: str, operator_token: str, cohorts: list[CohortSpec],
                 state_root: Path | None = None, trusted_key_path: Path | None = None, mode: str = "auto",
                 report_interval_s: float = 5.0, inference_interval_s: float = 0.1, seed: int = 0,
                 targets_dir: Path | None = None, stream: VibrationParams | None = None,
                 package_faults: list[PackageFault] | None = None) -> None:
        from tinymlops.fleet import packages

        if mode not in ("auto", "processes", "async"):
            raise UsageError(f"mode must be auto, processes or async, not {mode!r}")
        self.server, self.operator_token = server_url.rstrip("/"), operator_token
        self.cohorts = cohorts
        self.package_faults: list[PackageFault] = list(package_faults or [])
        total = sum(c.devices for c in cohorts)
        in_runtime = sorted(c.name for c in cohorts if c.faults.in_runtime)
        if mode == "processes" and (in_runtime or self.package_faults):
            raise UsageError(f"cohorts {in_runtime} inject slow or corrupt inference (or faults bound to packages): "
                             "those wrap the runtime inside the simulator, use mode async")
        small = total <= PROCESS_MODE_MAX_DEVICES and not in_runtime and not self.package_faults
        self.mode = mode if mode != "auto" else ("processes" if small else "async")
        self.state_root = Path(state_root or settings.home() / "sim")
        self.key_path = Path(trusted_key_path or packages.default_public_key_path())
        self.trusted = [packages.load_public_key(self.key_path)]
        self.report_interval_s, self.inference_interval_s, self.seed = report_interval_s, inference_interval_s, seed
        targets = target_catalogue(targets_dir)
        unknown = sorted({c.target for c in cohorts} - set(targets))
        if unknown:
            raise UsageError(f"unknown target(s) {unknown}; catalogue has {sorted(targets)}")
        self.targets = targets
        self.targets_dir = targets_dir
        self.stream = stream or VibrationParams()
        self.agents: dict[str, Agent] = {}
        self.sources: dict[str, SyntheticStream] = {}
        self.plan: list[tuple[CohortSpec, str, str | None]] = []  # (cohort, device id, enrolment token)
        self.stopping = False

    def enrol_plan(self) -> list[tuple[CohortSpec, str, str | None]]:
        """Create enrolment tokens for devices not yet enrolled (state kept under state_root)."""
        self.plan = []
        with OperatorClient(self.server, self.operator_token) as op:
            for c in self.cohorts:
                ids = [f"{c.name}-{i:04d}" for i in range(c.devices)]
                fresh = [d for d in ids if not (self.state_root / d / "credential.json").is_file()]
                tokens = iter(op.enrolment_tokens(c.name, len(fresh), c.samples_opt_in, c.feedback_opt_in)
                              if fresh else [])
                self.plan += [(c, d, next(tokens) if d in fresh else None) for d in ids]
        return self.plan

    def agent_config(self, c: CohortSpec, device_id: str, token: str | None, index: int,
                     duration_s: float | None, max_reports: int | None) -> AgentConfig:
        tgt = self.targets[c.target]
        return AgentConfig(
            server=self.server, device_id=device_id, target=c.target, runtime=tgt.runtime,
            state_dir=self.state_root / device_id, trusted_keys=self.trusted, enrolment_token=token,
            report_interval_s=self.report_interval_s, inference_interval_s=self.inference_interval_s,
            energy_mw=tgt.active_power_mw, duration_s=duration_s, max_reports=max_reports,
            personalise=c.personalise)

    def stream_seed(self, index: int) -> int:
        """Return the sensor-stream seed of the index-th device."""
        return self.seed * 100_003 + index

    def source(self, c: CohortSpec, index: int) -> SyntheticStream:
        """Return a device's synthetic sensor stream (the cohort's drift from ``drift_after_s`` on)."""
        return SyntheticStream(self.stream, self.stream_seed(index), cohort_stream(self.stream, c.drift),
                               c.drift_after_s)

    def set_drift(self, cohort: str, **knobs: float) -> int:
        """Change a running cohort's stream knobs now (async mode); return the number of devices changed."""
        params = self.stream.model_copy(update=DriftSpec(**knobs).model_dump(exclude_none=True))
        n = 0
        for device_id, src in self.sources.items():
            if device_id.startswith(f"{cohort}-"):
                src.set_drift(params)
                n += 1
        return n

    def stop(self) -> None:
        """Ask every running agent to stop after its current step (async mode); crashed ones stay down."""
        self.stopping = True
        for a in list(self.agents.values()):
            a.cfg.duration_s = 0.0

    # ---- async mode -----------------------------------------------------------------------------------------

    async def _supervise(self, res: DeviceResult, cfg: AgentConfig, c: CohortSpec, source: SyntheticStream,
                         client: Any, runners: _SharedRunners, deadline: float | None) -> None:
        report_budget = cfg.max_reports
        while not self.stopping:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            cfg.duration_s = left
            if report_budget is not None:
                cfg.max_reports = max(0, report_budget - res.reports_sent)
                if cfg.max_reports == 0:
                    return
            runtime = DeviceRuntime(runners, emulate_timing=True, fault=c.faults,
                                    package_faults=self.package_faults, seed=cfg.device_id)
            agent = Agent(cfg, source, client=client, runner_factory=runtime)
            self.agents[cfg.device_id] = agent
            try:
                await agent.run()
                return
            except InjectedCrash:
                res.restarts += 1
                await asyncio.sleep(0.2)  # a supervisor's restart delay
            except AgentStopped as exc:
                res.stopped = str(exc)
                return
            finally:
                res.reports_sent += agent.reports_sent
                res.inferences += agent.inferences
                res.installed = agent.installed.package_id if agent.installed else res.installed
                cfg.enrolment_token = None  # enrolled now: restarts use the stored credential

    async def run_async(self, duration_s: float | None, reports_per_device: int | None) -> SimulationResult:
        import httpx

        total = len(self.plan)
        limits = httpx.Limits(max_connections=max(100, total), max_keepalive_connections=max(100, total))
        runners = _SharedRunners()
        t0 = time.monotonic()
        deadline = None if duration_s is None else t0 + duration_s
        result = SimulationResult(mode="async", duration_s=0.0)
        try:
            async with httpx.AsyncClient(base_url=self.server, limits=limits, timeout=30.0) as client:
                jobs = []
                for i, (c, did, tok) in enumerate(self.plan):
                    res = DeviceResult(did, c.name, c.target)
                    result.devices.append(res)
                    cfg = self.agent_config(c, did, tok, i, duration_s, reports_per_device)
                    source = self.sources[did] = self.source(c, i)
                    jobs.append(self._supervise(res, cfg, c, source, client, runners, deadline))
                await asyncio.gather(*jobs)
        finally:
            runners.close()
        result.duration_s = time.monotonic() - t0
        return result

    # ---- process mode ---------------------------------------------------------------------------------------

    def _agent_argv(self, cfg: AgentConfig, c: CohortSpec, index: int) -> list[str]:
        argv = product_command(
            "agent", "--server", cfg.server, "--device-id", cfg.device_id, "--target", cfg.target,
            "--state-dir", str(cfg.state_dir), "--trusted-key", str(self.key_path),
            "--report-interval", str(cfg.report_interval_s), "--inference-interval", str(cfg.inference_interval_s),
            "--input", "synthetic", "--seed", str(self.stream_seed(index)), "--emulate-target-timing")
        if self.targets_dir is not None:
            argv += ["--targets-dir", str(self.targets_dir)]
        if cfg.enrolment_token:  # a 0600 file, not argv (visible in `ps`)
            argv += ["--enrolment-token-file", str(write_token_file(cfg.state_dir, cfg.enrolment_token))]
        for k, v in c.drift.model_dump(exclude_none=True).items():
            argv += [f"--drift-{k.replace('_', '-')}", str(v)]
        if c.drift_after_s:
            argv += ["--drift-after", str(c.drift_after_s)]
        if c.personalise:
            argv.append("--personalise")
        if cfg.max_reports is not None:
            argv += ["--max-reports", str(cfg.max_reports)]
        return argv

    def run_processes(self, duration_s: float | None, reports_per_device: int | None) -> SimulationResult:
        """Run one agent process per device; an injected crash is a SIGKILL, and the process is started again."""
        t0, wall_t0 = time.monotonic(), time.time()
        result = SimulationResult(mode="processes", duration_s=0.0)
        procs: dict[str, tuple[subprocess.Popen[bytes], float, DeviceResult, AgentConfig, CohortSpec, int]] = {}
        logs = self.state_root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TINYMLOPS_HOME": str(settings.home())}

        def start(cfg: AgentConfig, c: CohortSpec, i: int) -> subprocess.Popen[bytes]:
            with (logs / f"{cfg.device_id}.log").open("ab") as log_file:
                return subprocess.Popen(self._agent_argv(cfg, c, i), stdout=log_file, stderr=log_file, env=env)

        for i, (c, did, tok) in enumerate(self.plan):
            res = DeviceResult(did, c.name, c.target)
            result.devices.append(res)
            cfg = self.agent_config(c, did, tok, i, None, reports_per_device)
            procs[did] = (start(cfg, c, i), time.monotonic(), res, cfg, c, i)
        try:
            while procs:
                if duration_s is not None and time.monotonic() - t0 >= duration_s:
                    break
                for did, (p, started, res, cfg, c, i) in list(procs.items()):
                    crash = c.faults.crash_after_s
                    if crash is not None and p.poll() is None and time.monotonic() - started >= crash:
                        p.kill()  # the injected crash: the process dies without any cleanup
                        p.wait()
                        res.restarts += 1
                        cfg.enrolment_token = None  # enrolled by now (or the token is spent): use the credential
                        procs[did] = (start(cfg, c, i), time.monotonic(), res, cfg, c, i)
                        continue
                    code = p.poll()
                    if code is not None:
                        if code != 0:
                            res.stopped = f"exit code {code}"
                        del procs[did]
                time.sleep(0.2)
        finally:
            _stop_processes([p for p, *_ in procs.values()])
        result.duration_s = time.monotonic() - t0
        self._fill_from_server(result, wall_t0)
        return result

    def _fill_from_server(self, result: SimulationResult, since: float) -> None:
        """Fill per-device figures of process mode from what the service recorded."""
        with OperatorClient(self.server, self.operator_token) as op:
            devices = {d["id"]: d for d in op.devices()}
            by_id = {r.device_id: r for r in result.devices}
            for did, res in by_id.items():
                if did in devices:
                    res.installed = devices[did]["current_package_id"]
            for model in {p["model_name"] for p in op.packages()}:
                for t in op.telemetry(model, since=since, limit=10000):
                    found = by_id.get(t["device_id"])
                    if found is not None:
                        found.reports_sent += 1
                        found.inferences += t["sketch"]["n_inferences"]

    # ---- entry ----------------------------------------------------------------------------------------------

    def run(self, duration_s: float | None = 30.0, reports_per_device: int | None = None) -> SimulationResult:
        """Enrol (first time) and run every device until the duration or report count is reached."""
        if duration_s is None and reports_per_device is None:
            raise UsageError("give a duration or a number of reports per device")
        self.enrol_plan()
        if self.mode == "processes":
            return self.run_processes(duration_s, reports_per_device)
        return asyncio.run(self.run_async(duration_s, reports_per_device))


def _stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every agent process, wait for their clean exit, SIGKILL what is left after 15 s."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_simulation(server_url: str, operator_token: str, cohorts: list[CohortSpec], duration_s: float | None = 30.0,
                   reports_per_device: int | None = None, **kwargs: Any) -> SimulationResult:
    """Enrol and run a simulated fleet against a fleet service; see :class:`Simulation` for options."""
    return Simulation(server_url, operator_token, cohorts, **kwargs).run(duration_s, reports_per_device)


def publish(server_url: str, operator_token: str, model_name: str, versions: list[str], targets: list[str],
            cohorts: dict[str, str] | None = None, reason: str = "simulate",
            targets_dir: Path | None = None) -> dict[str, str]:
    """Build, sign and upload a package per target (newest given version whose format fits); return target->id.

    With ``cohorts`` ({cohort: target}) each cohort's desired state is set to its target's package.
    """
    from tinymlops import registry
    from tinymlops.fleet import packages

    catalogue = target_catalogue(targets_dir)
    out: dict[str, str] = {}
    with OperatorClient(server_url, operator_token) as op:
        for t in sorted(set(targets)):
            if t not in catalogue:
                raise UsageError(f"unknown target {t!r}; catalogue has {sorted(catalogue)}")
            fitting = [v for v in sorted(versions, key=lambda x: int(x), reverse=True)
                       if packages.format_fits(registry.get_version(model_name, v).tags.get("format", ""),
                                               catalogue[t].runtime)]
            if not fitting:
                raise UsageError(f"no version of {model_name} among {versions} runs on {t} "
                                 f"({catalogue[t].runtime})")
            bundle = packages.build_package(model_name, fitting[0], t, targets=targets_dir)
            out[t] = op.upload(bundle)["id"]
        for cohort, t in (cohorts or {}).items():
            op.set_desired(out[t], cohort=cohort, reason=reason)
    return out


def write_token_file(state_dir: Path, token: str) -> Path:
    """Write a one-time enrolment token to ``<state_dir>/enrolment-token`` (mode 0600) and return the path."""
    import os

    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "enrolment-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return path
