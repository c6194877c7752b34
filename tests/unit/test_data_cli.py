"""Data problems through the CLI: one line, exit code 2, no traceback, nothing registered."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from typer.testing import CliRunner

from cli import app


def project(tmp_path: Path, **dataset: object) -> Path:
    cfg = {"project": "p", "mlflow": {"experiment": "data-cli", "registered_model": "data-cli"},
           "model": {"arch": "mlp"}, "stages": ["train"],
           "dataset": {"name": "my-data", "source": "csv", "path": "data/m.csv", "label": "target", **dataset}}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "pipeline.yaml"


def test_validate_names_a_missing_data_file(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["validate", str(project(tmp_path))])
    assert res.exit_code == 2
    assert f"dataset.path: {tmp_path.resolve() / 'data' / 'm.csv'}: file not found" in res.output
    assert "Traceback" not in res.output


def test_train_on_data_with_missing_values_fails_in_one_line(tmp_path: Path, tm_home: Path) -> None:
    (tmp_path / "data").mkdir()
    df = pd.DataFrame({"a": np.arange(30.0), "b": np.ones(30), "target": ["x", "y", "z"] * 10})
    df.loc[4, "a"] = np.nan
    df.to_csv(tmp_path / "data" / "m.csv", index=False)
    cfg = project(tmp_path)
    assert CliRunner().invoke(app, ["validate", str(cfg)]).exit_code == 0
    tf_loaded_before = "tensorflow" in sys.modules  # by another test of this session
    res = CliRunner().invoke(app, ["train", "--config", str(cfg), "--no-prefect"])
    assert res.exit_code == 2, res.output
    assert "m.csv: column 'a' has 1 missing value (first at line 6); fill or drop them before training" in res.output
    assert "Traceback" not in res.output
    from tinymlops import registry
    from tinymlops.errors import RegistryError

    try:
        versions = registry.list_versions("data-cli")
    except RegistryError:
        versions = []
    assert versions == []
    assert tf_loaded_before or "tensorflow" not in sys.modules  # the data is checked before TensorFlow loads
