"""What the service checks when a device uploads receipts, and the usage it reconciles per licence.

:func:`reconcile` takes the device's chain as the service holds it (head, per-licence use), the device's receipt
key, the licences issued to it and a batch of uploaded receipts, and returns which receipts extend the chain and
what was found. Never accepted: a receipt whose signature does not verify with the device's registered key
(``forged``), one for another device, one the service already holds (``duplicate``: a retry, or a replay), one
that differs from the receipt the service holds at its position or does not link to the head (``fork``: the
device restored an old counter state or replays another branch of its chain), or one after a hole (``gap``:
receipts deleted). Accepted as history but flagged: arithmetic the device's own meter would refuse
(``counter``: a rewound or edited counter, charged on top), a licence never issued to it (``unknown_licence``),
use past the quota (``over_quota``) or past the expiry (``after_expiry``), and time going back
(``clock_rollback``) or ahead of the service (``clock_ahead``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tinymlops.licensing.chain import ChainState, LicenceUse, Receipt, ReceiptInvalid, parse
from tinymlops.licensing.tokens import Licence

CLOCK_TOLERANCE_S = 300.0
#: finding kinds that mean the device's metering was tampered with (the rest are notes)
TAMPER = ("forged", "fork", "gap", "counter", "unknown_licence", "over_quota", "after_expiry", "clock_rollback",
          "clock_ahead", "clock_skew")


@dataclass
class Finding:
    kind: str
    seq: int | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "detail": self.detail}


@dataclass
class Outcome:
    """The receipts that extend the chain, the findings, and the chain after them."""

    accepted: list[Receipt] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    duplicates: int = 0
    state: ChainState = field(default_factory=ChainState)


def reconcile(state: ChainState, wires: list[Any], public_key: Ed25519PublicKey, device_id: str,
              licences: dict[str, Licence], stored_hash: Callable[[int], str | None], now: float) -> Outcome:
    """Check an uploaded batch against the chain the service holds (``state`` is not modified).

    ``stored_hash(seq)`` returns the hash of the receipt the service holds at ``seq`` (None if it holds none).
    """
    st = ChainState.from_json(state.to_json())
    out = Outcome(state=st)
    for wire in wires:
        try:
            r = parse(wire, public_key)
        except ReceiptInvalid as exc:
            out.findings.append(Finding("forged", None, str(exc)))
            continue
        p = r.payload
        if p["device_id"] != device_id:
            out.findings.append(Finding("forged", r.seq, f"receipt names device {str(p['device_id'])[:64]!r}"))
            continue
        if r.seq <= st.seq:
            held = st.hash if r.seq == st.seq else stored_hash(r.seq)
            if held == r.hash:
                out.duplicates += 1
            else:
                out.findings.append(Finding("fork", r.seq, f"receipt {r.seq} differs from the one held: the device "
                                            f"restored an old counter state or replays another branch{_claim(p)}"))
            continue
        if r.seq > st.seq + 1:
            out.findings.append(Finding("gap", r.seq, f"receipts {st.seq + 1}..{r.seq - 1} missing (deleted?)"))
            break
        if p["prev"] != st.hash:
            out.findings.append(Finding("fork", r.seq, f"receipt {r.seq} does not link to receipt {st.seq}: a "
                                        f"restored or rewritten chain{_claim(p)}"))
            continue
        lic = licences.get(p.get("licence_id") or "")
        if r.kind != "genesis" and lic is None:
            out.findings.append(Finding("unknown_licence", r.seq, f"licence {p['licence_id'][:16]} was never issued "
                                        "to this device"))
        elif r.kind == "accept" and lic is not None and p["lseq"] != lic.sequence:
            out.findings.append(Finding("unknown_licence", r.seq, f"accepts licence {lic.licence_id[:12]} with "
                                        f"sequence {p['lseq']}, issued with {lic.sequence}"))
        ts = float(p["ts"])
        if ts < st.high_ts - CLOCK_TOLERANCE_S or (lic is not None and ts < lic.issued_unix_s - CLOCK_TOLERANCE_S):
            out.findings.append(Finding("clock_rollback", r.seq, f"receipt time {ts:.0f} is before a time the chain "
                                        "or its licence already passed"))
        elif "wall" in p:
            out.findings.append(Finding("clock_rollback", r.seq, f"device clock {p['wall']:.0f} was set back "
                                        f"{ts - p['wall']:.0f} s behind the meter's time"))
        if ts > now + CLOCK_TOLERANCE_S:
            out.findings.append(Finding("clock_ahead", r.seq, f"receipt time {ts:.0f} is ahead of the service"))
        problem = st.advance(r, strict=False)
        if problem:
            out.findings.append(Finding("counter", r.seq, problem))
        if r.kind == "use" and lic is not None:
            use = st.uses.get(lic.licence_id, LicenceUse())
            if lic.limit is not None and use.charged > lic.limit:
                out.findings.append(Finding("over_quota", r.seq, f"licence {lic.licence_id[:12]} charged "
                                            f"{use.charged} of {lic.limit} (count + grace)"))
            ends = lic.ends_unix_s()
            if ends is not None and ts > ends:
                out.findings.append(Finding("after_expiry", r.seq, f"licence {lic.licence_id[:12]} used at "
                                            f"{ts:.0f}, after it ended at {ends:.0f}"))
        out.accepted.append(r)
    return out


def _claim(p: dict[str, Any]) -> str:
    """Return what a refused receipt claims (the vendor's evidence of usage the chain does not count)."""
    if p["kind"] == "use":
        return f"; it reserves inferences {p['start']}..{p['used']} of licence {p['licence_id'][:12]}"
    return f"; a {p['kind']} receipt"


def usage_row(lic: Licence, use: LicenceUse | None, accepted: bool) -> dict[str, Any]:
    """Return a licence's reconciled usage: charged (an unsettled block counted in full), settled, overage."""
    use = use or LicenceUse()
    return {**lic.as_dict(), "accepted": accepted, "used": use.charged, "settled": use.settled,
            "unsettled": use.in_flight, "remaining": None if lic.count is None else max(0, lic.count - use.charged),
            "overage": 0 if lic.count is None else max(0, use.charged - lic.count)}
