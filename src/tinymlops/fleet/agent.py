"""Edge agent: the process that stands for one device.

It enrols once (one-time token -> own credential, kept in ``<state>/credential.json``), then loops: poll its
desired state (interval from the server, jitter, exponential backoff on errors), download a new package, verify it
(signature with the trusted key, target, sha256/size, and that it loads and runs in the target's runtime),
install it atomically and keep the previous one for rollback; run inference on its sensor stream with the
package's pre-processing; and report a telemetry sketch every interval (raw inputs stay on the device unless the
device opted in to a bounded reservoir sample; labelled feedback is opt-in too). Install success, rejection
(with its reason) and rollbacks are reported as deployment events.

On-disk layout (``state_dir``)::

    credential.json             device id, credential, cohort, opt-ins (mode 0600)
    current.json                {"current": package_id, "previous": package_id}   (replaced atomically)
    packages/<package_id>/      manifest.json, manifest.sig, model file            (renamed in complete)
    staging/                    partial downloads; wiped at start-up

A crash at any point leaves ``current.json`` naming a complete, verified package (or none before the first
install): staging is written and fsynced before the rename, the pointer is replaced only after the rename, and
start-up verifies the current package again, falling back to the previous one if it does not verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.config import VibrationParams
from tinymlops.fleet.packages import Bundle, PackageRejected, verify_package

log = logging.getLogger("tinymlops.agent")
MAX_PENDING_REPORTS = 200


class AgentCrash(RuntimeError):
    """Raised by an injected crash fault (async mode); the simulator restarts the agent like a supervisor."""


class AgentStopped(RuntimeError):
    """The agent cannot continue (credential refused, enrolment impossible)."""


@dataclass
class Faults:
    """Injected faults: crash after some seconds, slower inference, corrupted model outputs."""

    crash_after_s: float | None = None
    slow_inference_ms: float = 0.0
    corrupt_output_rate: float = 0.0


@dataclass
class AgentConfig:
    """Everything one agent needs; the CLI builds it from flags, the simulator per device."""

    server: str
    device_id: str
    target: str
    runtime: str
    state_dir: Path
    trusted_keys: list[Any]
    enrolment_token: str | None = None
    report_interval_s: float = 10.0
    inference_interval_s: float = 0.1
    stream: VibrationParams = field(default_factory=lambda: VibrationParams())
    stream_seed: int = 0
    drift: VibrationParams | None = None
    drift_after_s: float = 0.0
    faults: Faults = field(default_factory=Faults)
    reservoir_size: int = 16
    feedback_rate: float = 0.2
    feedback_delay_s: float = 1.0
    energy_mw: float | None = None
    #: simulated devices run on this host, whose timing is not the target's: report the target's profiled
    #: latency/energy/memory (manifest "expected") with measurement jitter, plus injected slowness
    emulate_target_timing: bool = False
    duration_s: float | None = None
    max_reports: int | None = None
    request_timeout_s: float = 10.0
    max_package_bytes: int = 64 * 1024 * 1024


# --------------------------------------------------------------------------------------------------------------
# install state: atomic install, rollback, recovery
# --------------------------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    """Replace a file atomically: temp file in the same directory, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    _write_synced(tmp, data)
    tmp.replace(path)
    _fsync_dir(path.parent)


@dataclass
class Installed:
    package_id: str
    directory: Path
    manifest: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.directory / self.manifest["file"]


