"""A CSV time-series project trains for real: windows, group split, mlflow.data inputs and `tinymlops lineage`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.integration

STATES = ("idle", "spin", "wobble")


def write_project(root: Path) -> Path:
    """Accelerometer-like sessions at 100 Hz, one machine state per session, rows shuffled in the file."""
    rng = np.random.default_rng(0)
    parts = []
    for s in range(15):
        state = s % 3
        t = np.arange(96) / 100.0
        x = rng.normal(0, 0.2, 96) + (np.sin(2 * np.pi * 5 * t) if state == 1 else 0)
        y = rng.normal(0, 0.2, 96) + (0.8 * np.sign(np.sin(2 * np.pi * 2 * t)) if state == 2 else 0)
        parts.append(pd.DataFrame({"timestamp": 1000 * s + t, "session": f"run-{s:02d}", "ax": x, "ay": y,
                                   "state": STATES[state]}))
    df = pd.concat(parts).sample(frac=1.0, random_state=0)
    (root / "data").mkdir(parents=True)
    df.to_csv(root / "data" / "sessions.csv", index=False)
    cfg = {
        "project": "it-data", "mlflow": {"experiment": "it-data", "registered_model": "it-data"},
        "dataset": {"name": "machine-sessions", "source": "csv", "path": "data/sessions.csv", "label": "state",
                    "features": ["ax", "ay"],
                    "windows": {"size": 32, "stride": 16, "time": "timestamp", "group": "session"},
                    "split": {"strategy": "group", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 1}},
        "model": {"arch": "mlp", "params": {"hidden": [16]}},
        "train": {"epochs": 3, "early_stopping_patience": 0},
        "stages": ["train"],
    }
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root / "pipeline.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import os

    home = tmp_path_factory.mktemp("data-home")
    old = os.environ.get("TINYMLOPS_HOME")
    os.environ["TINYMLOPS_HOME"] = str(home)
    try:
        from tinymlops import registry
        from tinymlops.train import run_train

        registry.connect()
        cfg_path = write_project(tmp_path_factory.mktemp("proj"))
        res = run_train(cfg_path)
        yield {"cfg": cfg_path, "res": res}
    finally:
        if old is None:
            os.environ.pop("TINYMLOPS_HOME", None)
        else:
            os.environ["TINYMLOPS_HOME"] = old


def test_splits_are_logged_with_file_source_hash_and_schema(trained: dict[str, Any]) -> None:
    from tinymlops import registry

    res = trained["res"]
    csv_path = (trained["cfg"].parent / "data" / "sessions.csv").resolve()
    sha = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    run = registry.get_run(res.run_id)
    by_context = {d.context: d for d in run.datasets}
    assert set(by_context) == {"train", "val", "test"}
    for ctx, d in by_context.items():
        assert d.name == f"machine-sessions-{ctx}" and d.digest == res.dataset_digests[ctx]
        assert json.loads(d.source) == {"uri": csv_path.as_uri()}
        assert d.tags["tinymlops.source_sha256"] == sha
        assert '\\"shape\\": [-1, 32, 2]' in d.schema
    assert run.params["dataset.split"] == "group" and run.params["dataset.split_by"] == "session"
    assert run.params["dataset.class_names"] == "idle,spin,wobble"
    # the manifest carries the label mapping the model was trained with
    mv = registry.get_version("it-data", res.version)
    manifest = json.loads(Path(registry.download(mv.run_id, "package/manifest.json")).read_text())
    assert manifest["class_names"] == list(STATES)


def test_lineage_shows_the_dataset_source_split_and_schema(trained: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from cli import app

    res = trained["res"]
    out = CliRunner().invoke(app, ["lineage", "it-data", res.version, "--json"])
    assert out.exit_code == 0, out.output
    step = json.loads(out.stdout)["chain"][0]
    csv_path = (trained["cfg"].parent / "data" / "sessions.csv").resolve()
    assert step["uri"] == csv_path.as_uri() and step["format"] == "csv" and step["split"] == "group"
    assert step["sha256"] == hashlib.sha256(csv_path.read_bytes()).hexdigest()
    assert step["schema"] == "float32 [-1, 32, 2]" and step["digest"] == res.dataset_digests["train"]
    assert sum(step["rows"].values()) == 15 * 5  # (96 - 32) / 16 + 1 windows per session
    human = CliRunner().invoke(app, ["lineage", "it-data", res.version])
    assert human.exit_code == 0 and "split group" in human.stdout and f"sha256 {step['sha256'][:12]}" in human.stdout


def test_stages_rebuild_the_same_splits_from_the_logged_config(trained: dict[str, Any], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """export/monitor rebuild splits from config/pipeline.json: the logged path is absolute, the digests match."""
    from tinymlops import registry
    from tinymlops.config import PipelineConfig
    from tinymlops.data import load_splits

    res = trained["res"]
    logged = json.loads(Path(registry.download(res.run_id, "config/pipeline.json")).read_text())
    monkeypatch.chdir(tmp_path)
    assert logged["dataset"]["sha256"] == hashlib.sha256(Path(logged["dataset"]["path"]).read_bytes()).hexdigest()
    cfg = PipelineConfig.model_validate(logged)
    rebuilt = load_splits(cfg.dataset)
    assert {k: v.digest() for k, v in rebuilt.items()} == res.dataset_digests
    sessions = {k: {int(g) for g in np.unique(v.groups)} for k, v in rebuilt.items()}  # type: ignore[arg-type]
    assert not (sessions["train"] & sessions["test"]) and not (sessions["val"] & sessions["test"])
