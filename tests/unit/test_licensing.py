"""Licensing logic: tokens, the device's meter (exact quota, grace, expiry, clock, crashes) and reconciliation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.licensing import chain, reconcile, tokens
from tinymlops.licensing.meter import LicenceRefused, Meter
from tinymlops.licensing.tokens import LicenceInvalid

T0 = 1_800_000_000.0


class Clock:
    """The device's wall clock (its owner can set it) and its monotonic clock (nobody can set it back)."""

    def __init__(self, t: float = T0) -> None:
        self.t, self.m = t, 0.0

    def __call__(self) -> float:
        return self.t

    def mono(self) -> float:
        return self.m

    def advance(self, dt: float) -> None:
        self.t += dt
        self.m += dt


@pytest.fixture
def vendor() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _meter(tmp_path: Path, vendor: Ed25519PrivateKey, clock: Clock | None = None, device: str = "dev1") -> Meter:
    clock = clock or Clock()
    return Meter(tmp_path / device, device, [vendor.public_key()], clock=clock, mono=clock.mono)


def _issue(vendor: Ed25519PrivateKey, m: Meter, seq: int = 1, **kw) -> dict[str, str]:
    args = {"device_id": m.device_id, "device_key_id": m.device_key_id, "model_name": "kws", "kind": "per-query",
            "sequence": seq, "count": 100, "now": T0, **kw}
    return tokens.issue(vendor, **args)


def _serve(m: Meter, model: str = "kws", limit: int = 10**6) -> int:
    n = 0
    try:
        while n < limit:
            m.charge(model)
            n += 1
    except LicenceRefused:
        pass
    return n


# ---- tokens ----------------------------------------------------------------------------------------------------


def test_token_verifies_and_every_tampering_is_refused(tmp_path: Path, vendor: Ed25519PrivateKey) -> None:
    m = _meter(tmp_path, vendor)
    tok = _issue(vendor, m)
    assert tokens.verify(tok, [vendor.public_key()]).count == 100
    other = Ed25519PrivateKey.generate()
    with pytest.raises(LicenceInvalid, match="untrusted key"):
        tokens.verify(tok, [other.public_key()])
    bigger = tok["payload_json"].replace('"count":100', '"count":100000')
    with pytest.raises(LicenceInvalid, match="bad signature"):
        tokens.verify({**tok, "payload_json": bigger}, [vendor.public_key()])
    spaced = json.dumps(json.loads(tok["payload_json"]), indent=1)
    with pytest.raises(LicenceInvalid, match="canonical"):
        tokens.verify({**tok, "payload_json": spaced}, [vendor.public_key()])
    with pytest.raises(LicenceInvalid, match="positive integer count"):
        _issue(vendor, m, count=None)
    with pytest.raises(LicenceInvalid, match="needs an expiry"):
        _issue(vendor, m, kind="subscription", count=None)
    with pytest.raises(LicenceInvalid, match="plain name"):
        _issue(vendor, m, model_name="../x")


def test_meter_accepts_only_its_own_newer_licences(tmp_path: Path, vendor: Ed25519PrivateKey) -> None:
    m = _meter(tmp_path, vendor)
    tok = _issue(vendor, m, seq=2)
    assert m.accept(tok) is not None
    assert m.accept(tok) is None  # fetched again at the next sync: already held
    for seq in (1, 2):  # another token at or below the highest sequence accepted: replayed or superseded
        with pytest.raises(LicenceInvalid, match="not above"):
            m.accept(_issue(vendor, m, seq=seq))
    with pytest.raises(LicenceInvalid, match="for device"):
        m.accept(_issue(vendor, m, seq=5, device_id="dev2"))
    with pytest.raises(LicenceInvalid, match="another receipt key"):
        m.accept(_issue(vendor, m, seq=6, device_key_id="0" * 16))


# ---- the meter -------------------------------------------------------------------------------------------------


def test_quota_is_exact_with_grace_and_the_refusal_says_why(tmp_path: Path, vendor: Ed25519PrivateKey) -> None:
    m = _meter(tmp_path, vendor)
    with pytest.raises(LicenceRefused, match="holds none"):
        m.charge("kws")
    m.accept(_issue(vendor, m, count=1000, grace_count=7))
    assert _serve(m) == 1007
    with pytest.raises(LicenceRefused, match=r"used up: 1007 of 1000 inferences \(\+7 grace\)"):
        m.charge("kws")
    assert m.why_not("kws") is not None
    with pytest.raises(LicenceRefused, match="holds none"):
        m.charge("other-model")
    m.close()
    again = _meter(tmp_path, vendor)  # a restart knows it is used up
    assert _serve(again) == 0
    assert again.status()["licences"][0]["used"] == 1007


