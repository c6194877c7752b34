"""The demo's loop on a microcontroller cohort: verdict -> strategy personalise -> line-b recovers.

What ``make demo`` runs after its rollout, on a small scale: two monitored cohorts of simulated nucleo-l4r5zi devices
(the real agent code serving a TFLite model in TFLite Micro), line-b with its sensors reading 15 % high. The demo's
drift config (``configs/drift-demo.yaml``) judges them through the Prefect drift flow; its retrain trigger switches
line-b's personalisation on; the same devices run again on a restarted service; a report-only check of that stretch
gives the table the pipeline prints.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from _fleet import REPO, demo_fleet

pytestmark = pytest.mark.integration
MODEL = "it-demo-personalise"
TARGET = "nucleo-l4r5zi"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Any:
    yield from demo_fleet(tmp_path_factory.mktemp("demo-personalise"), MODEL)


def test_the_demo_switches_line_b_on_and_reports_its_recovery(fleet: Any) -> None:
    from flows.drift import pipeline_drift_stage
    from flows.personalise import demo_follow_up_flow
    from flows.pipeline import _personalise_table
    from tinymlops import settings
    from tinymlops.fleet import store
    from tinymlops.fleet.personal_switch import list_settings
    from tinymlops.sim import demo_model, simulator

    t0 = time.monotonic()
    version = demo_model.register_demo_model(MODEL, fmt="tflite")  # TFLM runs TFLite flatbuffers
    pipeline = yaml.safe_load((REPO / "configs" / "pipeline.yaml").read_text())
    pipeline["mlflow"]["registered_model"] = MODEL
    pipeline["drift"] = str(REPO / "configs" / "drift-demo.yaml")  # the demo's drift config as shipped
    config = fleet["root"] / "pipeline.yaml"
    config.write_text(yaml.safe_dump(pipeline))

    simulator.publish(fleet["srv"].url, fleet["token"], MODEL, [version], [TARGET], {"line-a": TARGET, "line-b": TARGET})
    monitored = {"target": TARGET, "cohorts": [
        {"name": name, "devices": 4, "target": TARGET, "samples_opt_in": True, "feedback_opt_in": True,
         "drift": drift} for name, drift in (("line-a", {}), ("line-b", {"gain": 1.15}))]}
    cohorts = [simulator.CohortSpec.model_validate(c) for c in monitored["cohorts"]]
    # > 200 queries per device, so the IP detector judges every device: line-b's drift raises the small demo
    # model's low-margin answers, which must read as drift (retrain), not as extraction
    first = simulator.run_simulation(fleet["srv"].url, fleet["token"], cohorts, duration_s=12.0, mode="async",
                                     report_interval_s=1.0, inference_interval_s=0.02,
                                     state_root=settings.home() / "rollout-demo" / "devices")
    print("first stretch:", {c: v["inferences"] for c, v in first.summary()["cohorts"].items()})
    last = {r.device_id: r.sketch.extraction for r in store.telemetry_window(fleet["st"], MODEL, version)
            if r.sketch.extraction is not None}
    assert len(last) == 8 and all(f.distances >= 200 for f in last.values()), {d: f.distances for d, f in last.items()}
    print("low-margin share per device:", {d: round(f.low_margin_fraction, 3) for d, f in sorted(last.items())})

    # the verdict: line-b drifted, and the trigger (strategy personalise) switched exactly line-b on
    drift = pipeline_drift_stage(str(config), store_url=fleet["url"])
    levels = {g["cohort"]: g["level"] for g in drift["groups"]}
    assert levels == {"line-a": "ok", "line-b": "retrain"}, [(g["cohort"], g["reasons"]) for g in drift["groups"]]
    started = drift["retrain"]["started"]
    assert started["strategy"] == "personalise" and started["how"] == "inline", started
    assert {s["cohort"]: s["enabled"] for s in list_settings(fleet["st"])} == {"line-b": True}

    after = demo_follow_up_flow(str(config), fleet["url"], monitored, min_scored=50, max_s=60,
                                targets_dir=str(REPO / "src" / "tinymlops" / "profile" / "boards"))
    assert after["personalising"] == ["line-b"]
    assert all(n >= 50 for n in after["scored"]["line-b"].values()) and len(after["scored"]["line-b"]) == 4
    by = {g["cohort"]: g["summary"] for g in after["check"]["groups"]}
    b = by["line-b"]
    assert b["personalised_devices"] == 4 and b["personal_labelled_n"] >= 200
    assert b.get("personal_devices_calibration") == 4 and "personal_devices_head" not in b  # an MCU calibrates
    assert b["personal_accuracy"] > b["personal_base_accuracy"] + 0.02, b
    assert "personalised_devices" not in by["line-a"]  # line-a was not switched on
    rows = {r[1]: r for r in _personalise_table(after)["rows"]}
    assert rows["line-a"][2] == "off" and rows["line-b"][2].startswith("on: 4 device(s)")
    assert float(rows["line-b"][4]) > float(rows["line-b"][3])
    print(f"demo loop: {_personalise_table(after)['title']} ({time.monotonic() - t0:.0f} s)")
