"""The demo's drift config (configs/drift-demo.yaml) and how the pipeline reports what personalise changed."""

from __future__ import annotations

from pathlib import Path

from tinymlops.config import load_pipeline, resolve_relative
from tinymlops.monitor import retrain
from tinymlops.monitor.check import load_drift_config

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_checks_like_scheduled_checks_and_personalises_on_a_retrain_verdict() -> None:
    pipeline = REPO / "configs" / "pipeline.yaml"
    cfg = load_pipeline(pipeline)
    assert cfg.drift is not None
    demo_path = resolve_relative(pipeline, cfg.drift)
    assert demo_path.resolve() == (REPO / "configs" / "drift-demo.yaml").resolve()
    demo, scheduled = load_drift_config(demo_path), load_drift_config(REPO / "configs" / "drift.yaml")
    # same window, thresholds, Evidently and estimate settings: drift.yaml's calibrated figures
    assert demo.model_dump(exclude={"retrain"}) == scheduled.model_dump(exclude={"retrain"})
    assert not scheduled.retrain.enabled  # scheduled checks report; an operator turns the trigger on
    assert demo.retrain.enabled and demo.retrain.strategy == "personalise"
    plan = retrain.plan(demo.retrain, cfg.mlflow.registered_model, str(demo_path), "sqlite:///f.db", ["line-b"])
    assert plan.entrypoint == "flows.personalise:personalise_flow" and plan.params["cohorts"] == ["line-b"]
    assert demo.retrain.cooldown_s < 120  # shorter than one `make demo`: each run (a fresh fleet) gets its trigger


def _group(cohort: str, level: str, **summary: float) -> dict[str, object]:
    return {"target": "nucleo-l4r5zi", "cohort": cohort, "level": level, "summary": summary}


def test_the_follow_up_table_puts_fleet_model_and_personalised_accuracy_side_by_side() -> None:
    from flows.pipeline import _personalise_table

    after = {"seconds": 41.6, "window": "43s", "personalising": ["line-b"], "check": {"groups": [
        _group("line-b", "retrain", personalised_devices=5, personal_devices_calibration=5, personal_labelled_n=621,
               personal_base_accuracy=0.889, personal_accuracy=0.986, feedback_accuracy=0.96, feedback_n=228),
        _group("line-a", "ok", feedback_accuracy=0.97, feedback_n=230)]}}
    tbl = _personalise_table(after)
    assert [r[1] for r in tbl["rows"]] == ["line-a", "line-b"]
    a, b = tbl["rows"]
    assert a[2] == "off" and a[3] == "0.970" and a[4] == ""
    assert b[2] == "on: 5 device(s) (calibration 5)" and (b[3], b[4]) == ("0.889", "0.986") and "621" in b[5]
    assert "line-b fleet model 0.889 -> personalised 0.986 (n=621)" in tbl["title"] and "line-a 0.970" in tbl["title"]


def test_running_the_monitored_cohorts_again_needs_the_demo_fleet_and_a_switched_on_cohort(tmp_path: Path) -> None:
    import pytest

    from tinymlops.errors import UsageError
    from tinymlops.fleet.personal_switch import set_personalise
    from tinymlops.fleet.store import open_store
    from tinymlops.sim.demo import run_monitored
    from tinymlops.sim.simulator import CohortSpec

    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    cohorts = [CohortSpec(name="line-a", devices=1, target="nucleo-l4r5zi")]
    with pytest.raises(UsageError, match="no demo fleet in"):
        run_monitored("m", db, cohorts, work_dir=tmp_path)
    (tmp_path / "devices").mkdir()
    st = open_store(db)
    set_personalise(st, "line-b", True)  # another cohort's switch does not count
    st.dispose()
    with pytest.raises(UsageError, match=r"none of the cohorts \['line-a'\] personalises"):
        run_monitored("m", db, cohorts, work_dir=tmp_path)
