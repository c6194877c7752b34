"""The agent's side of consented field data: a bounded reservoir of labelled samples, sealed and uploaded.

Nothing is kept or sent unless the service says the device has an active consent *and* hands over a field key
signed by a key the device trusts *and* the device has not refused locally (``<state>/field/refuse`` exists, e.g.
``touch``-ed by the device's owner). Per window (``window_s`` from the service) the agent keeps a uniform sample of
at most ``reservoir_size`` labelled inputs (Algorithm R), seals it for the registry's field key
(:mod:`tinymlops.fleet.field_seal`) and queues it; :meth:`FieldHook.sync` runs after each successful poll, learns
the consent and uploads what is queued. A revoked consent drops the reservoir and the queue at once.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.fleet import field_seal
from tinymlops.fleet.answers import BadAnswer, brief

log = logging.getLogger("tinymlops.agent")
MAX_QUEUED = 20  # sealed batches waiting for upload (oldest dropped beyond)
REFUSE_FILE = "refuse"


class FieldHook:
    """Field data of one agent (``<state>/field``): idle until consent, key and local permission line up."""

    def __init__(self, state_dir: Path, device_id: str, rng: random.Random | None = None) -> None:
        self.dir = Path(state_dir) / "field"
        self.device_id = device_id
        self._rng = rng or random.Random(f"field:{device_id}")
        self.consent_id: str | None = None
        self.key: field_seal.FieldKey | None = None
        self.reservoir_size, self.window_s = 32, 60.0
        self.samples: list[np.ndarray] = []
        self.labels: list[int] = []
        self.predictions: list[int] = []
        self.seen = 0
        self.window_start = time.time()
        self.queue: list[dict[str, Any]] = []
        self.last_seq = 0
        self.sent_batches = self.sent_samples = 0
        self._unsupported = False
        self._refused = self.refused_locally

    @property
    def refused_locally(self) -> bool:
        return (self.dir / REFUSE_FILE).exists()

    @property
    def active(self) -> bool:
        # the refusal is read at each sync (and here before a window is sealed), not per inference
        return self.consent_id is not None and self.key is not None and not self._refused

    def _reset(self) -> None:
        self.samples, self.labels, self.predictions, self.seen = [], [], [], 0
        self.window_start = time.time()

    def add(self, values: np.ndarray, label: int | None, prediction: int) -> None:
        """Offer one labelled inference to the window's reservoir (no-op without consent or label)."""
        if label is None or not self.active:
            return
        now = time.time()
        if now - self.window_start >= self.window_s:
            self.close_window(now)
        self.seen += 1
        x = np.asarray(values, dtype=np.float32)
        if len(self.samples) < self.reservoir_size:
            self.samples.append(x)
            self.labels.append(int(label))
            self.predictions.append(int(prediction))
            return
        j = self._rng.randrange(self.seen)
        if j < self.reservoir_size:
            self.samples[j], self.labels[j], self.predictions[j] = x, int(label), int(prediction)

    def close_window(self, now: float | None = None) -> None:
        """Seal the window's reservoir (if any) into the upload queue and start a new window."""
        now = time.time() if now is None else now
        self._refused = self.refused_locally
        if self.samples and self.active and self.consent_id and self.key:
            shapes = {s.shape for s in self.samples}
            if len(shapes) == 1:  # windows of one model input shape; a mixed window is dropped, not guessed at
                seq = self.last_seq = max(self.last_seq + 1, time.time_ns() // 1000)
                try:
                    self.queue.append(field_seal.seal(self.key, self.device_id, seq, self.consent_id,
                                                      np.stack(self.samples), self.labels, self.predictions,
                                                      (self.window_start, now)))
                except field_seal.SealError as exc:
                    log.warning("%s: field window dropped: %s", self.device_id, exc)
                del self.queue[:-MAX_QUEUED]
        self._reset()

    def _forget_local(self) -> None:
        self.consent_id, self.queue = None, []
        self._reset()

    async def sync(self, agent: Any) -> None:
        """Learn the consent and key, close a due window and upload sealed batches (errors logged, not raised)."""
        try:
            await self._sync(agent)
        except Exception as exc:  # unreachable, refused, a hostile answer: the next poll tries again
            log.warning("%s: field-data sync failed: %s", self.device_id, brief(exc))

    async def _sync(self, agent: Any) -> None:
        if self._unsupported:
            return
        self._refused = self.refused_locally
        if self._refused:
            self._forget_local()
            return
        import httpx

        base = agent.device_path
        try:
            answer = await agent._get_json(f"{base}/field-consent", 16384)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise
            log.info("%s: the fleet service has no field-data routes; field data stays off", self.device_id)
            self._unsupported = True
            return
        self._apply(answer, list(agent.keyset.trusted()))
        if not self.active:
            return
        if time.time() - self.window_start >= self.window_s:
            self.close_window()
        while self.queue:
            batch = self.queue[0]
            r = await agent.client.post(agent._url(f"{base}/field-samples"), headers=agent._headers(), json=batch)
            if r.status_code == 429 or r.status_code >= 500:
                break  # keep it for the next sync
            self.queue.pop(0)
            if r.status_code == 200:
                self.sent_batches += 1
                self.sent_samples += int(batch["count"])
            else:  # refused for good (consent changed, old key, replay): never retried
                log.warning("%s: field batch refused (%s): %s", self.device_id, r.status_code, r.text[:200])

    def _apply(self, answer: object, trusted: list[Any]) -> None:
        """Take the service's answer: consent (or none), verified key, reservoir settings."""
        if not isinstance(answer, dict):
            raise BadAnswer("field-consent answer is not an object")
        consent = answer.get("consent")
        if consent is None:
            if self.consent_id is not None:
                log.info("%s: field-data consent withdrawn; samples dropped", self.device_id)
            self._forget_local()
            return
        if not isinstance(consent, dict) or not isinstance(consent.get("consent_id"), str):
            raise BadAnswer("field-data consent is malformed")
        try:
            key = field_seal.verify_statement(answer.get("key_statement"), trusted)
        except field_seal.SealError as exc:
            self._forget_local()  # never seal for a key the registry did not sign
            raise BadAnswer(f"field key refused: {exc}") from None
        size, window = answer.get("reservoir_size"), answer.get("window_s")
        if type(size) is int and 1 <= size <= field_seal.MAX_SAMPLES:
            self.reservoir_size = size
        if isinstance(window, int | float) and not isinstance(window, bool) and 1 <= window <= 7 * 86400:
            self.window_s = float(window)
        if consent["consent_id"] != self.consent_id or (self.key and self.key.key_id != key.key_id):
            self.queue = []  # sealed under another consent or key: the service would refuse them
            self._reset()
        self.consent_id, self.key = consent["consent_id"][:32], key
