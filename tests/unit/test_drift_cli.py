"""CLI of the drift area: help that teaches, exit 2 on bad input, schedules that load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_drift_help_explains_the_check():
    r = runner.invoke(app, ["drift", "--help"])
    assert r.exit_code == 0
    for word in ("--window", "--json", "--target", "--cohort", "retrain", "Evidently"):
        assert word in r.output


@pytest.mark.parametrize(("args", "needle"), [
    (["m", "--window", "soon", "-c", str(REPO / "configs/drift.yaml")], "--window"),
    (["m", "--window", "0h", "-c", str(REPO / "configs/drift.yaml")], "positive"),
    (["m", "-c", "nope.yaml"], "not found"),
])
def test_drift_bad_input_exits_2_without_traceback(args: list[str], needle: str):
    r = runner.invoke(app, ["drift", *args])
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert "Traceback" not in r.output


def test_schedule_dry_run_lists_hourly_drift_and_weekly_pipeline(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(REPO)
    r = runner.invoke(app, ["schedule", "--dry-run", "--json", "--model", "other-model"])
    assert r.exit_code == 0, r.output
    deps = {d["deployment"]: d for d in json.loads(r.stdout)["deployments"]}
    assert deps["drift/drift-hourly"]["schedules"] == ["0 * * * *"]
    assert deps["drift/drift-hourly"]["parameters"]["model"] == "other-model"
    assert deps["pipeline/pipeline-weekly"]["schedules"] == ["0 3 * * 1"]


def test_schedule_without_prefect_file_exits_2(tmp_path: Path):
    r = runner.invoke(app, ["schedule", "--prefect-file", str(tmp_path / "none.yaml"), "--dry-run"])
    assert r.exit_code == 2
    assert "not found" in r.output
