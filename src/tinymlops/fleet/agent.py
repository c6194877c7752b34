"""Edge agent: the process that stands for one device. Server answers are untrusted (:mod:`.answers`).

It enrols once (one-time token -> own credential, kept in ``<state>/credential.json``), then loops: poll its
desired state (interval from the server, jitter, exponential backoff on errors), download a new package, verify it
(signature with the trusted key, target, sha256/size, and that it loads and runs in the target's runtime),
install it atomically and keep the previous one for rollback (:mod:`tinymlops.fleet.install`); read sensor windows
from its input source (:mod:`tinymlops.fleet.inputs`: a file, stdin, a socket — or, in the simulator, a synthetic
stream), run inference with the package's pre-processing; and report a telemetry sketch every interval (raw
inputs stay on the device unless the device opted in to a bounded reservoir sample; labelled feedback is opt-in
too). Install success, rejection (with its reason) and rollbacks are reported as deployment events.

The agent has no simulation code: what a simulated device does differently (synthetic windows, emulated target
timing, injected faults) comes in through the input source and the runner factory (``tinymlops.sim``).
Cancelling :meth:`Agent.run` (SIGINT/SIGTERM in ``tinymlops agent``) stops it between steps; an install
interrupted half-way leaves only a staging directory, wiped at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.fleet import agent_field, agent_licence, agent_personal, answers, crypto, device_state
from tinymlops.fleet.answers import AgentStopped, BadAnswer, brief
from tinymlops.fleet.inputs import InputSource
from tinymlops.fleet.install import Installed, InstallState, atomic_write, open_model, smoke_test
from tinymlops.fleet.packages import Bundle, PackageRejected, is_safe_name

__all__ = ["Agent", "AgentConfig", "AgentStopped", "InstallState", "Installed", "atomic_write", "open_model", "smoke_test"]

log = logging.getLogger("tinymlops.agent")
MAX_PENDING_REPORTS = 200
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
    reservoir_size: int = 16
    feedback_rate: float = 0.2
    feedback_delay_s: float = 1.0
    energy_mw: float | None = None
    duration_s: float | None = None
    max_reports: int | None = None
    request_timeout_s: float = 10.0
    max_package_bytes: int = 64 * 1024 * 1024
    verify: Any = True  # httpx verify: an ssl.SSLContext pinned to the server's CA (tinymlops.fleet.tls)
    credential_max_age_s: float | None = None  # rotate the device credential when older (None: never)
    personalise: bool = False  # adapt the model to this device's inputs and labels (tinymlops.personalise)


class Agent:
    """One device: enrol, pull desired state, install verified packages, infer on its input, report telemetry.

    Args:
        source: where sensor windows come from (:class:`~tinymlops.fleet.inputs.InputSource`).
        client: a shared ``httpx.AsyncClient`` (default: the agent opens and closes its own).
        runner_factory: opens an installed package's model in a runtime (default :func:`open_model`); runners
            from a factory are not closed by the agent unless the factory has ``shared = False``. A runner's ``timed_predict`` may be a coroutine
            function (a runtime that waits on a co-processor, or the simulator's fault wrapper).
    """

    def __init__(self, cfg: AgentConfig, source: InputSource, client: Any = None,
                 runner_factory: Callable[[Installed, str], Any] | None = None) -> None:
        self.cfg = cfg
        self.source = source
        self.keyset = device_state.load_keyset(cfg.state_dir, cfg.trusted_keys)  # rotations followed so far
        self.state = InstallState(cfg.state_dir, self.keyset.trusted(), cfg.target, cfg.device_id)
        self.licence = agent_licence.LicenceHook(self.state, cfg.device_id)  # offline licences (licensed packages)
        self.personal = agent_personal.DevicePersonaliser.for_runtime(cfg.state_dir, cfg.personalise, cfg.runtime)
        self.field = agent_field.FieldHook(cfg.state_dir, cfg.device_id)  # consented labelled samples, sealed
        self._client, self._own_client = client, client is None
        self._open = runner_factory or open_model
        self._shared_runners = bool(getattr(runner_factory, "shared", runner_factory is not None))
        self.runner: Any = None
        self.installed: Installed | None = None
        self.builder: Any = None
        self.spec: Any = None
        self.credential: dict[str, Any] | None = None
        self.rejected: set[str] = set()
        self.pending: list[dict[str, Any]] = []
        self.reservoir: list[list[float]] = []
        self.reservoir_seen = self.reports_sent = self.inferences = self.last_seq = self._pending_rejections = 0
        self.feedback: list[tuple[float, dict[str, Any]]] = []
        self.poll_interval_s, self._backoff_s, self._pending_errors = 5.0, 0.0, 0
        self._rng = random.Random(cfg.device_id)
        self.started = time.monotonic()
        self._startup_events: list[tuple[str, str | None, str]] = []

    # ---- plumbing -------------------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(base_url=self.cfg.server, timeout=self.cfg.request_timeout_s,
                                             verify=self.cfg.verify)
        return self._client

    def _url(self, path: str) -> str:
        return f"{self.cfg.server.rstrip('/')}{path}"

    def _headers(self) -> dict[str, str]:
        assert self.credential is not None
        return {"Authorization": f"Bearer {self.credential['credential']}"}

    @property
    def device_path(self) -> str:
        return f"/v1/devices/{self.cfg.device_id}"

    async def _get_json(self, path: str, max_bytes: int = answers.MAX_ANSWER_BYTES) -> Any:
        return await answers.get_json(self.client, self._url(path), self._headers(), max_bytes, self.cfg.device_id)

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
            "enrolment_token": self.cfg.enrolment_token, "device_id": self.cfg.device_id, "target": self.cfg.target,
            "encryption_public_key": crypto.public_b64(crypto.device_key(self.cfg.state_dir))})
        if r.status_code != 201:
            raise AgentStopped(f"{self.cfg.device_id}: enrolment refused ({r.status_code}): {r.text[:200]}")
        answer = r.json()
        if not isinstance(answer, dict) or not isinstance(answer.get("credential"), str):
            raise BadAnswer("enrolment answer carries no credential")
        self.credential = device_state.save_credential(self.cfg.state_dir, answer)
        return self.credential

    # ---- packages -------------------------------------------------------------------------------------------

    def _activate(self, installed: Installed | None) -> None:
        from tinymlops.monitor.sketches import SketchBuilder

        if self.runner is not None and not self._shared_runners:
            self.runner.close()
        self.runner, self.installed = None, installed
        if installed is None:
            return
        self.runner = self.licence.wrap(self.personal.wrap(self._open(installed, self.cfg.runtime), installed.manifest),
                                        installed)
        self.spec, reference = answers.checked_specs(installed.manifest)
        self.builder = SketchBuilder(reference)
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

    async def _reject(self, package_id: str, version: str | None, reason: str) -> bool:
        log.warning("%s: rejected package %s: %s", self.cfg.device_id, package_id[:128], reason)
        self.rejected.add(package_id)
        self._pending_rejections += 1
        if is_safe_name(package_id):
            await self.event("rejected", package_id, version, reason)
        return False

    async def install(self, package_id: str, authorisation: object = None) -> bool:
        """Download, verify, stage, smoke-test and install a package (``authorisation``: a signed rollback's)."""
        if not is_safe_name(package_id):  # never put a server-chosen string into a URL or a path unchecked
            return await self._reject(package_id, None, "package id is not a plain name")
        log.info("%s: downloading package %s", self.cfg.device_id, package_id)
        signed = await self._get_json(f"{self.device_path}/packages/{package_id}")
        if not isinstance(signed, dict):
            raise BadAnswer("signed manifest answer is not an object")
        # streamed with a cap: a compromised server must not be able to exhaust the device's memory
        async with self.client.stream("GET", self._url(f"{self.device_path}/packages/{package_id}/artifact"),
                                      headers=self._headers()) as a:
            a.raise_for_status()
            artifact, size = await answers.read_capped(a, self.cfg.max_package_bytes)
        import base64

        try:
            signature = base64.b64decode(str(signed.get("signature_b64", "")), validate=True)
        except ValueError:
            signature = b""
        bundle = Bundle(str(signed.get("manifest_json", "")).encode("utf-8", "replace"), signature, artifact)
        version = None
        try:
            if size > self.cfg.max_package_bytes:
                raise PackageRejected(f"package larger than this device accepts ({self.cfg.max_package_bytes} bytes)")
            log.info("%s: installing package %s", self.cfg.device_id, package_id)
            wrapped = signed.get("wrapped_key") if isinstance(signed.get("wrapped_key"), str) else None
            staged, manifest = await asyncio.to_thread(self.state.stage, bundle, package_id, authorisation, wrapped)
            version = str(manifest.get("model_version"))
            try:
                answers.checked_specs(manifest)
                probe = self._open(Installed(package_id, staged, manifest, self.state.content_key(
                    staged, package_id, manifest)), self.cfg.runtime)
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
            return await self._reject(package_id, version, exc.reason)
        self._flush_into_pending()
        self._activate(installed)
        log.info("%s: installed package %s", self.cfg.device_id, package_id)
        await self.event("installed", package_id, version)
        return True

    async def poll(self) -> None:
        """Fetch the desired state and install it if it differs from what runs."""
        desired = await self._get_json(f"{self.device_path}/desired-state", 65536)
        if not isinstance(desired, dict):
            raise BadAnswer("desired state is not an object")
        interval = desired.get("poll_interval_s")
        if isinstance(interval, (int, float)) and not isinstance(interval, bool) and 0.05 <= interval <= 3600:
            self.poll_interval_s = float(interval)
        self.personal.enabled = self.cfg.personalise or desired.get("personalise") is True  # the cohort's switch
        if device_state.rotation_due(self.credential, self.cfg.credential_max_age_s):
            self.credential = await device_state.rotate_credential(
                self.client, self._url(f"{self.device_path}/credential"), self._headers(), self.cfg.state_dir,
                self.credential or {})
        kv = desired.get("keyset_version")  # signing keys rotated or revoked: follow the signed chain first
        if type(kv) is int and kv > self.keyset.version:
            self.keyset = await device_state.follow_keys(self._get_json, self.device_path, self.cfg.state_dir,
                                                         self.keyset)
            self.state.trusted_keys, self.rejected = self.keyset.trusted(), set()  # retry what the old keys refused
        pid = desired.get("package_id")
        current = self.installed.package_id if self.installed else None
        if pid is not None and not isinstance(pid, str):
            raise BadAnswer("desired package_id is not a string")
        if pid and pid != current and pid not in self.rejected:
            if len(self.rejected) > 1000:
                self.rejected.clear()
            await self.install(pid, desired.get("rollback_authorisation"))
        await self.licence.sync(self)  # register the receipt key, fetch licences, upload usage receipts
        await self.field.sync(self)  # learn the field-data consent, upload sealed samples

    # ---- inference and telemetry ----------------------------------------------------------------------------

    async def infer_once(self) -> bool:
        """Read one sensor window, run pre-processing and the model, add the result to the sketch.

        Returns whether a window was read (False: no model yet, no licence for it, or no window ready).
        """
        if self.runner is None or not self.licence.admit(self.installed):  # unlicensed: the window stays unread
            return False
        window = self.source.read()
        if window is None:
            return False
        from tinymlops.preprocessing import transform

        try:
            feats = transform(self.spec, window.values[None])[0]
        except ValueError as exc:  # a window of the wrong shape: count it, keep serving
            log.warning("%s: input window refused: %s", self.cfg.device_id, exc)
            self._pending_errors += 1
            return True
        try:
            result = self.runner.timed_predict(feats)
            out, latency_ms = await result if inspect.isawaitable(result) else result
        except Exception as exc:  # a runtime fault counts as an error; the device keeps serving
            log.warning("%s: inference failed: %s", self.cfg.device_id, exc)
            self._pending_errors += 1
            return True
        out = np.asarray(out, dtype=np.float64).reshape(-1)  # not a probability vector: an error, not sketched
        if not np.all(np.isfinite(out)) or abs(out.sum() - 1.0) > 1e-2 or out.min() < -1e-6:
            self._pending_errors += 1
            return True
        self._record(feats, out, float(latency_ms), window.label)
        self.field.add(window.values, window.label, int(out.argmax()))  # only with consent and a label
        return True

    def _record(self, feats: np.ndarray, out: np.ndarray, latency_ms: float, label: int | None) -> None:
        """Add one inference to the sketch, the opt-in reservoir sample and the opt-in feedback queue."""
        now = time.time()
        size_bytes = self.installed.manifest["size_bytes"] if self.installed else 0
        memory = int(getattr(self.runner, "arena_bytes", 0) or size_bytes)
        energy = latency_ms * self.cfg.energy_mw if self.cfg.energy_mw else 0.0  # mW x ms = uJ
        self.builder.add(feats, out, latency_ms=latency_ms, timestamp=now, energy_uj=energy, memory_bytes=memory)
        self.inferences += 1
        self.personal.observe(feats, out, label)  # on-device personalisation (off unless enabled)
        if self.credential and self.credential.get("samples_opt_in"):
            self.reservoir_seen += 1  # Algorithm R: a uniform sample of the window's inputs, bounded size
            if len(self.reservoir) < self.cfg.reservoir_size:
                self.reservoir.append([float(v) for v in feats])
            else:
                j = self._rng.randrange(self.reservoir_seen)
                if j < self.cfg.reservoir_size:
                    self.reservoir[j] = [float(v) for v in feats]
        if (label is not None and self.credential and self.credential.get("feedback_opt_in")
                and self._rng.random() < self.cfg.feedback_rate):
            self.feedback.append((now + self.cfg.feedback_delay_s,
                                  {"timestamp": now, "prediction": int(out.argmax()), "label": int(label)}))

    def _flush_into_pending(self, final: bool = False) -> None:
        """Close the current window into a report queued for sending (nothing if no model ran).

        ``final`` (the agent is stopping) sends the feedback still waiting for its delay too.
        """
        if self.builder is None or self.installed is None:
            return
        sk = self.builder.flush()
        sk.errors += self._pending_errors
        sk.rejections += self._pending_rejections
        sk.personal = self.personal.figures()
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
            now = float("inf") if final else time.time()
            due = [f for t, f in self.feedback if t <= now]
            self.feedback = [(t, f) for t, f in self.feedback if t > now]
            if due:
                report["feedback"] = due[:1024]
        self.pending.append(report)
        del self.pending[:-MAX_PENDING_REPORTS]

    async def report(self, final: bool = False) -> None:
        """Close the window and send queued reports (kept for retry if the server is unreachable)."""
        self._flush_into_pending(final)
        while self.pending:
            r = await self.client.post(self._url(f"{self.device_path}/telemetry"), headers=self._headers(),
                                       json=self.pending[0])
            if r.status_code in (401, 403):
                raise AgentStopped(f"{self.cfg.device_id}: telemetry refused: {r.text[:200]}")
            if r.status_code == 429:  # rate-limited: keep it for the next report interval
                break
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
                if cfg.duration_s is not None and time.monotonic() - t_start >= cfg.duration_s:
                    return  # never reached the server within its run time
                try:
                    await self.enrol()
                except (httpx.HTTPError, ValueError) as exc:
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
                if now >= next_poll:
                    try:
                        await self.poll()
                        self._backoff_s = 0.0
                        next_poll = now + self.poll_interval_s * self._rng.uniform(0.8, 1.2)
                    except AgentStopped:
                        raise
                    except Exception as exc:  # any answer at all: log, back off, keep serving the current model
                        next_poll = now + self._backoff()
                        log.warning("%s: poll failed: %s", cfg.device_id, brief(exc))
                if now >= next_report:
                    try:
                        await self.report()
                    except AgentStopped:
                        raise
                    except Exception as exc:
                        log.warning("%s: report failed (kept for retry): %s", cfg.device_id, brief(exc))
                    next_report = now + cfg.report_interval_s
                await self.infer_once()
                if self.source.exhausted:  # end of the input: a last report, then stop
                    break
                await asyncio.sleep(cfg.inference_interval_s)
            with contextlib.suppress(httpx.HTTPError, ValueError):
                await self.report(final=self.source.exhausted)  # at the end of the input, delayed labels too
        finally:
            if self.runner is not None and not self._shared_runners:
                self.runner.close()
            if self._own_client and self._client is not None:
                await self._client.aclose()

