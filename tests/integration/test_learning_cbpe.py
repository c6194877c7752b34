"""Label-free performance estimates end to end: real MLflow store, real fleet database, the drift check and CLI.

A registered version's package carries a reference profile calibrated on held-out data. Two cohorts report
sketches without any labels: ``a`` undrifted, ``b`` with a 30 % sensor-gain shift that makes the model
confidently wrong. The check must estimate both cohorts' accuracy from the sketches alone (close to the realised
accuracy the simulation knows), judge ``b`` on the estimate and say so, and log the estimate to MLflow.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tinymlops.data.config import VibrationParams

pytestmark = pytest.mark.integration
MODEL = "cbpe-test-model"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A project home with a registered, calibrated version and a fleet store with unlabelled telemetry."""
    home = tmp_path_factory.mktemp("learning-cbpe-home")
    old = {k: os.environ.get(k) for k in ("TINYMLOPS_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["TINYMLOPS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from tinymlops import registry
    from tinymlops.fleet.store import Device, Telemetry, open_store
    from tinymlops.sim.synthetic import build_scenario

    registry.connect()
    sc = build_scenario(n_reference=1000)
    assert sc.reference.calibration is not None
    now = time.time()
    (home / "package").mkdir()
    with registry.run("cbpe-test", "train") as train:
        manifest = {"schema": 1, "model_name": MODEL, "variant": "float32", "format": "onnx", "file": "model.onnx",
                    "class_names": sc.reference.class_names, "preprocessing": sc.spec.model_dump(),
                    "reference": sc.reference.model_dump(), "metrics": sc.reference.metrics}
        (home / "package" / "manifest.json").write_text(json.dumps(manifest))
        registry.log_artifact(train.run_id, home / "package", "package")
    registry.register_version(MODEL, train.run_id, {"variant": "float32", "format": "onnx", "task": "vibration",
                                                    "train_run_id": train.run_id}, "cbpe test")
    truth: dict[str, list[np.ndarray]] = {"a": [], "b": []}
    store = open_store()
    with store.session() as s:
        for cohort, params in (("a", VibrationParams()), ("b", VibrationParams(gain=1.3))):
            for k in range(4):
                dev = f"{cohort}{k}"
                rep = sc.device_report(dev, "1", params, 500 + 10 * k + ord(cohort), 150, t0=now - 600,
                                       feedback=150)  # labels kept by the test only: they never reach the store
                truth[cohort].append(np.asarray(rep.feedback_true) == np.asarray(rep.feedback_pred))
                s.add(Device(id=dev, target="linux-x86", cohort=cohort, credential_hash=f"h-{dev}",
                             enrolled_unix_s=now - 3600))
                s.flush()
                assert rep.sketch is not None
                s.add(Telemetry(device_id=dev, seq=k + 1, model_name=MODEL, model_version="1", target="linux-x86",
                                cohort=cohort, window_start_unix_s=now - 600, window_end_unix_s=now - 60,
                                received_unix_s=now - 50, n_inferences=rep.sketch.n_inferences,
                                sketch_json=rep.sketch.model_dump_json(), samples_json=None, feedback_json=None))
    store.dispose()
    cfg = home / "drift.yaml"
    cfg.write_text("kind: drift\nwindow: 1h\nexperiment: cbpe-test-checks\nevidently: {enabled: false}\n")
    yield {"config": str(cfg), "now": now, "registry": registry,
           "true_accuracy": {c: float(np.concatenate(v).mean()) for c, v in truth.items()}}
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_check_estimates_accuracy_without_labels_and_judges_the_drifted_cohort(world) -> None:
    from tinymlops.monitor.check import run_drift_check

    result = run_drift_check(MODEL, world["config"], until=world["now"])
    by = {g.cohort: g for g in result.groups}
    for cohort in ("a", "b"):
        s = by[cohort].verdict.summary
        true_acc = world["true_accuracy"][cohort]
        assert s.get("feedback_accuracy") is None  # no labels reached the check
        assert abs(s["estimated_accuracy"] - true_acc) < 0.04, (cohort, s["estimated_accuracy"], true_acc)
        assert s["estimated_accuracy_low"] <= true_acc <= s["estimated_accuracy_high"]
    assert world["true_accuracy"]["b"] < 0.85
    est_b = [c for c in by["b"].verdict.checks if c.name == "estimated"]
    assert est_b and est_b[0].level == "retrain"
    assert any("estimated without labels" in r for r in by["b"].verdict.reasons)
    assert not [c for c in by["a"].verdict.checks if c.name == "estimated" and c.level != "ok"]
    assert "accuracy: estimated" in by["b"].markdown

    registry = world["registry"]
    run_b = registry.get_run(by["b"].run_id)
    assert run_b.metrics["estimated_accuracy"] == pytest.approx(by["b"].verdict.summary["estimated_accuracy"])
    figures = json.loads(registry.download(run_b.run_id, "drift/figures.json").read_text())
    assert figures["estimated"]["joint"] is True


def test_cli_prints_the_estimate(world) -> None:
    from typer.testing import CliRunner

    from cli import app

    r = CliRunner().invoke(app, ["drift", MODEL, "-c", world["config"], "--until", str(world["now"]), "--no-log",
                                 "--no-prefect"],
                           env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "est 0." in r.output
