"""Usage receipts: a hash chain signed with the device's own Ed25519 key, durable before inferences are served.

A receipt is canonical JSON (schema ``tinymlops.receipt/1``): ``device_id``, ``seq`` (0, 1, 2, ...), ``prev``
(sha256 of the previous receipt's bytes; 64 zeros for the genesis), ``ts`` (the meter's time, which never goes
back; ``wall``: the device's wall clock when it is behind that, i.e. was set back), ``kind`` and, by kind:

* ``genesis`` — the chain starts (a device has exactly one; a second one means its state was wiped or restored);
* ``accept`` — a licence (``licence_id``, ``lseq`` = its sequence) enters the device;
* ``use`` — write-ahead reservation: the device may serve inferences ``start`` < n <= ``used`` under a licence;
  ``start`` must equal what that licence has charged so far (an unclosed block counts in full);
* ``close`` — the exact count served in the open block (``start`` <= ``used`` <= the block's end).

The same arithmetic (:class:`LicenceUse`) runs on the device and on the service. On the device the chain lives in
``<state>/licence/``: ``chain.jsonl`` (append + fsync per receipt) after ``checkpoint.json`` (the state at the
last receipt the service acknowledged; older receipts are dropped then). A torn last line after a power cut is
cut off at start-up; any other damage stops metered inference (:class:`ChainDamaged`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tinymlops.licensing.tokens import MAX_COUNT, canonical

SCHEMA = "tinymlops.receipt/1"
KINDS = ("genesis", "accept", "use", "close")
GENESIS_PREV = "0" * 64
MAX_RECEIPT_BYTES = 1024
KEY_FILE = "receipt_ed25519.key"


class ReceiptInvalid(ValueError):
    """A receipt is malformed or its signature does not verify with the device's key."""


