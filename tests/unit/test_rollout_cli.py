"""CLI of the rollout area: help that teaches, exit 2 and one line on bad input, JSON where output is data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_rollout_help_lists_the_commands_and_start_help_teaches():
    r = runner.invoke(app, ["rollout", "--help"])
    assert r.exit_code == 0
    for word in ("start", "status", "abort", "demo"):
        assert word in r.output
    r = runner.invoke(app, ["rollout", "start", "--help"])
    assert r.exit_code == 0
    for word in ("candidate-<target>", "--override", "--target", "--db", "rolled back", "resumes"):
        assert word in r.output
    r = runner.invoke(app, ["history", "--help"])
    assert r.exit_code == 0 and "canary/production" in r.output


@pytest.mark.parametrize(("args", "needle"), [
    (["rollout", "start", "m", "-c", "nope.yaml"], "not found"),
    (["rollout", "start", "m", "-c", str(REPO / "configs/drift.yaml")], "kind"),
])
def test_bad_input_exits_2_with_one_line(args: list[str], needle: str):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_status_abort_and_history_on_an_empty_fleet(tm_home: Path):
    db = f"sqlite:///{tm_home / 'fleet.db'}"
    r = runner.invoke(app, ["rollout", "status", "--db", db, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == []
    r = runner.invoke(app, ["rollout", "abort", "nope", "--db", db])
    assert r.exit_code == 2 and "no rollout 'nope'" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["history", "no-such-model", "--db", db])
    assert r.exit_code == 1 and "does not exist" in r.output and "Traceback" not in r.output


def test_start_needs_one_target_for_an_explicit_version(tm_home: Path):
    from tinymlops.sim.demo_model import register_demo_model

    register_demo_model("cli-rollout", seed=0)
    r = runner.invoke(app, ["rollout", "start", "cli-rollout", "-c", str(REPO / "configs/rollout.yaml"),
                            "--version", "1", "-t", "host-onnxruntime", "-t", "raspberry-pi-zero-2-w",
                            "--db", f"sqlite:///{tm_home / 'fleet.db'}"])
    assert r.exit_code == 2 and "exactly one --target" in r.output
    r = runner.invoke(app, ["rollout", "start", "cli-rollout", "-c", str(REPO / "configs/rollout.yaml"),
                            "--db", f"sqlite:///{tm_home / 'fleet.db'}"])
    assert r.exit_code == 2 and "candidate-<target>" in r.output
    r = runner.invoke(app, ["history", "cli-rollout", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["alias_moves"] == []
