"""The agent's side of licensing: gate and count inferences of licensed packages, sync with the service online.

A package whose signed manifest says ``"licence_required": true`` runs only under a licence for its model
(:mod:`tinymlops.licensing.meter`): :meth:`LicenceHook.wrap` puts a counting wrapper around its runner,
:meth:`LicenceHook.admit` keeps the agent from reading a window it may not serve (logging why, once per reason).
Unlicensed packages run exactly as before, unwrapped. :meth:`LicenceHook.sync` runs after each successful poll:
it registers the device's receipt key once, fetches new licences, settles the open block and uploads receipts
(batches of 500); the service's acknowledgement lets the device drop them. Offline, nothing here needs the network.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tinymlops.fleet.answers import BadAnswer, brief
from tinymlops.licensing.chain import ChainDamaged, public_b64
from tinymlops.licensing.meter import LicenceRefused, Meter
from tinymlops.licensing.tokens import LicenceInvalid

log = logging.getLogger("tinymlops.agent")
UPLOAD_BATCH = 500
REGISTERED_FILE = "registered"


def licence_required(manifest: dict[str, Any] | None) -> bool:
    """Return whether a package's signed manifest makes it run only under a licence."""
    return bool(manifest) and manifest.get("licence_required") is True  # type: ignore[union-attr]


class MeteredRunner:
    """A runner that charges each inference to the device's licence before running it (refuses without a meter)."""

    __slots__ = ("meter", "model", "runner", "why")  # attribute reads on the per-inference path: half the cost

    def __init__(self, runner: Any, meter: Meter | None, model: str, why: str = "") -> None:
        self.runner, self.meter, self.model, self.why = runner, meter, model, why

    def timed_predict(self, x: Any) -> Any:
        m = self.meter
        if m is None:
            raise LicenceRefused(self.why)
        if m.model == self.model and m.served < m.block_end and (m.served & m.tick_mask or m.mono() < m.deadline):
            m.served += 1  # Meter.charge's fast path, inlined: this runs once per inference
        else:
            m.charge(self.model)  # LicenceRefused past the quota: the agent counts an error
        return self.runner.timed_predict(x)

    def close(self) -> None:
        if self.meter is not None:
            self.meter.close_block()
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)


class LicenceHook:
    """Licensing for one agent (``<state>/licence``); the meter opens on first need."""

    def __init__(self, state: Any, device_id: str) -> None:
        self.state = state  # the agent's InstallState: its root, and the trusted keys (which rotations replace)
        self.dir = Path(state.root) / "licence"
        self.device_id = device_id
        self._meter: Meter | None = None
        self.damaged: str | None = None
        self._said: str | None = None
        self._registered = self._unsupported = False
        self.refused = 0

    def meter(self) -> Meter | None:
        """Open the meter (None if its chain is damaged: licensed inference then stays refused)."""
        if self._meter is None and self.damaged is None:
            try:
                self._meter = Meter(self.dir, self.device_id, list(self.state.trusted_keys))
            except (ChainDamaged, OSError, ValueError) as exc:
                self.damaged = f"licence state in {self.dir} is damaged ({exc}); licensed inference stopped"
                log.error("%s: %s", self.device_id, self.damaged)
        return self._meter

    def wrap(self, runner: Any, installed: Any) -> Any:
        """Return the runner, counting inferences if the package needs a licence."""
        manifest = getattr(installed, "manifest", None)
        if runner is None or not licence_required(manifest):
            return runner
        return MeteredRunner(runner, self.meter(), str(manifest["model_name"]), self.damaged or "")  # type: ignore[index]

    def admit(self, installed: Any) -> bool:
        """Return whether the agent may serve the installed package now (logs why not, once per reason)."""
        manifest = getattr(installed, "manifest", None)
        if not licence_required(manifest):
            return True
        meter = self.meter()
        why = self.damaged if meter is None else meter.why_not(str(manifest["model_name"]))  # type: ignore[index]
        if why is None:
            self._said = None
            return True
        self.refused += 1
        if why != self._said:
            log.error("%s: inference refused: %s", self.device_id, why)
            self._said = why
        return False

    # ---- online ---------------------------------------------------------------------------------------------

    async def sync(self, agent: Any) -> None:
        """Register the receipt key, fetch licences, upload receipts (errors are logged, never raised)."""
        try:
            await self._sync(agent)
        except Exception as exc:  # unreachable, refused, a hostile answer: the next poll tries again
            log.warning("%s: licence sync failed: %s", self.device_id, brief(exc))

    async def _sync(self, agent: Any) -> None:
        meter = self.meter()
        if meter is None:
            return
        meter.trusted_keys = list(self.state.trusted_keys)
        base, headers = agent.device_path, agent._headers()
        key = public_b64(meter.chain.key)
        marker = self.dir / REGISTERED_FILE
        runs_licensed = licence_required(getattr(agent.installed, "manifest", None))
        if not self._registered and (not marker.is_file() or marker.read_text() != key):
            if self._unsupported and not runs_licensed:
                return
            r = await agent.client.put(agent._url(f"{base}/licence-key"), headers=headers, json={"public_b64": key})
            if r.status_code == 404 and not runs_licensed:  # a fleet service without licensing: say so once
                log.info("%s: the fleet service has no licence routes; licensing stays idle", self.device_id)
                self._unsupported = True
                return
            if r.status_code not in (200, 201):
                raise BadAnswer(f"receipt key not registered ({r.status_code}): {r.text[:200]}")
            marker.write_text(key)
        self._registered = True
        if not (runs_licensed or meter.licences or meter.chain.pending):
            return
        answer = await agent._get_json(f"{base}/licences", 1 << 20)
        if not isinstance(answer, dict) or not isinstance(answer.get("licences"), list):
            raise BadAnswer("licence answer is not {licences: [...]}")
        for token in answer["licences"][:1000]:
            try:
                lic = meter.accept(token)
            except LicenceInvalid as exc:
                if str(exc) != self._said:
                    log.warning("%s: licence refused: %s", self.device_id, exc)
                    self._said = str(exc)
                continue
            if lic is not None:
                log.info("%s: licence %s accepted: %s for %s", self.device_id, lic.licence_id[:12], lic.kind,
                         lic.model_name)
        meter.close_block()  # the service sees the exact count, not an open block
        await self.upload(agent, meter)

    async def upload(self, agent: Any, meter: Meter) -> None:
        """Send pending receipts in batches; drop what the service acknowledged."""
        import time

        while meter.chain.pending:
            batch = meter.chain.pending[:UPLOAD_BATCH]
            r = await agent.client.post(agent._url(f"{agent.device_path}/receipts"), headers=agent._headers(),
                                        json={"receipts": [x.wire() for x in batch], "now_unix_s": time.time()})
            if r.status_code != 200:
                raise BadAnswer(f"receipts refused ({r.status_code}): {r.text[:200]}")
            answer = r.json()
            acked = answer.get("acked_seq") if isinstance(answer, dict) else None
            if type(acked) is not int:
                raise BadAnswer("receipt answer carries no acked_seq")
            for f in answer.get("findings", [])[:5]:
                if isinstance(f, dict) and f.get("kind") != "duplicate":
                    log.error("%s: the service flagged this device's usage: %s", self.device_id, f.get("detail"))
            before = len(meter.chain.pending)
            meter.chain.acknowledge(min(acked, batch[-1].seq))
            if len(meter.chain.pending) == before:
                break  # nothing acknowledged (the service misses earlier receipts): keep them, retry later
