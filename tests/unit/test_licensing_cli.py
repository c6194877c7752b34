"""`tinymlops license`: usage errors exit 2 with one line; the device's own view reads its state offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from cli import app
from tinymlops.fleet import packages
from tinymlops.licensing import tokens
from tinymlops.licensing.meter import Meter


@pytest.mark.parametrize(("args", "message"), [
    (["--kind", "subscription"], "needs --days or --expires"),
    (["--count", "5", "--kind", "unlimited"], "--count is required for --kind per-query"),
    (["--kind", "unlimited", "--days", "3"], "never expires"),
    (["--count", "5", "--expires", "2027-13-01"], "expected YYYY-MM-DD"),
    (["--count", "5", "--days", "1", "--expires", "2027-01-01"], "not both"),
    (["--count", "5", "--kind", "monthly"], "expected one of per-query"),
])
def test_issue_usage_errors_exit_2(args: list[str], message: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path))
    res = CliRunner().invoke(app, ["license", "issue", "--device", "d", "--model", "m", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_status_of_a_device_state_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path / "home"))
    vendor = Ed25519PrivateKey.generate()
    (tmp_path / "vendor.pub").write_bytes(packages.public_key_pem(vendor.public_key()))
    state = tmp_path / "dev-7"
    m = Meter(state / "licence", "dev-7", [vendor.public_key()])
    m.accept(tokens.issue(vendor, device_id="dev-7", device_key_id=m.device_key_id, model_name="kws",
                          kind="per-query", count=12, grace_count=2, sequence=1))
    for _ in range(13):
        m.charge("kws")
    m.close()
    res = CliRunner().invoke(app, ["license", "status", "--state-dir", str(state), "--trusted-key",
                                   str(tmp_path / "vendor.pub"), "--json"])
    assert res.exit_code == 0, res.output
    view = json.loads(res.output)
    assert view["device_id"] == "dev-7" and view["pending_receipts"] >= 3
    assert [(r["used"], r["remaining"], r["state"]) for r in view["licences"]] == [(13, 1, "grace")]
    missing = CliRunner().invoke(app, ["license", "status", "--state-dir", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no licence state" in missing.output