class ChainDamaged(Exception):
    """The device's own chain does not verify (edited, truncated in the middle, or another key's)."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Receipt:
    """One verified receipt: its fields, exact bytes, signature and hash."""

    payload: dict[str, Any]
    body: bytes
    signature_b64: str

    @property
    def seq(self) -> int:
        return int(self.payload["seq"])

    @property
    def kind(self) -> str:
        return str(self.payload["kind"])

    @property
    def hash(self) -> str:
        return sha256_hex(self.body)

    def wire(self) -> dict[str, str]:
        """Return the upload form ``{"r": payload JSON, "s": base64 signature}``."""
        return {"r": self.body.decode(), "s": self.signature_b64}


def _check_payload(p: object) -> dict[str, Any]:
    if not isinstance(p, dict) or p.get("v") != SCHEMA:
        raise ReceiptInvalid(f"not a {SCHEMA} receipt")
    seq, prev, ts, kind = p.get("seq"), p.get("prev"), p.get("ts"), p.get("kind")
    if type(seq) is not int or not 0 <= seq < 2**53:
        raise ReceiptInvalid("receipt seq must be a non-negative integer")
    if not isinstance(prev, str) or len(prev) != 64 or not all(c in "0123456789abcdef" for c in prev):
        raise ReceiptInvalid("receipt prev must be 64 lowercase hex digits")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not 0 < ts < 1e11:
        raise ReceiptInvalid("receipt ts must be a unix time")
    if kind not in KINDS:
        raise ReceiptInvalid(f"receipt kind must be one of {', '.join(KINDS)}")
    if not isinstance(p.get("device_id"), str) or not 0 < len(p["device_id"]) <= 128:
        raise ReceiptInvalid("receipt device_id must be a string")
    if (kind == "genesis") != (seq == 0) or (seq == 0) != (prev == GENESIS_PREV):
        raise ReceiptInvalid("only the genesis receipt has seq 0 and an all-zero prev")
    if kind in ("accept", "use", "close"):
        lid = p.get("licence_id")
        if not isinstance(lid, str) or not 16 <= len(lid) <= 64:
            raise ReceiptInvalid("receipt licence_id must be a licence id")
    if kind == "accept" and (type(p.get("lseq")) is not int or not 0 < p["lseq"] < 2**53):
        raise ReceiptInvalid("accept receipt needs the licence sequence lseq")
    if kind in ("use", "close"):
        start, used = p.get("start"), p.get("used")
        if type(start) is not int or type(used) is not int or not 0 <= start <= used <= 2 * MAX_COUNT:
            raise ReceiptInvalid("use/close receipt needs integers 0 <= start <= used")
        if kind == "use" and used == start:
            raise ReceiptInvalid("a use receipt reserves at least one inference")
    wall = p.get("wall")
    if wall is not None and (not isinstance(wall, (int, float)) or isinstance(wall, bool) or not 0 < wall < 1e11):
        raise ReceiptInvalid("receipt wall must be a unix time")
    allowed = {"v", "device_id", "seq", "prev", "ts", "wall", "kind", "licence_id", "lseq", "start", "used"}
    if set(p) - allowed:
        raise ReceiptInvalid(f"receipt has unknown fields {sorted(set(p) - allowed)[:5]}")
    return p


def parse(wire: object, public_key: Ed25519PublicKey) -> Receipt:
    """Check a receipt's form and signature with the device's key; return it (ReceiptInvalid says why not)."""
    from tinymlops.fleet.safejson import UnsafeJSON, loads_bounded

    if not isinstance(wire, dict) or not isinstance(wire.get("r"), str) or not isinstance(wire.get("s"), str):
        raise ReceiptInvalid("receipt must be {r: payload JSON, s: base64 signature}")
    body = wire["r"].encode("utf-8", "replace")
    try:
        payload = loads_bounded(body, MAX_RECEIPT_BYTES, 2)
        signature = base64.b64decode(wire["s"], validate=True)
    except (UnsafeJSON, ValueError) as exc:
        raise ReceiptInvalid(f"receipt is not readable: {exc}") from None
    if not isinstance(payload, dict) or canonical(payload) != body:
        raise ReceiptInvalid("receipt payload is not canonical JSON")
    _check_payload(payload)
    try:
        public_key.verify(signature, body)
    except InvalidSignature:
        raise ReceiptInvalid("receipt signature does not verify with the device's key (forged or altered)") from None
    return Receipt(payload, body, wire["s"])


def sign(key: Ed25519PrivateKey, payload: dict[str, Any]) -> Receipt:
    """Sign a receipt payload (checked first)."""
    body = canonical({"v": SCHEMA, **payload})
    _check_payload(json.loads(body))
    return Receipt(json.loads(body), body, base64.b64encode(key.sign(body)).decode())


@dataclass
class LicenceUse:
    """What one licence has charged: ``settled`` inferences plus an open write-ahead block up to ``open_upto``."""

    settled: int = 0
    open_upto: int | None = None

    @property
    def charged(self) -> int:
        """Return the inferences charged (an open block in full: a device that crashed may have served it)."""
        return self.settled if self.open_upto is None else self.open_upto

    @property
    def in_flight(self) -> int:
        return 0 if self.open_upto is None else self.open_upto - self.settled

    def apply(self, kind: str, start: int, used: int) -> str | None:
        """Apply a use/close receipt; return what is wrong with it (None: applied)."""
        if kind == "use":
            if start != self.charged:
                return f"use block starts at {start}, the licence had charged {self.charged} (counter rewound)"
            self.settled, self.open_upto = start, used
            return None
        if self.open_upto is None:
            return "close without an open block"
        if not self.settled <= used <= self.open_upto or start != self.settled:
            return f"close at {used} outside the open block {self.settled}..{self.open_upto}"
        self.settled, self.open_upto = used, None
        return None


def load_or_create_key(directory: Path) -> Ed25519PrivateKey:
    """Return the device's receipt key (``<dir>/receipt_ed25519.key``, 0600), creating it on first use."""
    path = directory / KEY_FILE
    if path.is_file():
        return Ed25519PrivateKey.from_private_bytes(path.read_bytes())
    key = Ed25519PrivateKey.generate()
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption()))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return key


