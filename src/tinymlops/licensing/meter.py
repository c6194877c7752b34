"""What the device enforces offline: which licence serves a model, exact quota, expiry, write-ahead blocks.

Every inference of a licensed model is charged (:meth:`Meter.charge`) against a block reserved by a durable ``use``
receipt. The fast path is a comparison and an increment; a new block is reserved (one signed receipt, one fsync)
when the block is used up. Blocks are sized from the measured inference rate to last about ``commit_interval_s``
(at least ``min_block`` inferences, so a slow device does not commit every few inferences) and never exceed what
the licence has left, so the device serves exactly ``count + grace_count`` inferences and then refuses; a power
cut costs at most the unserved rest of one block (charged, as the device cannot prove it did not serve it). Expiry is checked against a clock that never goes back
(:meth:`Meter.now`): the wall clock, but never earlier than the last receipt's time plus the monotonic time
elapsed since; receipts carry that time, and the wall clock too (``wall``) when it lags behind (set back).
Block deadlines run on the monotonic clock, which the device's owner cannot set. Licences arrive as signed
tokens (:meth:`Meter.accept`), kept in ``licences.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tinymlops.licensing import tokens
from tinymlops.licensing.chain import DeviceChain
from tinymlops.licensing.tokens import Licence, LicenceInvalid

CLOCK_TOLERANCE_S = 300.0
TOKENS_FILE = "licences.json"


class LicenceRefused(Exception):
    """Inference refused: no licence for the model, quota used up, or expired (the message says which)."""


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


class Meter:
    """The device's licences and usage chain (``<state>/licence``)."""

    def __init__(self, directory: Path, device_id: str, trusted_keys: list[Ed25519PublicKey],
                 commit_interval_s: float = 1.0, min_block: int = 64, max_block: int = 1_000_000,
                 clock: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic) -> None:
        self.dir = Path(directory)
        self.device_id = device_id
        self.trusted_keys = trusted_keys
        self.commit_interval_s, self.clock, self.mono = commit_interval_s, clock, mono
        self.min_block, self.max_block = min_block, max_block
        self.chain = DeviceChain(self.dir, device_id)
        self._trusted_at = (self.chain.state.high_ts, mono())  # (a trusted time, the monotonic clock then)
        self.device_key_id = tokens.key_id(self.chain.public)
        self.tokens: list[dict[str, str]] = []
        self.licences: dict[str, Licence] = {}
        self._load_tokens()
        # the open block: model, licence, served so far (cumulative for that licence), block end and deadline
        self.model: str | None = None
        self.licence: Licence | None = None
        self.served = self.block_end = 0
        self.deadline = 0.0
        self.tick_mask = 0
        self._block_t0 = 0.0
        self._block_start = 0
        self._block_n = min_block
        self.refused = 0

    # ---- licences -------------------------------------------------------------------------------------------

    def _load_tokens(self) -> None:
        path = self.dir / TOKENS_FILE
        if not path.is_file():
            return
        for tok in json.loads(path.read_text()):
            try:
                lic = tokens.verify(tok, self.trusted_keys)
            except LicenceInvalid:
                continue  # a token edited on disk (or one whose key was revoked) is no licence
            if self.chain.state.accepted.get(lic.licence_id) == lic.sequence and lic.device_id == self.device_id:
                self.tokens.append(tok)
                self.licences[lic.licence_id] = lic

    def accept(self, token: object) -> Licence | None:
        """Verify a token and take it into the chain; return it (None if already held; LicenceInvalid if bad)."""
        lic = tokens.verify(token, self.trusted_keys)
        if lic.device_id != self.device_id:
            raise LicenceInvalid(f"licence {lic.licence_id[:12]} is for device {lic.device_id!r}")
        if lic.device_key_id != self.device_key_id:
            raise LicenceInvalid(f"licence {lic.licence_id[:12]} is bound to another receipt key")
        if lic.licence_id in self.licences:
            return None
        if lic.sequence <= self.chain.state.high_lseq:
            raise LicenceInvalid(f"licence {lic.licence_id[:12]} has sequence {lic.sequence}, not above "
                                 f"{self.chain.state.high_lseq} (replayed or superseded)")
        from tinymlops.fleet.install import atomic_write

        assert isinstance(token, dict)
        atomic_write(self.dir / TOKENS_FILE, json.dumps([*self.tokens, token]).encode())
        self._append({"kind": "accept", "licence_id": lic.licence_id, "lseq": lic.sequence})
        self.tokens.append(token)
        self.licences[lic.licence_id] = lic
        return lic

    def now(self) -> float:
        """Return the time expiry is checked against: the wall clock, but never earlier than the last trusted
        time plus the monotonic time since (a clock set back or stopped does not stop time for the licence)."""
        t, m = self._trusted_at
        return max(self.clock(), t + self.mono() - m)

    def clock_rolled_back(self) -> bool:
        return self.clock() < self.now() - CLOCK_TOLERANCE_S

    def _append(self, fields: dict[str, Any]) -> None:
        now, wall = self.now(), self.clock()
        if wall < now - CLOCK_TOLERANCE_S:
            fields = {**fields, "wall": round(wall, 3)}
        self.chain.append(fields, now)
        self._trusted_at = (now, self.mono())

    def charged(self, lic: Licence) -> int:
        use = self.chain.state.uses.get(lic.licence_id)
        return use.charged if use else 0

    def _choose(self, model: str, now: float) -> tuple[Licence | None, str]:
        """Return the licence to serve ``model`` with (soonest ending first, grace last), or why there is none."""
        mine = [lic for lic in self.licences.values() if lic.model_name == model]
        if not mine:
            return None, (f"model {model} needs a licence and this device holds none: issue one with `tinymlops "
                          f"license issue --device {self.device_id} --model {model}`; the device fetches it online")
        live = [lic for lic in mine if (lic.ends_unix_s() or math.inf) > now]
        in_count = [lic for lic in live if lic.count is None or self.charged(lic) < lic.count]
        in_grace = [lic for lic in live if lic.limit is not None and self.charged(lic) < lic.limit]
        for group in (in_count, in_grace):
            if group:
                return min(group, key=lambda lic: (lic.ends_unix_s() or math.inf, lic.sequence)), ""
        if not live:
            last = max(mine, key=lambda lic: lic.ends_unix_s() or 0.0)
            return None, (f"licence {last.licence_id[:12]} for {model} expired at {_when(last.ends_unix_s() or 0)}"
                          " (grace included); inference stopped until a new licence arrives from the fleet service")
        last = max(live, key=lambda lic: lic.sequence)
        return None, (f"licence {last.licence_id[:12]} for {model} is used up: {self.charged(last)} of {last.count} "
                      f"inferences (+{last.grace_count} grace); inference stopped until a new licence arrives")

    def why_not(self, model: str) -> str | None:
        """Return why ``model`` may not run now (None: it may)."""
        if self.model == model and self.served < self.block_end and self.mono() < self.deadline:
            return None
        return self._choose(model, self.now())[1] or None

    # ---- metering -------------------------------------------------------------------------------------------

    def charge(self, model: str) -> None:
        """Count one inference of ``model`` (LicenceRefused if no licence lets it run).

        The fast path is a comparison and an increment; it reads the (monotonic) clock at every inference only
        under a licence that expires, and every 8th otherwise (a clock read costs as much as the rest).
        """
        if self.model == model and self.served < self.block_end and (
                self.served & self.tick_mask or self.mono() < self.deadline):
            self.served += 1
            return
        self._reserve(model)
        self.served += 1

    def _reserve(self, model: str) -> None:
        now = self.now()
        lic, why = self._choose(model, now)
        if lic is None:
            self.close_block()
            self.refused += 1
            raise LicenceRefused(why)
        if self.licence is not None:  # size the next block to last about commit_interval_s at the measured rate
            rate = (self.served - self._block_start) / max(self.mono() - self._block_t0, 1e-3)
            self._block_n = int(min(self.max_block, max(self.min_block, rate * self.commit_interval_s)))
        self.close_block(partial_only=True)
        start = self.charged(lic)
        limit = lic.count if start < (lic.count or 0) else lic.limit
        n = self._block_n if limit is None else min(self._block_n, limit - start)
        self._append({"kind": "use", "licence_id": lic.licence_id, "start": start, "used": start + n})
        self.model, self.licence, self.served, self.block_end = model, lic, start, start + n
        self._block_start = start
        ends = lic.ends_unix_s()
        self._block_t0 = self.mono()
        # a block ends when its count is served, or exactly when the licence ends (the clock read per inference)
        self.deadline, self.tick_mask = (math.inf, 7) if ends is None else (self._block_t0 + ends - now, 0)

    def close_block(self, partial_only: bool = False) -> None:
        """Settle the open block at the exact count served with a receipt (``partial_only``: only if not all of
        it was served; a fully served block is exact as it stands)."""
        lic = self.licence
        if lic is None:
            return
        use = self.chain.state.uses.get(lic.licence_id)
        if use is not None and use.open_upto is not None and not (partial_only and self.served == use.open_upto):
            self._append({"kind": "close", "licence_id": lic.licence_id, "start": use.settled,
                               "used": self.served})
        self.model, self.licence, self.block_end = None, None, 0

    def status(self) -> dict[str, Any]:
        """Return the device's view: each licence with what it charged and has left, the chain head."""
        now = self.now()
        rows = []
        for lic in sorted(self.licences.values(), key=lambda x: x.sequence):
            charged = self.served if self.licence is lic else self.charged(lic)
            ends = lic.ends_unix_s()
            state = ("expired" if ends is not None and ends <= now else
                     "used up" if lic.limit is not None and charged >= lic.limit else
                     "grace" if lic.count is not None and charged >= lic.count else "active")
            rows.append({**lic.as_dict(), "used": charged, "remaining": None if lic.limit is None
                         else max(0, lic.limit - charged), "state": state})
        return {"device_id": self.device_id, "device_key_id": self.device_key_id, "licences": rows,
                "chain_seq": self.chain.state.seq, "acked_seq": self.chain.acked_seq,
                "pending_receipts": len(self.chain.pending), "refused": self.refused,
                "clock_rolled_back": self.clock_rolled_back()}

    def close(self) -> None:
        """Settle the open block and close the log."""
        self.close_block()
        self.chain.close()
