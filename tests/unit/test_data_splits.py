"""Time-series windows and split strategies: leakage tests for group and time splits, determinism, edge cases."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tinymlops.data import load_dataset, load_splits
from tinymlops.data.config import DatasetSection
from tinymlops.errors import DataError


def section(**kw: Any) -> DatasetSection:
    return DatasetSection.model_validate({"name": "ts", "source": "csv", "path": "ts.csv", "label": "state", **kw})


def sessions(tmp_path: Path, n_sessions: int = 10, rows: int = 64, seed: int = 0, shuffle: bool = True) -> pd.DataFrame:
    """Write rows of sessions: channel ``row`` encodes (session, step) so a window's rows can be traced back."""
    rng = np.random.default_rng(seed)
    parts = []
    for s in range(n_sessions):
        t = 1000.0 * s + np.arange(rows) * 0.01  # sessions follow each other in time
        parts.append(pd.DataFrame({"timestamp": t, "session": f"s{s:02d}", "row": s * 1000 + np.arange(rows),
                                   "ax": rng.normal(size=rows), "state": ["idle", "run"][s % 2]}))
    df = pd.concat(parts, ignore_index=True)
    if shuffle:
        df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df.to_csv(tmp_path / "ts.csv", index=False)
    return df


WINDOWS = {"size": 16, "stride": 8, "time": "timestamp", "group": "session"}


