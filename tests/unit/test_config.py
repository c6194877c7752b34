"""Config loading: valid files load; bad ones fail with file, key path and reason (exit 2 from the CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from tinymlops.config import PipelineConfig, detect_kind, load, load_pipeline
from tinymlops.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
MINIMAL = """
project: p
mlflow: {experiment: e, registered_model: m}
dataset: {name: digits}
model: {arch: mlp}
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["pipeline.yaml", "digits.yaml"])
def test_shipped_pipeline_configs_are_valid(name: str) -> None:
    cfg = load_pipeline(REPO / "configs" / name)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.mlflow.registered_model


def test_minimal_config_gets_defaults_and_a_stable_hash(tmp_path: Path) -> None:
    cfg = load_pipeline(write(tmp_path, MINIMAL))
    assert cfg.train.epochs == 30 and cfg.preprocessing.features == "identity"
    assert cfg.config_hash() == load_pipeline(write(tmp_path, MINIMAL, "d.yaml")).config_hash()
    cfg2 = load_pipeline(write(tmp_path, MINIMAL + "train: {epochs: 3}\n", "e.yaml"))
    assert cfg2.config_hash() != cfg.config_hash()


def test_unknown_key_is_named_with_its_path(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL + "train: {epocs: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(p)
    assert str(p) in str(err.value) and "train.epocs: unknown key" in str(err.value)


def test_wrong_type_and_out_of_range_values_are_rejected(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL + "train: {epochs: many, learning_rate: 5}\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(p)
    msg = str(err.value)
    assert "train.epochs" in msg and "train.learning_rate" in msg


def test_missing_required_key(tmp_path: Path) -> None:
    p = write(tmp_path, "project: p\ndataset: {name: digits}\nmodel: {arch: mlp}\n")
    with pytest.raises(ConfigError, match="mlflow: required key is missing"):
        load_pipeline(p)


def test_unknown_arch_and_technique(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL.replace("arch: mlp", "arch: transformer") +
              "compress: {variants: [{technique: magic}]}\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(p)
    assert "unknown arch 'transformer'" in str(err.value)
    assert "compress.variants.0" in str(err.value)


def test_duplicate_variant_names(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL + "compress: {variants: [{technique: ptq-int8}, {technique: ptq-int8}]}\n")
    with pytest.raises(ConfigError, match="repeated"):
        load_pipeline(p)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load(write(tmp_path, "- 1\n- 2\n"))


def test_kind_detection() -> None:
    assert detect_kind({"kind": "drift"}) == "drift"
    assert detect_kind({"dataset": {}, "model": {}}) == "pipeline"
    assert detect_kind({"core": "cortex-m4", "clock_mhz": 80}) == "target"
    with pytest.raises(ConfigError, match="cannot tell"):
        detect_kind({"foo": 1})


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(REPO / "configs" / "pipeline.yaml"), "--json"])
    assert ok.exit_code == 0 and '"valid": true' in ok.stdout
    bad = runner.invoke(app, ["validate", str(write(tmp_path, MINIMAL + "bogus: 1\n"))])
    assert bad.exit_code == 2
    assert "bogus: unknown key" in bad.output
    assert "Traceback" not in bad.output
    missing = runner.invoke(app, ["validate", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "not found" in missing.output
