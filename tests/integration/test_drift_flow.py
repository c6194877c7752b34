"""Drift flow end to end: real MLflow store, real fleet database, Evidently, Prefect (test server), CLI.

Three cohorts report to the fleet store for one registered version: ``a`` normal, ``b`` with a 15 % sensor-gain
shift (devices opted in to samples and labelled feedback), ``c`` only devices whose sketches cannot be merged
(wrong bin edges, an unknown version). The check must catch ``b`` only, log the Evidently report to MLflow,
start one pipeline run through the registered deployment, and respect the cooldown on the next verdict.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tinymlops.data.config import VibrationParams
from tinymlops.monitor.reference import compute_reference

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
MODEL = "drift-test-model"


def _telemetry_rows(sc, now: float) -> tuple[list[dict], list[dict]]:
    """Simulate the devices and return device rows and telemetry rows for the fleet store."""
    devices, rows = [], []
    seq = 0

    def add(device: str, cohort: str, report, version: str = "1") -> None:
        nonlocal seq
        seq += 1
        devices.append({"id": device, "target": "cortex-m4", "cohort": cohort})
        fb = None
        if report.feedback_true is not None:
            fb = [{"timestamp": now - 100, "prediction": int(p), "label": int(t)}
                  for t, p in zip(report.feedback_true, report.feedback_pred, strict=True)]
        rows.append({"device_id": device, "seq": seq, "model_name": MODEL, "model_version": version,
                     "target": "cortex-m4", "cohort": cohort, "window_start_unix_s": now - 600,
                     "window_end_unix_s": now - 60, "received_unix_s": now - 50,
                     "n_inferences": report.sketch.n_inferences, "sketch_json": report.sketch.model_dump_json(),
                     "samples_json": json.dumps(report.samples.tolist()) if report.samples is not None else None,
                     "feedback_json": json.dumps(fb) if fb else None})

    for k in range(4):
        add(f"a{k}", "a", sc.device_report(f"a{k}", "1", VibrationParams(), 100 + k, 100, t0=now - 600))
        add(f"b{k}", "b", sc.device_report(f"b{k}", "1", VibrationParams(gain=1.15), 200 + k, 100, t0=now - 600,
                                            keep_samples=True, feedback=30))
    # cohort d: normal inputs, but one device runs 4.5x slower than profiled for the target
    add("d-ok", "d", sc.device_report("d-ok", "1", VibrationParams(), 400, 250, t0=now - 600))
    add("d-slow", "d", sc.device_report("d-slow", "1", VibrationParams(), 401, 250, t0=now - 600, latency_ms=9.0))
    # cohort c: a device on other bins (a foreign reference) and one reporting a version nobody registered
    foreign = compute_reference(sc.reference_features + 3.0, sc.predict_proba(sc.reference_features),
                                sc.spec.feature_names, sc.reference.class_names)
    from tinymlops.monitor.sketches import SketchBuilder

    b = SketchBuilder(foreign)
    for i in range(300):
        b.add(sc.reference_features[i], sc.predict_proba(sc.reference_features[i:i + 1])[0], 2.0, now - 300)
    from tinymlops.monitor.drift import DeviceReport

    add("c-wrong-bins", "c", DeviceReport("c-wrong-bins", b.flush(), "1"))
    add("c-unknown", "c", sc.device_report("c-unknown", "42", VibrationParams(), 300, 300, t0=now - 600), "42")
    return devices, rows


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, prefect_harness) -> Iterator[dict]:
    """A project home with a registered version (package + reference sample) and a fleet store with telemetry."""
    home = tmp_path_factory.mktemp("drift-home")
    old = {k: os.environ.get(k) for k in ("TINYMLOPS_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["TINYMLOPS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import pandas as pd

    from tinymlops import registry
    from tinymlops.fleet.store import Device, Telemetry, open_store
    from tinymlops.sim.synthetic import build_scenario

    registry.connect()
    sc = build_scenario(n_reference=1000)
    now = time.time()
    work = home / "work"
    (work / "package").mkdir(parents=True)
    with registry.run("drift-test", "train") as train:
        df = pd.DataFrame(sc.reference_features, columns=sc.spec.feature_names)
        df["label"] = sc.reference_labels
        df.to_csv(work / "sample.csv", index=False)
        registry.log_artifact(train.run_id, work / "sample.csv", "reference")
        manifest = {"schema": 1, "model_name": MODEL, "variant": "float32", "format": "onnx", "file": "model.onnx",
                    "class_names": sc.reference.class_names, "preprocessing": sc.spec.model_dump(),
                    "reference": sc.reference.model_dump(), "metrics": sc.reference.metrics}
        (work / "package" / "manifest.json").write_text(json.dumps(manifest))
        registry.log_artifact(train.run_id, work / "package", "package")
    version = registry.register_version(MODEL, train.run_id, {
        "variant": "float32", "format": "onnx", "task": "vibration", "train_run_id": train.run_id,
        "dataset_digest": "test", "profile.cortex-m4.peak_ram_bytes": "20000"}, "drift test")
    # what the profile stage logs on the version's run
    registry.log_metrics(train.run_id, {"cortex-m4.latency_ms": 2.0, "cortex-m4.energy_uj": 50.0})
    store = open_store()
    devices, rows = _telemetry_rows(sc, now)
    with store.session() as s:
        for d in {d["id"]: d for d in devices}.values():
            s.add(Device(credential_hash=f"h-{d['id']}", enrolled_unix_s=now - 3600, **d))
        s.flush()
        for r in rows:
            s.add(Telemetry(**r))
    store.dispose()
    cfg = home / "drift.yaml"
    cfg.write_text(
        "kind: drift\nwindow: 1h\nexperiment: drift-test-checks\nthresholds: {}\n"
        "retrain:\n  enabled: true\n  cooldown: 1h\n  mode: deployment\n"
        "  deployment: pipeline/pipeline-weekly\n  pipeline_config: configs/pipeline.yaml\n")
    yield {"home": home, "version": version, "config": str(cfg), "now": now, "registry": registry}
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def pipeline_deployment(world) -> str:
    """Register the real pipeline flow's weekly deployment on the test Prefect server."""
    from flows.deployments import build_deployments

    dep = next(d for d in build_deployments(REPO / "prefect.yaml") if d.name == "pipeline-weekly")
    return str(dep.apply())