class InstallState:
    """The device's package store: verify, stage, install atomically, keep the previous, recover."""

    def __init__(self, state_dir: Path, trusted_keys: list[Any], target: str) -> None:
        self.root = Path(state_dir)
        self.trusted_keys = trusted_keys
        self.target = target
        self.packages = self.root / "packages"
        self.staging = self.root / "staging"
        self.pointer = self.root / "current.json"
        self.fell_back_from: str | None = None  # set by recover() when the current package no longer verified
        self.packages.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def _read_pointer(self) -> dict[str, str | None]:
        try:
            data = json.loads(self.pointer.read_text())
            return {"current": data.get("current"), "previous": data.get("previous")}
        except (OSError, ValueError, AttributeError):
            return {"current": None, "previous": None}

    def _verified(self, package_id: str | None) -> Installed | None:
        if not package_id:
            return None
        d = self.packages / package_id
        try:
            manifest = verify_package(Bundle.read(d), self.trusted_keys, self.target)
        except PackageRejected as exc:
            log.warning("installed package %s does not verify: %s", package_id, exc.reason)
            return None
        return Installed(package_id, d, manifest)

    def recover(self) -> Installed | None:
        """Wipe partial downloads and return the current package, falling back to the previous if needed."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        ptr = self._read_pointer()
        cur = self._verified(ptr["current"])
        self.fell_back_from = None
        if cur is None and ptr["current"] is not None:
            self.fell_back_from = ptr["current"]
            prev = self._verified(ptr["previous"])
            atomic_write(self.pointer, json.dumps({"current": prev.package_id if prev else None,
                                                    "previous": None}).encode())
            cur = prev
        keep = {p for p in self._read_pointer().values() if p}
        for d in self.packages.iterdir():
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
        return cur

    def current(self) -> Installed | None:
        """Return the current package without re-verifying the artifact (verified at install and start-up)."""
        pid = self._read_pointer()["current"]
        if not pid or not (self.packages / pid / "manifest.json").is_file():
            return None
        return Installed(pid, self.packages / pid, json.loads((self.packages / pid / "manifest.json").read_text()))

    def previous_id(self) -> str | None:
        return self._read_pointer()["previous"]

    def stage(self, bundle: Bundle, package_id: str) -> tuple[Path, dict[str, Any]]:
        """Verify a bundle and write it, fsynced, to a staging directory (PackageRejected if it fails)."""
        manifest = verify_package(bundle, self.trusted_keys, self.target)
        d = self.staging / f"{package_id}.{uuid.uuid4().hex[:8]}"
        d.mkdir(parents=True)
        _write_synced(d / "manifest.json", bundle.manifest_bytes)
        import base64

        _write_synced(d / "manifest.sig", base64.b64encode(bundle.signature))
        _write_synced(d / manifest["file"], bundle.artifact)
        _fsync_dir(d)
        return d, manifest

    def commit(self, staged: Path, package_id: str) -> Installed:
        """Move a staged package into place and point ``current`` at it (previous = the old current)."""
        final = self.packages / package_id
        if final.exists():  # a re-install of the same content: replace it wholesale
            shutil.rmtree(final)
        staged.rename(final)
        _fsync_dir(self.packages)
        old = self._read_pointer()["current"]
        previous = old if old and old != package_id else self._read_pointer()["previous"]
        atomic_write(self.pointer, json.dumps({"current": package_id, "previous": previous}).encode())
        keep = {package_id, previous}
        for d in self.packages.iterdir():
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
        return Installed(package_id, final, json.loads((final / "manifest.json").read_text()))

    def rollback(self) -> Installed | None:
        """Point ``current`` back at the previous package (if it still verifies)."""
        ptr = self._read_pointer()
        prev = self._verified(ptr["previous"])
        if prev is None:
            return None
        atomic_write(self.pointer, json.dumps({"current": prev.package_id, "previous": ptr["current"]}).encode())
        return prev


def open_model(installed: Installed, runtime: str) -> Any:
    """Open an installed package's model in the runtime the device's target names."""
    from tinymlops.runtimes import open_runner, runtime_family

    return open_runner(installed.model_path, runtime_family(runtime))


def smoke_test(runner: Any, manifest: dict[str, Any]) -> None:
    """Run one zero input through a freshly loaded model and check the output shape (PackageRejected if not)."""
    n_features = len(manifest["preprocessing"]["feature_names"])
    try:
        out = np.asarray(runner.predict(np.zeros((1, n_features), np.float32)))
    except Exception as exc:  # any runtime failure means the package cannot serve here
        raise PackageRejected(f"model does not run in this runtime: {exc}") from None
    if out.shape[-1] != len(manifest["class_names"]) or not np.all(np.isfinite(out)):
        raise PackageRejected(f"model output shape {out.shape} does not match {len(manifest['class_names'])} classes")


# --------------------------------------------------------------------------------------------------------------
# the agent
# --------------------------------------------------------------------------------------------------------------


class Agent:
    """One device: enrol, pull desired state, install verified packages, infer, report telemetry."""

    def __init__(self, cfg: AgentConfig, client: Any = None,
                 runner_factory: Callable[[Installed, str], Any] | None = None) -> None:
        self.cfg = cfg
        self.state = InstallState(cfg.state_dir, cfg.trusted_keys, cfg.target)
        self._client = client
        self._own_client = client is None
        self._open = runner_factory or open_model
        self._shared_runners = runner_factory is not None
        self.runner: Any = None
        self.installed: Installed | None = None
        self.builder: Any = None
        self.spec: Any = None
        self.credential: dict[str, Any] | None = None
        self.rejected: set[str] = set()
        self.pending: list[dict[str, Any]] = []
        self.reservoir: list[list[float]] = []
        self.reservoir_seen = 0
        self.feedback: list[tuple[float, dict[str, Any]]] = []
        self.reports_sent = 0
        self.inferences = 0
        self.last_seq = 0
        self.poll_interval_s = 5.0
        self._backoff_s = 0.0
        self._rng = random.Random(hash((cfg.device_id, cfg.stream_seed)))
        self._stream: Any = None
        self._pending_rejections = 0
        self._pending_errors = 0
        self.started = time.monotonic()
        self._drifted = False
        self._startup_events: list[tuple[str, str | None, str]] = []

    # ---- plumbing -------------------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(base_url=self.cfg.server, timeout=self.cfg.request_timeout_s)
        return self._client

    def _url(self, path: str) -> str:
        return f"{self.cfg.server.rstrip('/')}{path}"

    def _headers(self) -> dict[str, str]:
        assert self.credential is not None
        return {"Authorization": f"Bearer {self.credential['credential']}"}

    @property
    def device_path(self) -> str:
        return f"/v1/devices/{self.cfg.device_id}"

    # ---- enrolment ------------------------------------------------------------------------------------------

    async def enrol(self) -> dict[str, Any]:
        """Load the stored credential, or exchange the enrolment token for one and store it (mode 0600)."""
        path = self.cfg.state_dir / "credential.json"
        if path.is_file():
            self.credential = json.loads(path.read_text())
            return self.credential
        if not self.cfg.enrolment_token:
            raise AgentStopped(f"{self.cfg.device_id}: not enrolled and no enrolment token given")
        r = await self.client.post(self._url("/v1/enrol"), json={
            "enrolment_token": self.cfg.enrolment_token, "device_id": self.cfg.device_id,
            "target": self.cfg.target})
        if r.status_code != 201:
            raise AgentStopped(f"{self.cfg.device_id}: enrolment refused ({r.status_code}): {r.text[:200]}")
        self.credential = r.json()
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.credential))
            f.flush()
            os.fsync(f.fileno())
        path.with_suffix(".tmp").replace(path)
        return self.credential

    # ---- packages -------------------------------------------------------------------------------------------

    def _activate(self, installed: Installed | None) -> None:
        from tinymlops.monitor.reference import ReferenceProfile
        from tinymlops.monitor.sketches import SketchBuilder
        from tinymlops.preprocessing import FittedPreprocessing

        if self.runner is not None and not self._shared_runners:
            self.runner.close()
        self.runner, self.installed = None, installed
        if installed is None:
            return
        self.runner = self._open(installed, self.cfg.runtime)
        self.spec = FittedPreprocessing(**installed.manifest["preprocessing"])
        self.builder = SketchBuilder(ReferenceProfile.model_validate(installed.manifest["reference"]))
        self.reservoir, self.reservoir_seen, self.feedback = [], 0, []

    def start_from_disk(self) -> Installed | None:
        """Recover the install state after a (re)start and load the current model (rollbacks are reported)."""
        installed = self.state.recover()
        if self.state.fell_back_from:
            self._startup_events.append(("rolled_back", installed.package_id if installed else None,
                                         f"installed package {self.state.fell_back_from} failed verification"))
        if installed is not None:
            try:
                self._activate(installed)
            except Exception as exc:  # the current package no longer loads: fall back to the previous one
                log.warning("%s: current package does not load (%s); rolling back", self.cfg.device_id, exc)
                self._activate(self.state.rollback())
                self._startup_events.append(("rolled_back", self.installed.package_id if self.installed else None,
                                             f"package {installed.package_id} does not load: {exc}"))
        return self.installed

    async def event(self, kind: str, package_id: str | None, version: str | None, reason: str = "") -> None:
        """Report a deployment event (best effort: a lost event is re-derivable from telemetry)."""
        with contextlib.suppress(Exception):
            await self.client.post(self._url(f"{self.device_path}/events"), headers=self._headers(), json={
                "kind": kind, "package_id": package_id, "model_version": version, "reason": reason[:2000]})

    async def install(self, package_id: str) -> bool:
        """Download, verify, stage, smoke-test and install a package; report success or rejection."""
        log.info("%s: downloading package %s", self.cfg.device_id, package_id)
        m = await self.client.get(self._url(f"{self.device_path}/packages/{package_id}"), headers=self._headers())
        m.raise_for_status()
        chunks: list[bytes] = []
        size = 0
        # streamed with a cap: a compromised server must not be able to exhaust the device's memory
        async with self.client.stream("GET", self._url(f"{self.device_path}/packages/{package_id}/artifact"),
                                      headers=self._headers()) as a:
            a.raise_for_status()
            async for chunk in a.aiter_bytes():
                size += len(chunk)
                if size > self.cfg.max_package_bytes:
                    break
                chunks.append(chunk)
        import base64

        signed = m.json()
        try:
            signature = base64.b64decode(signed.get("signature_b64", ""), validate=True)
        except ValueError:
            signature = b""
        bundle = Bundle(signed.get("manifest_json", "").encode("utf-8"), signature, b"".join(chunks))
        version = None
        try:
            if size > self.cfg.max_package_bytes:
                raise PackageRejected(f"package larger than this device accepts ({self.cfg.max_package_bytes} bytes)")
            log.info("%s: installing package %s", self.cfg.device_id, package_id)
            staged, manifest = await asyncio.to_thread(self.state.stage, bundle, package_id)
            version = str(manifest.get("model_version"))
            try:
                probe = self._open(Installed(package_id, staged, manifest), self.cfg.runtime)
                try:
                    smoke_test(probe, manifest)
                finally:
                    if not self._shared_runners:
                        probe.close()
            except PackageRejected:
                shutil.rmtree(staged, ignore_errors=True)
                raise
            except Exception as exc:  # load failure in the runtime
                shutil.rmtree(staged, ignore_errors=True)
                raise PackageRejected(f"model does not load in {self.cfg.runtime}: {exc}") from None
            installed = await asyncio.to_thread(self.state.commit, staged, package_id)
        except PackageRejected as exc:
            log.warning("%s: rejected package %s: %s", self.cfg.device_id, package_id, exc.reason)
            self.rejected.add(package_id)
            self._pending_rejections += 1
            await self.event("rejected", package_id, version, exc.reason)
            return False
        self._flush_into_pending()
        self._activate(installed)
        log.info("%s: installed package %s", self.cfg.device_id, package_id)
        await self.event("installed", package_id, version)
        return True

    async def poll(self) -> None:
        """Fetch the desired state and install it if it differs from what runs."""
        r = await self.client.get(self._url(f"{self.device_path}/desired-state"), headers=self._headers())
        if r.status_code in (401, 403):
            raise AgentStopped(f"{self.cfg.device_id}: credential refused: {r.text[:200]}")
        r.raise_for_status()
        desired = r.json()
        self.poll_interval_s = float(desired.get("poll_interval_s") or self.poll_interval_s)
        pid = desired.get("package_id")
        current = self.installed.package_id if self.installed else None
        if pid and pid != current and pid not in self.rejected:
            await self.install(pid)

    # ---- inference and telemetry ----------------------------------------------------------------------------

    async def infer_once(self) -> None:
        """Read one sensor window, run pre-processing and the model, add the result to the sketch."""
        if self.runner is None:
            return
        if self.cfg.drift is not None and not self._drifted and (
                time.monotonic() - self.started >= self.cfg.drift_after_s):
            self.set_stream(self.cfg.drift)
        if self._stream is None:
            self.set_stream(self.cfg.stream)
        window, label = next(self._stream)
        from tinymlops.preprocessing import transform

        feats = transform(self.spec, window[None])[0]
        try:
            out, latency_ms = self.runner.timed_predict(feats)
        except Exception as exc:  # a runtime fault counts as an error; the device keeps serving
            log.warning("%s: inference failed: %s", self.cfg.device_id, exc)
            self._pending_errors += 1
            return
        expected = self.installed.manifest.get("expected", {}) if self.installed else {}
        if self.cfg.emulate_target_timing and "latency_ms" in expected:
            latency_ms = float(expected["latency_ms"]) * self._rng.lognormvariate(0.0, 0.05)
        f = self.cfg.faults
        if f.slow_inference_ms:
            await asyncio.sleep(f.slow_inference_ms / 1000.0)
            latency_ms += f.slow_inference_ms
        out = np.asarray(out, dtype=np.float64).reshape(-1)
        if f.corrupt_output_rate and self._rng.random() < f.corrupt_output_rate:
            out = np.full_like(out, np.nan) if self._rng.random() < 0.5 else out * 1e6
        # outputs that are not a probability vector are counted as errors, not sketched
        if not np.all(np.isfinite(out)) or abs(out.sum() - 1.0) > 1e-2 or out.min() < -1e-6:
            self._pending_errors += 1
            return
        now = time.time()
        size_bytes = self.installed.manifest["size_bytes"] if self.installed else 0
        memory = int(getattr(self.runner, "arena_bytes", 0) or size_bytes)
        if self.cfg.emulate_target_timing and "peak_ram_bytes" in expected:
            memory = int(expected["peak_ram_bytes"])
        energy = latency_ms * self.cfg.energy_mw if self.cfg.energy_mw else 0.0  # mW x ms = uJ
        self.builder.add(feats, out, latency_ms=latency_ms, timestamp=now, energy_uj=energy, memory_bytes=memory)
        self.inferences += 1
        if self.credential and self.credential.get("samples_opt_in"):
            self.reservoir_seen += 1  # Algorithm R: a uniform sample of the window's inputs, bounded size
            if len(self.reservoir) < self.cfg.reservoir_size:
                self.reservoir.append([float(v) for v in feats])
            else:
                j = self._rng.randrange(self.reservoir_seen)
                if j < self.cfg.reservoir_size:
                    self.reservoir[j] = [float(v) for v in feats]
        if self.credential and self.credential.get("feedback_opt_in") and self._rng.random() < self.cfg.feedback_rate:
            self.feedback.append((now + self.cfg.feedback_delay_s,
                                  {"timestamp": now, "prediction": int(out.argmax()), "label": int(label)}))

    def set_stream(self, params: VibrationParams) -> None:
        """Switch the sensor stream to new generator knobs (drift injection), keeping the seed sequence."""
        from tinymlops.data.vibration import stream

        self._drifted = self._drifted or params is self.cfg.drift
        self._stream = stream(params, self.cfg.stream_seed + (1_000_003 if self._drifted else 0))

    def _flush_into_pending(self) -> None:
        """Close the current window into a report queued for sending (nothing if no model ran)."""
        if self.builder is None or self.installed is None:
            return
        sk = self.builder.flush()
        sk.errors += self._pending_errors
        sk.rejections += self._pending_rejections
        self._pending_errors = self._pending_rejections = 0
        if sk.n_inferences == 0 and sk.errors == 0 and sk.rejections == 0:
            return
        seq = max(self.last_seq + 1, time.time_ns() // 1_000_000)  # unique across restarts, retries reuse it
        self.last_seq = seq
        report: dict[str, Any] = {"seq": seq, "package_id": self.installed.package_id,
                                  "sketch": sk.model_dump()}
        if self.credential and self.credential.get("samples_opt_in") and self.reservoir:
            report["samples"], self.reservoir, self.reservoir_seen = self.reservoir, [], 0
        if self.credential and self.credential.get("feedback_opt_in"):
            now = time.time()
            due = [f for t, f in self.feedback if t <= now]
            self.feedback = [(t, f) for t, f in self.feedback if t > now]
            if due:
                report["feedback"] = due[:1024]
        self.pending.append(report)
        del self.pending[:-MAX_PENDING_REPORTS]

    async def report(self) -> None:
        """Close the window and send queued reports (kept for retry if the server is unreachable)."""
        self._flush_into_pending()
        while self.pending:
            r = await self.client.post(self._url(f"{self.device_path}/telemetry"), headers=self._headers(),
                                       json=self.pending[0])
            if r.status_code in (401, 403):
                raise AgentStopped(f"{self.cfg.device_id}: telemetry refused: {r.text[:200]}")
            if 400 <= r.status_code < 500:  # never acceptable: drop it rather than block the queue forever
                log.warning("%s: server refused report: %s", self.cfg.device_id, r.text[:300])
                self.pending.pop(0)
                continue
            r.raise_for_status()
            self.pending.pop(0)
            self.reports_sent += 1

    def _backoff(self) -> float:
        """Return the next retry delay: exponential up to 60 s with full jitter."""
        self._backoff_s = min(60.0, max(1.0, self._backoff_s * 2))
        return self._rng.uniform(0.1, self._backoff_s)

    async def run(self) -> None:
        """Run until duration_s or max_reports is reached (forever if neither is set)."""
        import httpx

        cfg = self.cfg
        t_start = self.started = time.monotonic()
        try:
            self.start_from_disk()
            while self.credential is None:
                try:
                    await self.enrol()
                except httpx.HTTPError as exc:
                    delay = self._backoff()
                    log.warning("%s: server unreachable (%s); retrying in %.1fs", cfg.device_id, exc, delay)
                    await asyncio.sleep(delay)
            self._backoff_s = 0.0
            for kind, pid, reason in self._startup_events:
                version = str(self.installed.manifest["model_version"]) if self.installed else None
                await self.event(kind, pid, version, reason)
            self._startup_events = []
            next_poll = time.monotonic()
            next_report = time.monotonic() + cfg.report_interval_s * self._rng.uniform(0.5, 1.0)
            while True:
                now = time.monotonic()
                if cfg.duration_s is not None and now - t_start >= cfg.duration_s:
                    break
                if cfg.max_reports is not None and self.reports_sent >= cfg.max_reports:
                    break
                if cfg.faults.crash_after_s is not None and now - t_start >= cfg.faults.crash_after_s:
                    raise AgentCrash(f"{cfg.device_id}: injected crash")
                if now >= next_poll:
                    try:
                        await self.poll()
                        self._backoff_s = 0.0
                        next_poll = now + self.poll_interval_s * self._rng.uniform(0.8, 1.2)
                    except httpx.HTTPError as exc:
                        next_poll = now + self._backoff()
                        log.warning("%s: poll failed: %s", cfg.device_id, exc)
                if now >= next_report:
                    try:
                        await self.report()
                    except httpx.HTTPError as exc:
                        log.warning("%s: report failed (kept for retry): %s", cfg.device_id, exc)
                    next_report = now + cfg.report_interval_s
                await self.infer_once()
                await asyncio.sleep(cfg.inference_interval_s)
            with contextlib.suppress(httpx.HTTPError):
                await self.report()
        finally:
            if self.runner is not None and not self._shared_runners:
                self.runner.close()
            if self._own_client and self._client is not None:
                await self._client.aclose()
