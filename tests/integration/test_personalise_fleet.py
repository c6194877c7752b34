"""On-device personalisation end to end: real fleet service, real agents serving the registered package in
onnxruntime, two cohorts under the same sensor-gain drift — one personalising, one not.

The personalising devices must serve better than the fleet's model on their later labelled inferences, keep what
they learnt on the device (``personal.json``), and send only the hit counts: nothing of the fitted calibration or
head appears in anything the service stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _fleet import demo_fleet

from tinymlops.fleet import store
from tinymlops.personalise import PersonalFigures
from tinymlops.sim import simulator

pytestmark = pytest.mark.integration
MODEL = "it-personalise"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from demo_fleet(tmp_path_factory.mktemp("personalise-fleet"), MODEL)


def test_personalising_devices_recover_from_drift_and_keep_what_they_learnt(fleet: Any) -> None:
    url, token, root = fleet["srv"].url, fleet["token"], fleet["root"]
    target = "host-onnxruntime"
    simulator.publish(url, token, MODEL, [fleet["version"]], [target], {"own": target, "fleet": target})
    drift = simulator.DriftSpec(gain=1.3, offset=0.2)
    cohorts = [simulator.CohortSpec(name="own", devices=1, target=target, drift=drift, personalise=True),
               simulator.CohortSpec(name="fleet", devices=1, target=target, drift=drift)]
    result = simulator.run_simulation(url, token, cohorts, duration_s=8.0, mode="async", report_interval_s=0.5,
                             inference_interval_s=0.004, state_root=root / "sim")
    rows = store.telemetry_window(fleet["st"], MODEL, cohort="own")
    figures = [r.sketch.personal for r in rows if r.sketch is not None and r.sketch.personal is not None]
    assert figures and {f.kind for f in figures} - {"none"}, result.summary()
    evaluated = sum(f.evaluated for f in figures)
    base, personal = sum(f.correct_base for f in figures), sum(f.correct_personal for f in figures)
    assert evaluated >= 30, result.summary()
    assert personal / evaluated >= base / evaluated + 0.2, (base, personal, evaluated)
    assert personal / evaluated >= 0.9
    # the other cohort runs the fleet's model as it is and reports nothing of the kind
    assert all(r.sketch.personal is None for r in store.telemetry_window(fleet["st"], MODEL, cohort="fleet")
               if r.sketch is not None)
    # what was learnt stays on the device; only the counts left it
    saved = json.loads((root / "sim" / "own-0000" / "personal.json").read_text())
    assert saved["personalisation"]["kind"] != "none"
    assert not (root / "sim" / "fleet-0000" / "personal.json").exists()
    from sqlalchemy import text

    with fleet["st"].engine.connect() as c:
        stored = [json.loads(s) for (s,) in c.execute(text("SELECT sketch_json FROM telemetry"))]
    sent = [s["personal"] for s in stored if s.get("personal")]
    assert sent and all(set(p) == set(PersonalFigures.model_fields) for p in sent)


def test_drift_check_reports_the_cohorts_personalisation(fleet: Any, tmp_path: Path) -> None:
    from tinymlops.monitor.check import run_drift_check

    cfg = tmp_path / "drift.yaml"
    cfg.write_text("kind: drift\nwindow: 1h\nexperiment: personalise-checks\nevidently: {enabled: false}\n")
    result = run_drift_check(MODEL, cfg, store_url=f"sqlite:///{fleet['root'] / 'fleet.db'}", log=False)
    by = {g.cohort: g for g in result.groups}
    own = by["own"].verdict.summary
    assert own["personalised_devices"] == 1 and own["personal_labelled_n"] >= 30
    assert own["personal_accuracy"] > own["personal_base_accuracy"]  # type: ignore[operator]
    assert "On-device personalisation: 1 device(s) personalised" in by["own"].markdown
    assert "personalised_devices" not in by["fleet"].verdict.summary


def test_a_retrain_verdict_with_the_personalise_strategy_switches_the_drifted_cohort_on(fleet: Any,
                                                                                        tmp_path: Path) -> None:
    """The loop: drift check -> retrain verdict for cohort ``fleet`` -> strategy personalise -> its agents adapt."""
    from flows.drift import start_pipeline
    from tinymlops.monitor import retrain
    from tinymlops.monitor.check import load_drift_config, run_drift_check

    url = f"sqlite:///{fleet['root'] / 'fleet.db'}"
    cfg_path = tmp_path / "drift.yaml"
    cfg_path.write_text("kind: drift\nwindow: 1h\nexperiment: personalise-checks\nevidently: {enabled: false}\n"
                        "thresholds: {overall: {min_inferences: 50}}\n"
                        "retrain: {enabled: true, strategy: personalise, mode: inline, cooldown: 1h}\n")
    result = run_drift_check(MODEL, cfg_path, store_url=url, log=False)
    drifted = [g.cohort for g in result.groups if g.verdict.level == "retrain" and g.cohort]
    assert "fleet" in drifted, [(g.cohort, g.verdict.level, g.verdict.reasons) for g in result.groups]
    cfg = load_drift_config(cfg_path)
    started = start_pipeline(cfg.retrain, MODEL, retrain.plan(cfg.retrain, MODEL, str(cfg_path), url, drifted))
    assert started["strategy"] == "personalise" and "'fleet'" in started["result"]
    # the same agents, started again without --personalise: the cohort's switch reaches them
    target = "host-onnxruntime"
    cohort = simulator.CohortSpec(name="fleet", devices=1, target=target,
                                  drift=simulator.DriftSpec(gain=1.3, offset=0.2))
    simulator.run_simulation(fleet["srv"].url, fleet["token"], [cohort], duration_s=8.0, mode="async",
                             report_interval_s=0.5, inference_interval_s=0.004, state_root=fleet["root"] / "sim")
    figures = [r.sketch.personal for r in store.telemetry_window(fleet["st"], MODEL, cohort="fleet")
               if r.sketch is not None and r.sketch.personal is not None]
    assert figures and any(f.kind != "none" for f in figures)
    n = sum(f.evaluated for f in figures)
    assert n and sum(f.correct_personal for f in figures) > sum(f.correct_base for f in figures)


def test_operators_switch_cohorts_from_the_cli(fleet: Any) -> None:
    from typer.testing import CliRunner

    from cli import app

    srv = ["--server", fleet["srv"].url, "--token", fleet["token"]]
    r = CliRunner().invoke(app, ["fleet", "personalise", "own", "--reason", "line trial", "--json", *srv])
    assert r.exit_code == 0 and json.loads(r.stdout)["enabled"] is True, r.output
    r = CliRunner().invoke(app, ["fleet", "personalise", "own", "--off", "--json", *srv])
    assert r.exit_code == 0 and json.loads(r.stdout)["enabled"] is False
    listed = json.loads(CliRunner().invoke(app, ["fleet", "personalise", "--list", "--json", *srv]).stdout)
    assert {c["cohort"]: c["enabled"] for c in listed}["own"] is False
    bad = CliRunner().invoke(app, ["fleet", "personalise", *srv])
    assert bad.exit_code == 2 and "COHORT" in bad.output