def test_subscription_expires_and_a_clock_set_back_does_not_extend_it(tmp_path: Path,
                                                                     vendor: Ed25519PrivateKey) -> None:
    clock = Clock()
    m = _meter(tmp_path, vendor, clock)
    m.accept(_issue(vendor, m, kind="subscription", count=None, expires_unix_s=T0 + 3600, grace_s=60))
    assert _serve(m, limit=500) == 500
    clock.advance(3659)
    assert _serve(m, limit=5) == 5
    clock.advance(2)
    with pytest.raises(LicenceRefused, match="expired"):
        m.charge("kws")
    clock.t = T0 + 100  # the owner sets the clock back: time for the licence goes on
    with pytest.raises(LicenceRefused, match="expired"):
        m.charge("kws")
    assert m.clock_rolled_back()
    m.close()
    restarted = _meter(tmp_path, vendor, clock)  # and a restart resumes from the chain's time, not the clock
    with pytest.raises(LicenceRefused, match="expired"):
        restarted.charge("kws")


def test_a_stopped_clock_does_not_stop_a_subscription(tmp_path: Path, vendor: Ed25519PrivateKey) -> None:
    clock = Clock()
    m = _meter(tmp_path, vendor, clock)
    m.accept(_issue(vendor, m, kind="subscription", count=None, expires_unix_s=T0 + 60))
    served = 0
    for _ in range(120):  # the wall clock is frozen at T0; two minutes pass
        served += _serve(m, limit=10)
        clock.m += 1.0
    assert 550 <= served <= 610
    assert m.why_not("kws") is not None


def test_unlimited_counts_but_never_refuses(tmp_path: Path, vendor: Ed25519PrivateKey) -> None:
    m = _meter(tmp_path, vendor)
    m.accept(_issue(vendor, m, kind="unlimited", count=None))
    assert _serve(m, limit=20_000) == 20_000
    m.close_block()
    assert m.status()["licences"][0]["used"] == 20_000


def test_blocks_are_few_and_a_crash_charges_at_most_the_open_block(tmp_path: Path,
                                                                   vendor: Ed25519PrivateKey) -> None:
    m = _meter(tmp_path, vendor)
    m.accept(_issue(vendor, m, count=100_000))
    assert _serve(m, limit=50_000) == 50_000
    receipts = m.chain.state.seq
    assert receipts < 40, f"{receipts} receipts for 50,000 inferences: blocks do not grow"
    open_upto = m.chain.state.uses[m.licence.licence_id].open_upto  # type: ignore[union-attr]
    # power cut: no close receipt; and a torn half-written line at the end of the log
    with (tmp_path / "dev1" / "chain.jsonl").open("ab") as f:
        f.write(b'{"r":"{\\"v\\":')
    again = _meter(tmp_path, vendor)
    used = again.status()["licences"][0]["used"]
    assert used == open_upto and used >= 50_000
    assert _serve(again) == 100_000 - used


def test_an_edited_chain_stops_the_meter(tmp_path: Path, vendor: Ed25519PrivateKey) -> None:
    m = _meter(tmp_path, vendor)
    m.accept(_issue(vendor, m))
    _serve(m, limit=60)
    m.close()
    log = tmp_path / "dev1" / "chain.jsonl"
    lines = log.read_bytes().splitlines()
    lines[-1] = lines[-1].replace(b'\\"used\\":60', b'\\"used\\":6')
    log.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(chain.ChainDamaged, match="signature"):
        _meter(tmp_path, vendor)


# ---- reconciliation --------------------------------------------------------------------------------------------


def _upload(m: Meter, state: chain.ChainState, held: dict[int, str], lics: dict[str, tokens.Licence],
            wires: list | None = None, now: float = T0 + 10) -> reconcile.Outcome:
    out = reconcile.reconcile(state, wires if wires is not None else [r.wire() for r in m.chain.pending],
                              m.chain.public, m.device_id, lics, held.get, now)
    for r in out.accepted:
        held[r.seq] = r.hash
    return out


