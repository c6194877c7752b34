"""The in-memory dataset every source produces, and helpers shared by the sources (labels, hashes, checks)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.errors import DataError

log = logging.getLogger("tinymlops.data")


@dataclass(frozen=True)
class Dataset:
    """Raw inputs and integer labels of one dataset (or split), with where they came from.

    ``groups`` (integer group ids) and ``t_start``/``t_end`` (sample time span) are set when a group or time split
    needs them; ``path``/``content_sha256`` name the file or folder read (None for built-in sources).
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    class_names: list[str]
    source: str
    sample_rate_hz: float | None = None
    meta: dict[str, object] = field(default_factory=dict)
    feature_names: list[str] | None = None
    source_format: str = "builtin"
    path: str | None = None
    content_sha256: str | None = None
    groups: np.ndarray | None = None
    t_start: np.ndarray | None = None
    t_end: np.ndarray | None = None
    warnings: tuple[str, ...] = ()

    def digest(self) -> str:
        """Return a short content hash of inputs and labels."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.X, dtype=np.float32).data)
        h.update(np.ascontiguousarray(self.y, dtype=np.int64).data)
        return h.hexdigest()[:16]

    def subset(self, idx: np.ndarray, name: str) -> Dataset:
        """Return the rows ``idx`` as a new dataset called ``name``."""
        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return dataclasses.replace(self, name=name, X=self.X[idx], y=self.y[idx], groups=take(self.groups),
                                   t_start=take(self.t_start), t_end=take(self.t_end))


def warn(warnings: list[str], message: str) -> None:
    """Log a data warning and keep it (it is logged on the train run too)."""
    log.warning(message)
    warnings.append(message)


def file_sha256(path: Path, h: Any = None) -> str:
    """Return the sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = h or hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return str(h.hexdigest())


def folder_sha256(root: Path, files: list[Path]) -> str:
    """Return one sha256 over the relative names and contents of ``files`` (sorted) under ``root``."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(bytes.fromhex(file_sha256(f)))
    return h.hexdigest()


def sorted_codes(uniq: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder distinct values ``uniq`` (with per-row ``codes`` into them) so that the values are sorted."""
    order = np.argsort(uniq, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[codes]


def encode_labels(uniq: np.ndarray, inverse: np.ndarray, classes: list[str] | None, where: str,
                  locate: Any = None) -> tuple[np.ndarray, list[str]]:
    """Map labels (sorted distinct values ``uniq`` and per-row ``inverse`` codes) to class ids; return (y, names).

    Without ``classes`` the class names are the sorted distinct labels (numeric labels sort as numbers). With
    ``classes`` a label outside the list raises DataError naming it and where it first occurs (``locate(index)``).
    """
    if uniq.dtype.kind == "f" and np.all(uniq == np.round(uniq)):
        names = [str(int(u)) for u in uniq]
    else:
        names = [str(u) for u in uniq]
    if classes is None:
        return inverse.astype(np.int64), names
    order = {c: i for i, c in enumerate(classes)}
    unknown = [n for n in names if n not in order]
    if unknown:
        first = int(np.flatnonzero(inverse == names.index(unknown[0]))[0])
        at = f" ({locate(first)})" if locate else ""
        raise DataError(f"{where}: unknown label {unknown[0]!r}{at}; dataset.classes allows only "
                        f"{', '.join(classes)}" + (f" ({len(unknown)} unknown labels in all)" if len(unknown) > 1 else ""))
    remap = np.array([order[n] for n in names], dtype=np.int64)
    return remap[inverse], list(classes)


def check_class_counts(y: np.ndarray, class_names: list[str], where: str, unit: str = "sample") -> None:
    """Raise DataError naming the first class with fewer than two samples (a split needs at least two)."""
    counts = np.bincount(y, minlength=len(class_names))
    for name, n in zip(class_names, counts, strict=True):
        if n < 2:
            raise DataError(f"{where}: class {name!r} has {n} {unit}{'s' if n != 1 else ''}; every class needs at "
                            "least 2 (one to train on, one to test)")
    if len(class_names) < 2:
        raise DataError(f"{where}: only one class ({class_names[0]!r}) in the data; a classifier needs at least 2")
