"""Bundled datasets (no downloads), deterministic splits and dataset digests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from tinymlops.data.config import DatasetSection


@dataclass(frozen=True)
class Dataset:
    """Raw inputs and integer labels of one dataset (or split)."""

    name: str
    X: np.ndarray
    y: np.ndarray
    class_names: list[str]
    source: str
    sample_rate_hz: float | None = None
    meta: dict[str, object] = field(default_factory=dict)

    def digest(self) -> str:
        """Return a short content hash of inputs and labels."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.X, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(self.y, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def subset(self, idx: np.ndarray, name: str) -> Dataset:
        """Return the rows ``idx`` as a new dataset called ``name``."""
        return Dataset(name, self.X[idx], self.y[idx], self.class_names, self.source, self.sample_rate_hz, self.meta)


def load_dataset(section: DatasetSection) -> Dataset:
    """Materialise the configured dataset (bundled or generated; never downloaded)."""
    if section.name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return Dataset("digits", d.data.astype(np.float32), d.target.astype(np.int64),
                       [str(c) for c in d.target_names], "sklearn.datasets.load_digits (bundled UCI optdigits 8x8)")
    from tinymlops.data.vibration import CLASSES, generate

    p = section.vibration
    X, y = generate(p, p.windows_per_class, seed=section.seed)
    return Dataset("vibration", X, y, list(CLASSES), f"tinymlops.data.vibration.generate(seed={section.seed})",
                   sample_rate_hz=p.sample_rate_hz, meta=p.model_dump())


def split(ds: Dataset, seed: int, val_fraction: float, test_fraction: float) -> dict[str, Dataset]:
    """Split stratified by class, deterministic for a seed: train / val / test."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(ds.y):
        idx = rng.permutation(np.flatnonzero(ds.y == c))
        n_test = max(1, round(len(idx) * test_fraction))
        n_val = max(1, round(len(idx) * val_fraction))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    return {k: ds.subset(np.sort(np.concatenate(v)), f"{ds.name}-{k}") for k, v in parts.items()}


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