def public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_from_b64(text: str) -> Ed25519PublicKey:
    """Return an Ed25519 public key from base64 of its 32 raw bytes (ValueError if it is not one)."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass
class ChainState:
    """The chain's head and what it established: per-licence use, highest licence sequence and timestamp."""

    seq: int = -1
    hash: str = GENESIS_PREV
    high_ts: float = 0.0
    high_lseq: int = 0
    accepted: dict[str, int] = field(default_factory=dict)  # licence id -> its sequence
    uses: dict[str, LicenceUse] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "high_ts": self.high_ts, "high_lseq": self.high_lseq,
                "accepted": self.accepted,
                "uses": {k: [u.settled, u.open_upto] for k, u in self.uses.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChainState:
        return cls(int(d["seq"]), str(d["hash"]), float(d["high_ts"]), int(d["high_lseq"]),
                   {str(k): int(v) for k, v in d["accepted"].items()},
                   {str(k): LicenceUse(int(v[0]), None if v[1] is None else int(v[1])) for k, v in d["uses"].items()})

    def advance(self, r: Receipt, strict: bool = True) -> str | None:
        """Apply the next receipt of the chain; return what is wrong with it (None: fine).

        A receipt that does not link to the head is never applied. ``strict`` (the device's own chain) refuses
        a receipt whose arithmetic is wrong too; otherwise (the service) it is applied as history, charging the
        inferences it claims on top of what the licence had charged, and the problem is returned as a finding.
        """
        p = r.payload
        if r.seq != self.seq + 1 or p["prev"] != self.hash:
            return f"receipt {r.seq} does not follow {self.seq} ({self.hash[:12]})"
        problem = None
        if r.kind == "accept":
            if p["lseq"] <= self.high_lseq and p["licence_id"] not in self.accepted:
                problem = f"licence sequence {p['lseq']} is not above {self.high_lseq}"
            if problem is None or not strict:
                self.accepted[p["licence_id"]] = p["lseq"]
                self.high_lseq = max(self.high_lseq, p["lseq"])
        elif r.kind in ("use", "close"):
            if p["licence_id"] not in self.accepted:
                problem = f"receipt charges licence {p['licence_id'][:12]} the chain never accepted"
            use = self.uses.setdefault(p["licence_id"], LicenceUse()) if problem is None or not strict else None
            if use is not None:
                before = LicenceUse(use.settled, use.open_upto)
                problem = problem or use.apply(r.kind, p["start"], p["used"])
                if problem and not strict:  # history as claimed, on top of what was charged
                    extra = p["used"] - p["start"] if r.kind == "use" else 0
                    use.settled, use.open_upto = before.charged, before.charged + extra if extra else None
        if problem and strict:
            return problem
        self.seq, self.hash = r.seq, r.hash
        self.high_ts = max(self.high_ts, float(p["ts"]))
        return problem


class DeviceChain:
    """The device's chain on disk: checkpoint + append-only fsynced log of receipts not yet acknowledged."""

    def __init__(self, directory: Path, device_id: str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.key = load_or_create_key(self.dir)
        self.public = self.key.public_key()
        self.log_path, self.cp_path = self.dir / "chain.jsonl", self.dir / "checkpoint.json"
        self.acked_seq = -1
        self.state = ChainState()
        self.pending: list[Receipt] = []
        self._load()
        self._log = self.log_path.open("ab")
        if self.state.seq < 0:
            self.append({"kind": "genesis"})

    def _load(self) -> None:
        if self.cp_path.is_file():
            try:
                cp = json.loads(self.cp_path.read_text())
                self.state, self.acked_seq = ChainState.from_json(cp["state"]), int(cp["acked_seq"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ChainDamaged(f"{self.cp_path}: unreadable checkpoint ({exc})") from None
        if not self.log_path.is_file():
            return
        data = self.log_path.read_bytes()
        good = data.rfind(b"\n") + 1
        if good < len(data):  # a torn last line (power cut mid-append): it was never fsynced, drop it
            with self.log_path.open("r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        for n, line in enumerate(data[:good].splitlines()):
            try:
                r = parse(json.loads(line), self.public)
            except (ValueError, ReceiptInvalid) as exc:
                raise ChainDamaged(f"{self.log_path}: line {n + 1}: {exc}") from None
            if r.seq <= self.state.seq:
                continue  # already inside the checkpoint (a crash between checkpoint and log rewrite)
            problem = self.state.advance(r)
            if problem:
                raise ChainDamaged(f"{self.log_path}: line {n + 1}: {problem}")
            self.pending.append(r)

    def append(self, fields: dict[str, Any], ts: float | None = None) -> Receipt:
        """Sign the next receipt (``ts``: now), apply it and make it durable (fsync) before returning."""
        import time

        r = sign(self.key, {"device_id": self.device_id, "seq": self.state.seq + 1, "prev": self.state.hash,
                            "ts": round(time.time() if ts is None else ts, 3), **fields})
        problem = self.state.advance(r)
        if problem:
            raise ChainDamaged(problem)
        self._log.write(canonical(r.wire()) + b"\n")
        self._log.flush()
        os.fsync(self._log.fileno())
        self.pending.append(r)
        return r

    def acknowledge(self, seq: int) -> None:
        """The service holds every receipt up to ``seq``: checkpoint the state there and drop them from the log."""
        keep = [r for r in self.pending if r.seq > seq]
        if seq <= self.acked_seq or len(keep) == len(self.pending):
            return
        from tinymlops.fleet.install import atomic_write

        replay = ChainState.from_json(self._checkpoint_state())
        for r in self.pending:
            if r.seq <= seq:
                replay.advance(r)
        atomic_write(self.cp_path, json.dumps({"acked_seq": seq, "state": replay.to_json()}).encode())
        atomic_write(self.log_path, b"".join(canonical(r.wire()) + b"\n" for r in keep))
        self._log.close()
        self._log = self.log_path.open("ab")
        self.pending, self.acked_seq = keep, seq

    def _checkpoint_state(self) -> dict[str, Any]:
        if self.cp_path.is_file():
            return dict(json.loads(self.cp_path.read_text())["state"])
        return ChainState().to_json()

    def close(self) -> None:
        self._log.close()