def _pipeline_runs(deployment_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def test_flow_catches_the_drifted_cohort_logs_evidently_and_starts_one_retrain(world, pipeline_deployment):
    from flows.drift import drift_flow

    out = drift_flow(MODEL, world["config"], until=world["now"])
    by = {g["cohort"]: g for g in out["groups"]}
    assert by["a"]["level"] == "ok", by["a"]["reasons"]
    assert by["b"]["level"] == "retrain", by["b"]["reasons"]
    assert by["c"]["level"] == "incompatible sketch"
    assert by["d"]["level"] == "warn" and by["d"]["drifted_features"] == []
    assert any("d-slow: p95 latency" in r and "profiled 2 ms on cortex-m4" in r for r in by["d"]["reasons"])
    assert any("bin edges" in r for r in by["c"]["reasons"])
    assert any("unknown version 42" in r for r in by["c"]["reasons"])
    assert len(by["b"]["drifted_features"]) >= 10
    ev = by["b"]["evidently"]
    assert ev["data_drift"]["method"] == "ks" and ev["data_drift"]["n_current"] == 400
    assert set(ev["data_drift"]["drifted"]) >= set(by["b"]["drifted_features"][:5])
    assert ev["classification"]["n"] == 120
    assert by["a"]["evidently"] is None  # no opt-in samples, no labels in cohort a

    registry = world["registry"]
    run_b = registry.get_run(by["b"]["mlflow_run_id"])
    assert run_b.tags["verdict"] == "retrain" and run_b.tags["cohort"] == "b"
    assert run_b.metrics["features_retrain"] >= 9
    files = {f.path for f in registry.client().list_artifacts(run_b.run_id, "drift")}
    assert {"drift/verdict.json", "drift/figures.json", "drift/evidently_data_drift.html",
            "drift/evidently_classification.html", "drift/verdict.md"} <= files
    html = registry.download(run_b.run_id, "drift/evidently_data_drift.html")
    assert html.stat().st_size > 10_000

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["drift-drift-test-model", "drift-drift-test-model-report"])))
    kinds = {a.key: a.type for a in arts}
    assert kinds == {"drift-drift-test-model": "table", "drift-drift-test-model-report": "markdown"}
    report = next(a for a in arts if a.type == "markdown")
    assert "Drift verdict: **retrain**" in str(report.data)

    assert out["retrain"]["decision"]["start"] is True
    assert out["retrain"]["started"]["how"] == "deployment"
    runs = _pipeline_runs(pipeline_deployment)
    assert len(runs) == 1 and runs[0].parameters["config_path"] == "configs/pipeline.yaml"
    assert set(runs[0].parameters) <= {"config_path", "tracking_uri"}  # the store, filled from the environment

    # the next verdict storm within the cooldown starts nothing new
    again = drift_flow(MODEL, world["config"], until=world["now"])
    assert again["retrain"]["decision"]["start"] is False
    assert "cooldown" in again["retrain"]["decision"]["reason"]
    assert len(_pipeline_runs(pipeline_deployment)) == 1