def test_reconcile_exact_then_detects_a_restored_old_state(tmp_path: Path, vendor: Ed25519PrivateKey) -> None:
    m = _meter(tmp_path, vendor)
    lic = m.accept(_issue(vendor, m, count=500))
    assert lic is not None
    lics = {lic.licence_id: lic}
    _serve(m, limit=120)
    m.close_block()
    snapshot = tmp_path / "snapshot"
    m.chain.close()
    shutil.copytree(tmp_path / "dev1", snapshot)
    m = _meter(tmp_path, vendor)
    held: dict[int, str] = {}
    out = _upload(m, chain.ChainState(), held, lics)
    assert out.findings == [] and out.state.uses[lic.licence_id].charged == 120
    m.chain.acknowledge(out.state.seq)
    _serve(m, limit=200)
    m.close_block()
    out2 = _upload(m, out.state, held, lics)
    assert out2.findings == [] and out2.state.uses[lic.licence_id].charged == 320
    m.close()
    # the owner restores the state copied after 120 inferences and serves 380 again
    shutil.rmtree(tmp_path / "dev1")
    shutil.copytree(snapshot, tmp_path / "dev1")
    r = _meter(tmp_path, vendor)
    assert _serve(r) == 380
    r.close_block()
    out3 = _upload(r, out2.state, held, lics)
    assert "fork" in {f.kind for f in out3.findings}
    assert out3.state.uses[lic.licence_id].charged == 320  # nothing of the forked branch was accepted
    assert not any(a.seq <= out2.state.seq for a in out3.accepted)


def test_reconcile_refuses_forgeries_duplicates_and_gaps(tmp_path: Path, vendor: Ed25519PrivateKey) -> None:
    m = _meter(tmp_path, vendor)
    lic = m.accept(_issue(vendor, m))
    assert lic is not None
    lics = {lic.licence_id: lic}
    _serve(m, limit=30)
    m.close_block()
    wires = [r.wire() for r in m.chain.pending]
    held: dict[int, str] = {}
    good = _upload(m, chain.ChainState(), held, lics, wires)
    assert good.findings == []
    # the same batch again: all duplicates, nothing accepted
    again = _upload(m, good.state, held, lics, wires)
    assert again.accepted == [] and again.duplicates == len(wires)
    # a receipt signed by another key, and one with an edited count
    thief = chain.sign(Ed25519PrivateKey.generate(), {**m.chain.pending[-1].payload, "seq": good.state.seq + 1,
                                                     "prev": good.state.hash})
    edited = {"r": wires[-1]["r"].replace('"used":30', '"used":3'), "s": wires[-1]["s"]}
    out = _upload(m, good.state, held, lics, [thief.wire(), edited])
    assert out.accepted == [] and [f.kind for f in out.findings] == ["forged", "forged"]
    # a receipt that skips ahead (receipts deleted in between)
    _serve(m, limit=5)
    m.close_block()
    out = _upload(m, good.state, held, lics, [m.chain.pending[-1].wire()])
    assert out.accepted == [] and out.findings[0].kind == "gap"


def test_reconcile_flags_clock_rollback_and_over_quota(tmp_path: Path, vendor: Ed25519PrivateKey) -> None:
    clock = Clock(T0 + 1000)
    m = _meter(tmp_path, vendor, clock)
    lic = m.accept(_issue(vendor, m, count=10))
    assert lic is not None
    _serve(m, limit=3)
    m.close_block()
    clock.t = T0 - 5000  # set back before the licence was issued
    _serve(m, limit=2)
    m.close_block()
    out = _upload(m, chain.ChainState(), {}, {lic.licence_id: lic}, now=T0 + 2000)
    assert "clock_rollback" in {f.kind for f in out.findings}
    # a patched meter that reserves past count + grace
    key = m.chain.key
    st = out.state
    over = chain.sign(key, {"device_id": "dev1", "seq": st.seq + 1, "prev": st.hash, "ts": T0 + 2000,
                            "kind": "use", "licence_id": lic.licence_id, "start": 5, "used": 50})
    out2 = reconcile.reconcile(st, [over.wire()], m.chain.public, "dev1", {lic.licence_id: lic}, {}.get, T0 + 2000)
    assert [f.kind for f in out2.findings] == ["over_quota"] and out2.state.uses[lic.licence_id].charged == 50
