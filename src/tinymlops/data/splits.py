"""Split strategies: stratified by class, by group (no group in two splits), by time (test is the latest)."""

from __future__ import annotations

import dataclasses

import numpy as np

from tinymlops.data.dataset import Dataset, warn
from tinymlops.errors import DataError

SPLITS = ("train", "val", "test")


def _stratified(ds: Dataset, seed: int, val_fraction: float, test_fraction: float) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(ds.y):
        idx = rng.permutation(np.flatnonzero(ds.y == c))
        n_test = max(1, round(len(idx) * test_fraction))
        n_val = max(1, round(len(idx) * val_fraction))
        n_val = max(0, min(n_val, len(idx) - n_test - 1))  # a class of 2 or 3 samples keeps one to train on
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[0].append(idx[n_test + n_val:])
    return [np.sort(np.concatenate(p)) for p in parts]


def _by_group(ds: Dataset, seed: int, val_fraction: float, test_fraction: float, column: str) -> list[np.ndarray]:
    """Assign whole groups (shuffled by seed) to test, then val, until each holds its share of the samples."""
    if ds.groups is None:
        raise DataError(f"{ds.name}: the group split needs group ids (split.by)")
    groups, sizes = np.unique(ds.groups, return_counts=True)
    if len(groups) < 3:
        raise DataError(f"{ds.name}: split.by {column!r}: the group strategy needs at least 3 groups (one per "
                        f"split); found {len(groups)}")
    order = np.random.default_rng(seed).permutation(len(groups))
    cum = np.cumsum(sizes[order])
    n = cum[-1]
    # group counts whose cumulative sample share is closest to the wanted fractions; one group per split at least
    n_test = int(np.clip(np.abs(cum - test_fraction * n).argmin() + 1, 1, len(groups) - 2))
    n_val_end = int(np.abs(cum - (test_fraction + val_fraction) * n).argmin() + 1)
    n_val_end = int(np.clip(n_val_end, n_test + 1, len(groups) - 1))
    chosen = {"test": groups[order[:n_test]], "val": groups[order[n_test:n_val_end]],
              "train": groups[order[n_val_end:]]}
    return [np.flatnonzero(np.isin(ds.groups, chosen[k])) for k in SPLITS]


def _by_time(ds: Dataset, val_fraction: float, test_fraction: float, column: str,
             notes: list[str]) -> list[np.ndarray]:
    """Cut at two times: test starts at or after the last cut, val between, train ends before the first.

    A sample (window) that straddles a cut belongs to no split: it is left out and counted in the log, so no row
    is seen by two splits.
    """
    if ds.t_start is None:
        raise DataError(f"{ds.name}: the time split needs sample times (split.by)")
    start = ds.t_start
    end = ds.t_end if ds.t_end is not None else start
    ordered = np.sort(start)
    n = len(ordered)
    if len(np.unique(start)) < 3:
        raise DataError(f"{ds.name}: split.by {column!r}: the time strategy needs at least 3 distinct times")
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    cut_test, cut_val = ordered[n - n_test], ordered[max(1, n - n_test - n_val)]
    test = start >= cut_test
    val = (start >= cut_val) & (end < cut_test)
    train = end < cut_val
    straddling = int(n - test.sum() - val.sum() - train.sum())
    if straddling:
        warn(notes, f"{ds.name}: {straddling} of {n} samples straddle a time cut (split.by {column!r}) and are left "
                    "out of every split")
    out = [np.flatnonzero(m) for m in (train, val, test)]
    empty = [k for k, idx in zip(SPLITS, out, strict=True) if not len(idx)]
    if empty:
        raise DataError(f"{ds.name}: split.by {column!r}: the time split left {', '.join(empty)} empty "
                        "(too few distinct times for the fractions, or windows longer than the gaps between cuts)")
    return out


def split(ds: Dataset, seed: int, val_fraction: float, test_fraction: float, strategy: str = "stratified",
          column: str = "") -> dict[str, Dataset]:
    """Split into train / val / test, deterministic for a seed.

    Args:
        strategy: ``stratified`` (per class), ``group`` (needs ``ds.groups``) or ``time`` (needs ``ds.t_start``).
        column: the group/time column, for messages.
    """
    notes: list[str] = []
    if strategy == "stratified":
        parts = _stratified(ds, seed, val_fraction, test_fraction)
    elif strategy == "group":
        parts = _by_group(ds, seed, val_fraction, test_fraction, column)
    elif strategy == "time":
        parts = _by_time(ds, val_fraction, test_fraction, column, notes)
    else:
        raise ValueError(f"unknown split strategy {strategy!r}")
    out = {k: ds.subset(idx, f"{ds.name}-{k}") for k, idx in zip(SPLITS, parts, strict=True)}
    if strategy != "stratified":
        for k in ("train", "test"):
            missing = sorted(set(range(len(ds.class_names))) - set(np.unique(out[k].y).tolist()))
            if missing:
                warn(notes, f"{ds.name}: the {k} split ({strategy} split by {column!r}) has no sample of class "
                            + ", ".join(repr(ds.class_names[c]) for c in missing))
    if notes:
        out = {k: dataclasses.replace(v, warnings=v.warnings + tuple(notes)) for k, v in out.items()}
    return out
