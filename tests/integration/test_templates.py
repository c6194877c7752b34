"""Each `tinymlops init` template end to end in its own project directory and store.

train -> compress -> profile -> package for a Linux-class board and a microcontroller, through the CLI commands a
user types (stages with --no-prefect, in this process: TensorFlow is imported once for the four templates), plus
one `tinymlops run` as a separate process in a project directory (Prefect, the project's own `.tinymlops/`).
Epochs are cut so that the file stays near two minutes on 2 cores; the data is the templates' own sample data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tinymlops.templates import TEMPLATES, scaffold

pytestmark = pytest.mark.integration

LINUX, MCU = "raspberry-pi-4", "nucleo-l4r5zi"
#: epochs per template for the test (the templates' own defaults train longer) and the test accuracy they must beat
EPOCHS = {"tabular": 15, "timeseries": 15, "audio": 10, "image": 15}
MIN_ACCURACY = {"tabular": 0.7, "timeseries": 0.6, "audio": 0.6, "image": 0.5}  # chance: 0.25
BLOCKS = {"tabular": ["standardize"], "timeseries": ["window_stats", "standardize"],
          "audio": ["log_mel", "standardize"], "image": ["image"]}
runner = CliRunner()


def shrink(config: Path, epochs: int, variants: list[str] | None = None) -> None:
    cfg = yaml.safe_load(config.read_text())
    cfg["train"]["epochs"] = epochs
    if variants is not None:
        cfg["compress"]["variants"] = [v for v in cfg["compress"]["variants"] if v["technique"] in variants]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))


def cli(*args: str) -> dict:
    from cli import app

    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, f"tinymlops {' '.join(args)} exited {res.exit_code}: {res.output[-3000:]}"
    return json.loads(res.stdout)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """A scaffolded project as the working directory, with no home or store set in the environment."""
    template = request.param
    proj = tmp_path / template
    scaffold(proj, template, name=template)
    shrink(proj / "configs" / "pipeline.yaml", EPOCHS[template])
    for var in ("TINYMLOPS_HOME", "MLFLOW_TRACKING_URI", "TINYMLOPS_FLEET_DB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(proj)
    from tinymlops import registry

    registry.connect()
    return proj


@pytest.mark.parametrize("project", list(TEMPLATES), indirect=True)
def test_template_trains_compresses_profiles_and_packages(project: Path, tmp_path: Path) -> None:
    template = project.name
    model = f"{template}-classifier"

    train = cli("train", "--no-prefect")
    assert train["model_uri"] == f"models:/{model}/1"
    assert train["metrics"]["test_accuracy"] >= MIN_ACCURACY[template], train["metrics"]
    assert (project / ".tinymlops" / "mlflow.db").is_file()  # the project's own store

    comp = cli("compress", "--version", "1", "--no-prefect")
    registered = {v["variant"]: v for v in comp["variants"] if v.get("version")}
    assert set(registered) == {"ptq-int8", "onnx-int8"}, comp["variants"]
    assert registered["ptq-int8"]["accuracy"] >= MIN_ACCURACY[template] - 0.1

    prof = cli("profile", model, "-t", LINUX, "-t", MCU, "--no-prefect")
    chosen = {t: prof["targets"][t]["recommended_version"] for t in (LINUX, MCU)}
    assert all(chosen.values()), prof["targets"]

    from tinymlops import registry

    assert registry.get_version(model, chosen[MCU]).tags["format"] == "tflite"  # TFLite Micro runs .tflite only
    for target, version in chosen.items():
        out = cli("package", model, str(version), "--target", target, "--out", str(tmp_path / f"pkg-{target}"))
        manifest = json.loads((Path(out["path"]) / "manifest.json").read_text())
        assert manifest["target"] == target and manifest["model_version"] == str(version)
        blocks = manifest["preprocessing"].get("blocks") or []
        assert [b["block"] for b in blocks] == BLOCKS[template], manifest["preprocessing"]
        assert manifest["class_names"] == sorted(manifest["class_names"]) and len(manifest["class_names"]) == 4


def test_tinymlops_run_in_a_project_uses_its_own_store(tmp_path: Path) -> None:
    proj = tmp_path / "hvac"
    scaffold(proj, "tabular")
    shrink(proj / "configs" / "pipeline.yaml", 5, variants=["ptq-int8"])
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TINYMLOPS_", "MLFLOW_", "PREFECT_"))}
    exe = Path(sys.executable).with_name("tinymlops")
    res = subprocess.run([str(exe), "run", "--json"], cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["project"] == "hvac" and out["train"]["model_uri"] == "models:/hvac-classifier/1"
    assert [v["variant"] for v in out["compress"]["variants"]] == ["ptq-int8"]
    assert set(out["profile"]["targets"]) == {LINUX, MCU}
    home = proj / ".tinymlops"
    assert (home / "mlflow.db").is_file() and (home / "prefect").is_dir() and (home / "mlartifacts").is_dir()
    assert sorted(p.name for p in proj.iterdir()) == [".gitignore", ".tinymlops", "README.md", "configs", "data"]