def test_cli_drift_json_for_one_cohort_and_an_empty_window(world):
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["drift", MODEL, "-c", world["config"], "--cohort", "a", "--until", str(world["now"]),
                            "--json", "--no-log"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [(g["cohort"], g["level"]) for g in out["groups"]] == [("a", "ok")]
    assert out["groups"][0]["summary"]["n_devices"] == 4
    # a window before any telemetry: insufficient data, not a crash
    r = runner.invoke(app, ["drift", MODEL, "-c", world["config"], "--until", str(world["now"] - 7200),
                            "--window", "30m", "--json", "--no-log", "--no-retrain"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["level"] == "insufficient data"
    r = runner.invoke(app, ["drift", "no-such-model", "-c", world["config"], "--no-log"])
    assert r.exit_code != 0 and "does not exist" in r.output and "Traceback" not in r.output


def test_cli_drift_no_prefect_judges_like_the_flow_and_starts_no_retrain(world):
    from typer.testing import CliRunner

    from cli import app
    from flows.drift import drift_flow

    args = ["drift", MODEL, "-c", world["config"], "--cohort", "b", "--until", str(world["now"]), "--json", "--no-log"]
    r = CliRunner().invoke(app, [*args, "--no-prefect"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    flow = drift_flow(MODEL, world["config"], cohort="b", until=world["now"], log=False, allow_retrain=False)
    strip = [{k: g[k] for k in ("version", "target", "cohort", "level", "reasons", "drifted_features")}
             for g in out["groups"]]
    assert strip == [{k: g[k] for k in strip[0]} for g in flow["groups"]] and strip[0]["level"] == "retrain"
    assert out["retrain"]["decision"]["start"] is False and "--no-prefect" in out["retrain"]["decision"]["reason"]


def test_reference_sample_is_rebuilt_from_the_logged_dataset_config(world):
    """Without reference/sample.csv, Evidently's reference rows come from the train run's pipeline config."""
    from tinymlops import preprocessing
    from tinymlops.config import load_pipeline
    from tinymlops.data import load_dataset, split
    from tinymlops.monitor.check import ModelContext, reference_sample

    registry = world["registry"]
    cfg = load_pipeline(REPO / "configs/pipeline.yaml")
    cfg.dataset.vibration.windows_per_class = 40
    train = split(load_dataset(cfg.dataset), cfg.dataset.seed, cfg.dataset.val_fraction,
                  cfg.dataset.test_fraction)["train"]
    spec = preprocessing.fit(cfg.preprocessing, train.X, cfg.dataset.vibration.sample_rate_hz)
    with registry.run("drift-test", "train-without-sample") as r:
        registry.log_dict(r.run_id, cfg.model_dump(mode="json"), "config/pipeline.json")
    ctx = ModelContext(model=MODEL, version="1", reference=None, feature_names=spec.feature_names,  # type: ignore[arg-type]
                       tags={}, train_run_id=r.run_id, preprocessing=spec.model_dump())
    rows = reference_sample(ctx, 100)
    assert rows is not None and rows.shape == (100, len(spec.feature_names))
    full = preprocessing.transform(spec, train.X)
    assert abs(rows.mean(axis=0) - full.mean(axis=0)).max() < 0.5  # a sample of the same standardised split
