"""Dataset sources (files, folders, built-in), validation, split strategies and digests (docs/data.md).

``load_splits(section, base_dir)`` is what stages call: it loads the configured source (relative paths resolve
against ``base_dir``, the config file's directory) and splits it with the configured strategy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from tinymlops.data.config import FILE_SOURCES, DatasetSection
from tinymlops.data.dataset import Dataset, warn
from tinymlops.data.splits import split
from tinymlops.errors import DataError

__all__ = ["Dataset", "load_dataset", "load_splits", "shift_augment", "split"]


def load_dataset(section: DatasetSection, base_dir: str | Path | None = None) -> Dataset:
    """Materialise the configured dataset (read from its file or folder, or bundled/generated; never downloaded).

    Raises:
        DataError: the file is missing or unreadable, or the data cannot be used (message names file and column).
    """
    if section.source in FILE_SOURCES:
        assert section.path is not None  # DatasetSection checks it
        path = Path(section.path)
        if not path.is_absolute():
            path = Path(base_dir or Path.cwd()) / path
        path = path.resolve()
        if not path.exists():
            raise DataError(f"{path}: dataset.path: file not found")
        ds = _load_path(section, path)
        if section.sha256 and ds.content_sha256 != section.sha256:
            raise DataError(f"{path}: content sha256 {ds.content_sha256} differs from dataset.sha256 "
                            f"{section.sha256}: the data changed since it was pinned (or since the model was trained)")
        return ds
    if section.source == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return Dataset(section.name, d.data.astype(np.float32), d.target.astype(np.int64),
                       [str(c) for c in d.target_names], "sklearn.datasets.load_digits (bundled UCI optdigits 8x8)")
    from tinymlops.data.vibration import CLASSES, generate

    p = section.vibration
    X, y = generate(p, p.windows_per_class, seed=section.split.seed)
    return Dataset(section.name, X, y, list(CLASSES), f"tinymlops.data.vibration.generate(seed={section.split.seed})",
                   sample_rate_hz=p.sample_rate_hz, meta=p.model_dump(), feature_names=["x", "y", "z"])


def _load_path(section: DatasetSection, path: Path) -> Dataset:
    if section.source == "audio_folder":
        from tinymlops.data.folders import load_audio_folder

        return load_audio_folder(section, path)
    if section.source == "image_folder":
        from tinymlops.data.folders import load_image_folder

        return load_image_folder(section, path)
    if not path.is_file():
        raise DataError(f"{path}: dataset.path: expected a {section.source} file, found a folder")
    from tinymlops.data.tabular import load_rows

    return load_rows(section, path)


def load_splits(section: DatasetSection, base_dir: str | Path | None = None) -> dict[str, Dataset]:
    """Load the configured dataset and split it into train / val / test with the configured strategy."""
    s = section.split
    ds = load_dataset(section, base_dir)
    if section.windows is not None and s.strategy == "stratified":
        notes = list(ds.warnings)
        warn(notes, f"{ds.path}: windows with a stratified split: windows of one recording (overlapping when stride "
                    "< size) land in train and test, so the test figures are optimistic; split.strategy: group or "
                    "time keeps recordings apart")
        ds = dataclasses.replace(ds, warnings=tuple(notes))
    return split(ds, s.seed, s.val_fraction, s.test_fraction, s.strategy, section.split_column() or "")


def shift_augment(X: np.ndarray, y: np.ndarray, pixels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Add copies of square images (N, side*side) shifted by +-``pixels`` along each axis (zero fill)."""
    side = int(round(X.shape[1] ** 0.5))
    imgs = X.reshape(-1, side, side)
    out, labels = [X], [y]
    for axis in (1, 2):
        for d in (-pixels, pixels):
            shifted = np.roll(imgs, d, axis=axis)
            edge = [slice(None)] * 3
            edge[axis] = slice(0, d) if d > 0 else slice(d, None)
            shifted[tuple(edge)] = 0
            out.append(shifted.reshape(len(X), -1))
            labels.append(y)
    return np.concatenate(out), np.concatenate(labels)
