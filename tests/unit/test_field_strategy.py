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
    p = retrain.plan(RetrainSection(), "m", "configs/drift.yaml", "sqlite:///x.db")
    assert p.strategy == "central" and p.entrypoint == "flows.retrain:field_retrain_flow"
    assert p.params == {"model": "m", "drift_config": "configs/drift.yaml", "store_url": "sqlite:///x.db"}
    assert p.deployment is None


def test_central_without_field_data_reruns_the_pipeline():
    s = RetrainSection.model_validate({"field_data": {"enabled": False}})
    p = retrain.plan(s, "m", "configs/drift.yaml")
    assert p.entrypoint == "flows.pipeline:pipeline_flow" and p.params == {"config_path": "configs/pipeline.yaml"}
    assert p.deployment == "pipeline/pipeline-weekly"


def test_personalise_is_a_config_error_naming_the_value(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"retrain\.strategy.*'personalise'.*not built"):
        load_drift_config(_config(tmp_path, "strategy: central ", "strategy: personalise "))


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