def test_windows_are_time_ordered_within_one_group(tmp_path: Path) -> None:
    sessions(tmp_path)
    ds = load_dataset(section(windows=WINDOWS, features=["row", "ax"]), tmp_path)
    assert ds.X.shape == (10 * 7, 16, 2)  # (64 - 16) / 8 + 1 windows per session
    rows = ds.X[:, :, 0].astype(np.int64)
    assert np.all(np.diff(rows, axis=1) == 1)                       # consecutive rows in time order
    assert np.all(rows[:, 0] // 1000 == rows[:, -1] // 1000)        # never spans two sessions
    assert set(np.unique(rows[:, 0] % 1000)) == set(range(0, 49, 8))  # stride 8
    session = rows[:, 0] // 1000
    np.testing.assert_array_equal(ds.y, session % 2)                # label of its rows: idle=0, run=1
    assert ds.feature_names == ["row", "ax"]  # the channels


def test_mixed_label_windows_are_skipped_with_a_count_or_take_the_majority(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    df = sessions(tmp_path, n_sessions=4, shuffle=False)
    df.loc[(df.session == "s00") & (df.row % 1000 >= 60), "state"] = "run"  # last 4 rows of s00 change state
    df.to_csv(tmp_path / "ts.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="tinymlops.data"):
        skipped = load_dataset(section(windows=WINDOWS, features=["row", "ax"]), tmp_path)
    assert "1 of 28 windows mix labels and were skipped" in caplog.text and len(skipped.y) == 27
    majority = load_dataset(section(windows={**WINDOWS, "mixed_labels": "majority"}, features=["row", "ax"]),
                            tmp_path)
    last = majority.X[:, 0, 0] == 48  # s00's last window: 12 idle rows, 4 run rows
    assert len(majority.y) == 28 and majority.y[last][0] == 0


def test_windows_with_a_stratified_split_warn_about_leakage(tmp_path: Path) -> None:
    sessions(tmp_path, n_sessions=4)
    splits = load_splits(section(windows=WINDOWS), tmp_path)
    assert any("windows with a stratified split" in w for w in splits["train"].warnings)


def test_group_split_never_puts_a_session_in_two_splits(tmp_path: Path) -> None:
    sessions(tmp_path, n_sessions=12)
    for seed in range(5):
        splits = load_splits(section(windows=WINDOWS, features=["row", "ax"],
                                     split={"strategy": "group", "seed": seed}), tmp_path)
        owners = {k: set((v.X[:, 0, 0] // 1000).astype(int).tolist()) for k, v in splits.items()}
        assert all(owners.values())
        assert not (owners["train"] & owners["val"]) and not (owners["train"] & owners["test"])
        assert not (owners["val"] & owners["test"])
        assert sum(len(v.y) for v in splits.values()) == 12 * 7
    again = load_splits(section(windows=WINDOWS, features=["row", "ax"], split={"strategy": "group", "seed": 4}),
                        tmp_path)
    assert {k: v.digest() for k, v in again.items()} == {k: v.digest() for k, v in splits.items()}


def test_group_split_of_plain_rows_by_a_column(tmp_path: Path) -> None:
    df = sessions(tmp_path, n_sessions=8, rows=10)
    splits = load_splits(section(features=["row", "ax"], split={"strategy": "group", "by": "session"}), tmp_path)
    owners = [set((v.X[:, 0] // 1000).astype(int).tolist()) for v in splits.values()]
    assert sum(len(o) for o in owners) == 8 and len(set().union(*owners)) == 8
    assert sum(len(v.y) for v in splits.values()) == len(df)


def test_time_split_puts_the_latest_samples_in_test_and_rows_never_overlap(tmp_path: Path) -> None:
    df = sessions(tmp_path, n_sessions=1, rows=400)
    df["state"] = np.where(df.row // 40 % 2, "run", "idle")  # the machine changes state every 40 rows
    df.to_csv(tmp_path / "ts.csv", index=False)
    splits = load_splits(section(windows={"size": 16, "stride": 4, "time": "timestamp", "mixed_labels": "majority"},
                                 features=["row", "ax"], split={"strategy": "time"}), tmp_path)
    rows = {k: v.X[:, :, 0].astype(np.int64) for k, v in splits.items()}
    assert rows["train"].max() < rows["val"].min() and rows["val"].max() < rows["test"].min()
    assert splits["train"].t_end.max() < splits["val"].t_start.min()   # type: ignore[union-attr]
    assert splits["val"].t_end.max() < splits["test"].t_start.min()    # type: ignore[union-attr]
    n = sum(len(v.y) for v in splits.values())
    assert n < (400 - 16) // 4 + 1                                     # windows over a cut are left out
    assert abs(len(splits["test"].y) / n - 0.2) < 0.05
    plain = load_splits(section(features=["row", "ax"], split={"strategy": "time", "by": "timestamp"}), tmp_path)
    assert plain["train"].X[:, 0].max() < plain["val"].X[:, 0].min() < plain["test"].X[:, 0].min()
    assert sum(len(v.y) for v in plain.values()) == len(df)


def test_time_split_understands_date_strings(tmp_path: Path) -> None:
    df = sessions(tmp_path, n_sessions=1, rows=50, shuffle=True)
    df["state"] = np.where(df.row % 2, "run", "idle")
    df["when"] = pd.to_datetime("2026-01-01") + pd.to_timedelta(df["row"], unit="s")
    df.to_csv(tmp_path / "ts.csv", index=False)
    splits = load_splits(section(features=["row"], split={"strategy": "time", "by": "when"}), tmp_path)
    assert splits["train"].X.max() < splits["val"].X.min() and splits["val"].X.max() < splits["test"].X.min()


def test_split_errors(tmp_path: Path) -> None:
    sessions(tmp_path, n_sessions=2)
    with pytest.raises(DataError, match="the group strategy needs at least 3 groups \\(one per split\\); found 2"):
        load_splits(section(windows=WINDOWS, split={"strategy": "group"}), tmp_path)
    with pytest.raises(DataError, match="dataset.split.by: column 'nope' not found"):
        load_splits(section(split={"strategy": "group", "by": "nope"}), tmp_path)
    with pytest.raises(DataError, match="split.by: 'row' must be windows.group or windows.time"):
        load_splits(section(windows=WINDOWS, split={"strategy": "group", "by": "row"}), tmp_path)
    with pytest.raises(DataError, match="no windows: every group has fewer than windows.size=100 rows"):
        load_dataset(section(windows={**WINDOWS, "size": 100}), tmp_path)


def test_group_split_warns_when_a_class_is_missing_from_a_split(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    df = sessions(tmp_path, n_sessions=6, shuffle=False)
    df["state"] = np.where(df.session == "s00", "rare", "common")
    df.to_csv(tmp_path / "ts.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="tinymlops.data"):
        splits = load_splits(section(windows=WINDOWS, split={"strategy": "group"}), tmp_path)
    assert "has no sample of class 'rare'" in caplog.text
    assert any("no sample of class 'rare'" in w for w in splits["train"].warnings)


def test_stratified_split_keeps_one_training_sample_of_a_two_sample_class() -> None:
    from tinymlops.data import Dataset, split

    y = np.array([0] * 20 + [1] * 2)
    ds = Dataset("d", np.arange(22, dtype=np.float32)[:, None], y, ["a", "b"], "test")
    parts = split(ds, 0, 0.15, 0.2)
    assert all(1 in v.y for k, v in parts.items() if k != "val")
    assert sum(len(v.y) for v in parts.values()) == 22
