"""Retrain strategy per verdict (configs/drift.yaml ``retrain.strategy``): what a retrain verdict starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinymlops.errors import ConfigError
from tinymlops.monitor import retrain
from tinymlops.monitor.check import load_drift_config
from tinymlops.monitor.config import RetrainSection

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, old: str, new: str) -> Path:
    text = (REPO / "configs" / "drift.yaml").read_text()
    assert old in text
    p = tmp_path / "drift.yaml"
    p.write_text(text.replace(old, new))
    return p


def test_central_with_field_data_starts_the_field_retrain_flow():
    p = retrain.plan(RetrainSection.model_validate({"field_data": {"enabled": True}}), "m", "configs/drift.yaml",
                     "sqlite:///x.db")
    assert p.strategy == "central" and p.entrypoint == "flows.retrain:field_retrain_flow"
    assert p.params == {"model": "m", "drift_config": "configs/drift.yaml", "store_url": "sqlite:///x.db"}
    assert p.deployment is None
    module, func = p.entrypoint.split(":")
    flow = getattr(__import__(module, fromlist=[func]), func)  # what the subprocess/inline start imports
    assert flow.name == "field-retrain" and set(p.params) <= set(flow.parameters.properties)


def test_central_without_field_data_reruns_the_pipeline():
    s = RetrainSection.model_validate({"field_data": {"enabled": False}})
    p = retrain.plan(s, "m", "configs/drift.yaml")
    assert p.entrypoint == "flows.pipeline:pipeline_flow" and p.params == {"config_path": "configs/pipeline.yaml"}
    assert p.deployment == "pipeline/pipeline-weekly"


def test_personalise_switches_exactly_the_drifted_cohorts(tmp_path: Path):
    cfg = load_drift_config(_config(tmp_path, "strategy: central ", "strategy: personalise "))
    p = retrain.plan(cfg.retrain, "m", "d.yaml", "sqlite:///f.db", ["line-b", "line-c", "line-b"])
    assert p.entrypoint == "flows.personalise:personalise_flow"
    assert p.params == {"model": "m", "cohorts": ["line-b", "line-c"], "store_url": "sqlite:///f.db"}


def test_unknown_strategy_names_the_choices(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"retrain\.strategy.*'swarm'.*central, federated, personalise"):
        load_drift_config(_config(tmp_path, "strategy: central ", "strategy: swarm "))


@pytest.mark.parametrize(("key", "bad"), [("weight: 2.0", "weight: 0"), ("test_share: 0.3", "test_share: 1.5"),
                                          ("candidate_alias: candidate", "candidate_alias: 'a b'")])
def test_field_data_values_are_checked(tmp_path: Path, key: str, bad: str):
    with pytest.raises(ConfigError, match=r"retrain\.field_data\."):
        load_drift_config(_config(tmp_path, key, bad))


def test_the_shipped_config_is_central_with_field_data():
    cfg = load_drift_config(REPO / "configs" / "drift.yaml")
    assert cfg.retrain.strategy == "central" and cfg.retrain.field_data.enabled


def test_field_retrain_with_too_few_samples_trains_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from tinymlops.monitor.field_retrain import run_field_retrain

    drift = _config(tmp_path, "pipeline_config: configs/pipeline.yaml",
                    f"pipeline_config: {REPO / 'configs' / 'pipeline.yaml'}")
    res = run_field_retrain("vibration-classifier", drift, f"sqlite:///{tmp_path / 'fleet.db'}")
    assert res.new_version is None and not res.candidate_set and "min_samples 40" in res.reason
    with pytest.raises(ConfigError, match="registers 'vibration-classifier', not 'other'"):
        run_field_retrain("other", drift, f"sqlite:///{tmp_path / 'fleet.db'}")
