"""Dataset sources: csv/parquet/npz rows, audio and image folders, relative paths, label mapping, validation errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from tinymlops.data import load_dataset, load_splits
from tinymlops.data.config import DatasetSection
from tinymlops.errors import DataError


def section(**kw: Any) -> DatasetSection:
    return DatasetSection.model_validate({"name": "t", **kw})


def table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n).astype(np.float32),
                         "c": rng.integers(0, 5, n), "target": rng.choice(["dog", "cat", "bird"], n)})


def test_csv_parquet_and_npz_give_the_same_dataset(tmp_path: Path) -> None:
    df = table()
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    np.savez(tmp_path / "d.npz", a=df.a.to_numpy(), b=df.b.to_numpy(), c=df.c.to_numpy(),
             target=df.target.to_numpy().astype(str))
    got = {fmt: load_dataset(section(source=fmt, path=f"d.{fmt}", label="target"), tmp_path)
           for fmt in ("csv", "parquet", "npz")}
    ref = got["csv"]
    assert ref.X.shape == (60, 3) and ref.X.dtype == np.float32 and ref.X.flags.c_contiguous
    assert ref.class_names == ["bird", "cat", "dog"]  # sorted, stable: the model's output order
    assert ref.feature_names == ["a", "b", "c"]
    np.testing.assert_array_equal(np.array(ref.class_names)[ref.y], df.target.to_numpy())
    for fmt, ds in got.items():
        assert ds.digest() == ref.digest(), fmt
        assert ds.path == str((tmp_path / f"d.{fmt}").resolve()) and len(ds.content_sha256 or "") == 64
        assert ds.source.startswith(f"{fmt} ") and ds.source_format == fmt


def test_features_subset_numeric_labels_sort_as_numbers_and_classes_fix_the_order(tmp_path: Path) -> None:
    df = pd.DataFrame({"x": np.arange(12.0), "y": np.arange(12.0) ** 2, "label": [2, 10, 1] * 4})
    df.to_csv(tmp_path / "n.csv", index=False)
    ds = load_dataset(section(source="csv", path="n.csv", features=["y"]), tmp_path)
    assert ds.X.shape == (12, 1) and ds.class_names == ["1", "2", "10"]
    assert list(ds.y[:3]) == [1, 2, 0]
    fixed = load_dataset(section(source="csv", path="n.csv", classes=["10", "2", "1"]), tmp_path)
    assert fixed.class_names == ["10", "2", "1"] and list(fixed.y[:3]) == [1, 0, 2]


def test_npz_with_one_sample_array_keeps_its_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", images=rng.random((20, 4, 4, 1)), labels=np.repeat([0, 1], 10))
    ds = load_dataset(section(source="npz", path="img.npz", label="labels"), tmp_path)
    assert ds.X.shape == (20, 4, 4, 1) and ds.class_names == ["0", "1"] and ds.feature_names is None
    np.savez(tmp_path / "xy.npz", X=rng.random((20, 3)), y=np.repeat(["a", "b"], 10))
    flat = load_dataset(section(source="npz", path="xy.npz", label="y"), tmp_path)
    assert flat.X.shape == (20, 3) and flat.feature_names == ["X_0", "X_1", "X_2"]


def test_a_pinned_sha256_refuses_changed_data(tmp_path: Path) -> None:
    import hashlib

    table().to_csv(tmp_path / "d.csv", index=False)
    sha = hashlib.sha256((tmp_path / "d.csv").read_bytes()).hexdigest()
    assert load_dataset(section(source="csv", path="d.csv", label="target", sha256=sha), tmp_path).content_sha256 == sha
    table(seed=1).to_csv(tmp_path / "d.csv", index=False)
    msg = err(tmp_path, source="csv", path="d.csv", label="target", sha256=sha)
    assert f"differs from dataset.sha256 {sha}: the data changed since it was pinned" in msg


def test_relative_path_resolves_against_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymlops.config import load_pipeline

    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    table().to_csv(proj / "data" / "m.csv", index=False)
    (proj / "pipeline.yaml").write_text(
        "project: p\nmlflow: {experiment: e, registered_model: m}\nmodel: {arch: mlp}\n"
        "dataset:\n  name: my-data\n  source: csv\n  path: data/m.csv\n  label: target\n"
        "  split: {strategy: stratified, by: null, val_fraction: 0.15, test_fraction: 0.2, seed: 0}\n")
    monkeypatch.chdir(tmp_path)  # not the config's directory
    cfg = load_pipeline("proj/pipeline.yaml")
    splits = load_splits(cfg.dataset, cfg.config_dir)
    assert sum(len(s.y) for s in splits.values()) == 60


def err(tmp_path: Path, **kw: Any) -> str:
    with pytest.raises(DataError) as exc:
        load_splits(section(**kw), tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_one_line_errors_name_the_file_and_column(tmp_path: Path) -> None:
    assert err(tmp_path, source="csv", path="nope.csv").endswith("nope.csv: dataset.path: file not found")

    df = table()
    df.loc[7, "b"] = np.nan
    df.loc[9, "b"] = np.nan
    df.to_csv(tmp_path / "miss.csv", index=False)
    msg = err(tmp_path, source="csv", path="miss.csv", label="target")
    assert "miss.csv: column 'b' has 2 missing values (first at line 9)" in msg

    df = table()
    df.loc[3, "target"] = None
    df.to_parquet(tmp_path / "nolabel.parquet")
    assert "column 'target' has 1 missing value (first at row 3)" in err(tmp_path, source="parquet",
                                                                          path="nolabel.parquet", label="target")

    table().to_csv(tmp_path / "ok.csv", index=False)
    msg = err(tmp_path, source="csv", path="ok.csv", label="target", classes=["cat", "dog"])
    assert "ok.csv: column 'target': unknown label 'bird' (line " in msg and "allows only cat, dog" in msg
    assert "label column" not in msg
    assert "dataset.label: column 'kind' not found; the file has: a, b, c, target" in err(
        tmp_path, source="csv", path="ok.csv", label="kind")
    assert "dataset.features: column 'zz' not found" in err(tmp_path, source="csv", path="ok.csv", label="target",
                                                            features=["a", "zz"])

    rare = table()
    rare.loc[5, "target"] = "eel"
    rare.to_csv(tmp_path / "rare.csv", index=False)
    assert "rare.csv: class 'eel' has 1 sample; every class needs at least 2" in err(
        tmp_path, source="csv", path="rare.csv", label="target")

    (tmp_path / "empty.csv").write_text("a,b,target\n")
    assert err(tmp_path, source="csv", path="empty.csv", label="target").endswith("empty.csv: no rows")

    inf = table()
    inf.loc[4, "a"] = 1e300  # beyond float32
    inf.to_parquet(tmp_path / "inf.parquet")
    assert "column 'a' has infinite values or values beyond float32 (first at row 4)" in err(
        tmp_path, source="parquet", path="inf.parquet", label="target")

    text = table()
    text["c"] = "x"
    text.to_csv(tmp_path / "text.csv", index=False)
    assert "feature column 'c' is not numeric" in err(tmp_path, source="csv", path="text.csv", label="target")

    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    assert "bad.parquet: not a readable parquet file" in err(tmp_path, source="parquet", path="bad.parquet")


def test_constant_column_is_a_logged_warning_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    df = table()
    df["const"] = 3.0
    df.to_csv(tmp_path / "c.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="tinymlops.data"):
        ds = load_dataset(section(source="csv", path="c.csv", label="target"), tmp_path)
    assert "constant column 'const'" in caplog.text and ds.X.shape == (60, 4)
    assert any("constant column 'const'" in w for w in ds.warnings)


@pytest.mark.parametrize(("kw", "message"), [
    ({"name": "my-data"}, "source: required"),
    ({"name": "x", "source": "csv"}, "path: required for source csv"),
    ({"name": "digits", "path": "a.csv"}, "path: not used by the built-in source digits"),
    ({"name": "digits", "sha256": "0" * 64}, "sha256: not used by the built-in source digits"),
    ({"name": "x", "source": "csv", "path": "a", "split": {"strategy": "group"}}, "split.by: the group strategy"),
    ({"name": "x", "source": "audio_folder", "path": "a", "split": {"strategy": "time", "by": "t"}},
     "needs a column, and source audio_folder has none"),
    ({"name": "x", "source": "image_folder", "path": "a", "features": ["a"]}, "features: not used by source"),
    ({"name": "vibration", "seed": 1, "split": {"seed": 2}}, "seed is given twice"),
    ({"name": "x", "source": "csv", "path": "a", "label": "y", "features": ["a", "y"]},
     "features: the label column 'y' cannot also be an input"),
    ({"name": "x", "source": "csv", "path": "a", "split": {"strategy": "stratified", "by": "g"}},
     "split.by: only used by the group and time strategies"),
])
def test_config_errors(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        DatasetSection.model_validate(kw)
    assert message in str(exc.value)


def test_builtin_names_and_legacy_split_keys_still_work() -> None:
    d = DatasetSection.model_validate({"name": "vibration", "seed": 7, "val_fraction": 0.1, "test_fraction": 0.3})
    assert d.source == "vibration" and (d.seed, d.val_fraction, d.test_fraction) == (7, 0.1, 0.3)
    assert d.split.seed == 7 and DatasetSection(name="digits").source == "digits"


# ---------------------------------------------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------------------------------------------


def write_wav(path: Path, rate: int, seconds: float, freq: float, channels: int = 1) -> None:
    from scipy.io import wavfile

    t = np.arange(int(rate * seconds)) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, rate, np.stack([x] * channels, axis=1) if channels > 1 else x)


def test_audio_folder_resamples_mixes_down_and_pads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "audio"
    for i in range(3):
        write_wav(root / "low" / f"l{i}.wav", 16000, 0.5, 440.0)
        write_wav(root / "high" / f"h{i}.wav", 8000, 1.5, 1000.0, channels=2)
    (root / "notes.txt").write_text("x")
    with caplog.at_level(logging.WARNING, logger="tinymlops.data"):
        ds = load_dataset(section(source="audio_folder", path="audio", audio={"sample_rate_hz": 16000,
                                                                              "length_s": 1.0}), tmp_path)
    assert "h0.wav: 3 WAV files at 8000 Hz (this one first) resampled to 16000 Hz" in caplog.text
    assert "1 file left out" in caplog.text and "notes.txt" in caplog.text
    assert ds.X.shape == (6, 16000) and ds.sample_rate_hz == 16000 and ds.class_names == ["high", "low"]
    low, high = ds.X[ds.y == 1][0], ds.X[ds.y == 0][0]
    assert np.all(low[8000:] == 0) and abs(np.abs(low[:8000]).max() - 0.5) < 0.01   # padded at the end
    assert np.abs(high).max() > 0.4 and np.all(high[-100:] != 0)                   # trimmed, not padded
    peak_hz = np.argmax(np.abs(np.fft.rfft(high))) * 16000 / len(high)
    assert abs(peak_hz - 1000.0) < 2                                                 # pitch kept by resampling


def test_audio_folder_with_mixed_rates_and_no_configured_rate_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "a"
    write_wav(root / "x" / "1.wav", 16000, 0.1, 100)
    write_wav(root / "x" / "2.wav", 16000, 0.1, 100)
    write_wav(root / "y" / "3.wav", 22050, 0.1, 100)
    write_wav(root / "y" / "4.wav", 16000, 0.1, 100)
    msg = err(tmp_path, source="audio_folder", path="a")
    assert "3.wav: sample rate 22050 Hz differs from" in msg and "set dataset.audio.sample_rate_hz" in msg
    (root / "y" / "4.wav").write_bytes(b"RIFF nonsense")
    assert "4.wav: not a readable WAV file" in err(tmp_path, source="audio_folder", path="a")


def write_png(path: Path, size: tuple[int, int], color: tuple[int, int, int], fmt: str = "PNG") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), color).save(path, fmt)


def test_image_folder_resizes_and_converts(tmp_path: Path) -> None:
    root = tmp_path / "img"
    for i in range(2):
        write_png(root / "red" / f"r{i}.png", (20, 30), (255, 0, 0))
        write_png(root / "blue" / f"b{i}.jpg", (40, 10), (0, 0, 255), "JPEG")
    ds = load_dataset(section(source="image_folder", path="img", image={"size": [8, 12]}), tmp_path)
    assert ds.X.shape == (4, 8, 12, 3) and ds.class_names == ["blue", "red"] and ds.X.dtype == np.float32
    assert ds.X[ds.y == 1][:, :, :, 0].min() == 255 and ds.X[ds.y == 0][:, :, :, 2].min() > 240
    gray = load_dataset(section(source="image_folder", path="img", image={"size": [8, 12], "grayscale": True}),
                        tmp_path)
    assert gray.X.shape == (4, 8, 12, 1)
    msg = err(tmp_path, source="image_folder", path="img")
    assert "image is 20x30 (HxW) but" in msg and "set dataset.image.size" in msg


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "a.png", (4, 4), (0, 0, 0))
    assert "no class subfolders" in err(tmp_path, source="image_folder", path="flat")
    root = tmp_path / "one"
    write_png(root / "cat" / "a.png", (4, 4), (0, 0, 0))
    write_png(root / "cat" / "b.png", (4, 4), (0, 0, 0))
    write_png(root / "dog" / "a.png", (4, 4), (9, 9, 9))
    assert "class 'dog' has 1 image" in err(tmp_path, source="image_folder", path="one")
    msg = err(tmp_path, source="image_folder", path="one", classes=["cat", "cow"])
    assert "unknown label 'dog' (a class subfolder)" in msg
