"""`tinymlops init`: scaffolding, refusals (non-empty DIR, unknown template, bad name), --json, sample data formats."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinymlops.templates import TEMPLATES, samples, scaffold

runner = CliRunner()


def invoke(*args: str):
    from cli import app

    return runner.invoke(app, ["init", *args])


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_each_template_scaffolds_a_valid_project(tmp_path: Path, template: str) -> None:
    from tinymlops.config import check_references, load_pipeline

    out = scaffold(tmp_path / f"My {template} Project", template)
    root = Path(out.directory)
    assert out.project == f"my-{template}-project"
    assert {".gitignore", "README.md", "configs/pipeline.yaml", "configs/models.py"} <= set(out.files)
    for rel in out.files:
        assert (root / rel).exists(), rel
    cfg = load_pipeline(root / "configs" / "pipeline.yaml")
    check_references(cfg, root / "configs" / "pipeline.yaml")
    assert cfg.project == out.project and cfg.mlflow.registered_model == f"{out.project}-classifier"
    assert cfg.resolve(cfg.dataset.path or "").resolve() == (root / out.data["path"]).resolve()
    assert cfg.model.builder == "models:build" and cfg.stages == ["train", "compress", "profile"]
    assert "ptq-int8" in [v.technique for v in cfg.compress.variants]
    assert cfg.profile.targets == ["raspberry-pi-4", "nucleo-l4r5zi"]  # one Linux-class board, one MCU
    source = (root / "configs" / "models.py").read_text()
    compile(source, "models.py", "exec")
    assert "def build(input_shape" in source
    for rel in (".gitignore", "README.md", "configs/pipeline.yaml", "configs/models.py"):
        assert "{{" not in (root / rel).read_text(), rel
    assert ".tinymlops/" in (root / ".gitignore").read_text()
    assert not list(tmp_path.glob(".*init-*"))  # the staging directory is gone


def test_sample_data_is_seeded(tmp_path: Path) -> None:
    a, b, c = (scaffold(tmp_path / n, "audio", seed=s) for n, s in (("a", 1), ("b", 1), ("c", 2)))
    data = [Path(x.directory) / "data" for x in (a, b, c)]
    assert tree_digest(data[0]) == tree_digest(data[1]) != tree_digest(data[2])


def test_sample_data_formats(tmp_path: Path) -> None:
    import pandas as pd
    from PIL import Image

    samples.tabular_csv(tmp_path / "t.csv")
    df = pd.read_csv(tmp_path / "t.csv")
    assert list(df.columns) == [*samples.TABULAR_FEATURES, "condition"]
    assert not df.isna().any().any() and set(df["condition"]) == set(samples.TABULAR_CLASSES)
    assert df[samples.TABULAR_FEATURES].std().min() > 0

    samples.timeseries_csv(tmp_path / "ts.csv", sessions_per_class=2, seconds=4)
    ts = pd.read_csv(tmp_path / "ts.csv")
    assert list(ts.columns) == ["timestamp", "session", "acc_x", "acc_y", "acc_z", "activity"]
    per_session = ts.groupby("session")
    assert per_session["activity"].nunique().max() == 1 and len(per_session) == 8
    assert (per_session["timestamp"].diff().dropna() > 0).all()  # ordered in time within a session
    assert per_session.size().eq(200).all()  # 4 s at 50 Hz
    gravity = ts.groupby("activity")[["acc_x", "acc_y", "acc_z"]].mean().pow(2).sum(axis=1).pow(0.5)
    assert gravity["idle"] == pytest.approx(1.0, abs=0.05)  # at rest the sensor reads 1 g

    samples.audio_folder(tmp_path / "sounds", clips_per_class=3)
    for cls in samples.AUDIO_CLASSES:
        files = sorted((tmp_path / "sounds" / cls).glob("*.wav"))
        assert len(files) == 3
        with wave.open(str(files[0])) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, samples.AUDIO_RATE_HZ)
            assert 0.9 * samples.AUDIO_RATE_HZ <= w.getnframes() <= 1.1 * samples.AUDIO_RATE_HZ

    samples.image_folder(tmp_path / "shapes", images_per_class=2)
    for cls in samples.IMAGE_CLASSES:
        files = sorted((tmp_path / "shapes" / cls).glob("*.png"))
        assert len(files) == 2
        with Image.open(files[0]) as img:
            assert img.size == (samples.IMAGE_SIDE, samples.IMAGE_SIDE) and img.mode == "RGB"


def test_cli_json_and_next_steps(tmp_path: Path) -> None:
    res = invoke(str(tmp_path / "proj"), "--template", "tabular", "--name", "hvac", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["project"] == "hvac" and out["template"] == "tabular"
    assert out["data"] == {"path": "data/hvac.csv", "rows": 750, "columns": 9, "classes": samples.TABULAR_CLASSES}
    assert out["next_steps"][-1] == "tinymlops run"
    assert (tmp_path / "proj" / "data" / "hvac.csv").is_file()


def test_cli_human_output(tmp_path: Path) -> None:
    res = invoke(str(tmp_path / "snd"), "-t", "audio")
    assert res.exit_code == 0, res.output
    assert "created project snd" in res.stdout and "data/sounds" in res.stdout and "tinymlops run" in res.stdout


def test_non_empty_directory_is_refused_unless_force(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("mine")
    res = invoke(str(proj), "--template", "image")
    assert res.exit_code == 2
    assert "directory is not empty (1 entries: notes.txt)" in res.output and "--force" in res.output
    assert sorted(p.name for p in proj.iterdir()) == ["notes.txt"]

    (proj / "configs").mkdir()
    (proj / "configs" / "pipeline.yaml").write_text("old: config\n")
    res = invoke(str(proj), "--template", "image", "--force")
    assert res.exit_code == 0, res.output
    assert (proj / "notes.txt").read_text() == "mine"  # other files are kept
    assert "source: image_folder" in (proj / "configs" / "pipeline.yaml").read_text()  # the template's replaced
    assert len(list((proj / "data" / "shapes").rglob("*.png"))) == 4 * 150
    assert not list(tmp_path.glob(".*init-*"))


def test_force_refuses_a_conflicting_entry_before_moving_anything(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / "README.md").mkdir(parents=True)
    (proj / "data").write_text("a file where the template needs a folder")
    res = invoke(str(proj), "-t", "tabular", "--force")
    assert res.exit_code == 2 and "is a directory; the template writes a file there" in res.output
    assert sorted(p.name for p in proj.iterdir()) == ["README.md", "data"] and not list(tmp_path.glob(".*init-*"))
    (proj / "README.md").rmdir()
    res = invoke(str(proj), "-t", "tabular", "--force")
    assert res.exit_code == 2 and "data: is a file; the template writes a directory there" in res.output
    assert sorted(p.name for p in proj.iterdir()) == ["data"]


@pytest.mark.parametrize(("args", "message"), [
    (["--template", "video"], "unknown template 'video'; expected one of tabular, timeseries, audio, image"),
    (["--template", "tabular", "--name", "Bad Name"], "--name 'Bad Name': expected lowercase letters"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    res = invoke(str(tmp_path / "p"), *args)
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "p").exists()


def test_directory_that_is_a_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    res = invoke(str(tmp_path / "f"), "-t", "tabular")
    assert res.exit_code == 2 and "exists and is not a directory" in res.output


def test_a_failure_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Path, seed: int = 0) -> dict[str, object]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")
        raise OSError("disk full")

    monkeypatch.setitem(samples.WRITERS, "tabular", ("data/hvac.csv", broken))
    with pytest.raises(OSError, match="disk full"):
        scaffold(tmp_path / "p", "tabular")
    assert list(tmp_path.iterdir()) == []


def test_project_name_from_directory() -> None:
    from tinymlops.templates import project_name

    assert project_name(Path("/x/My_Sensor Project 2")) == "my-sensor-project-2"
    assert project_name(Path("/x/2024 data")) == "data"
    assert project_name(Path("/x/___")) == "my-project"


def test_init_imports_no_tensorflow(tmp_path: Path) -> None:
    code = ("import sys; from tinymlops.templates import scaffold; "
            f"scaffold({str(tmp_path / 'p')!r}, 'image'); "
            "assert 'tensorflow' not in sys.modules and 'mlflow' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
