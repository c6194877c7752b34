"""Row sources: CSV and Parquet (through pyarrow) and NumPy ``.npz`` archives; optional rows -> windows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.data.config import DatasetSection, WindowsSection
from tinymlops.data.dataset import Dataset, check_class_counts, encode_labels, file_sha256, sorted_codes, warn
from tinymlops.errors import DataError


@dataclass
class _Columns:
    """Columns of a table as arrays, plus how to point a user at a row."""

    path: Path
    fmt: str
    names: list[str]
    get: Any                 # name -> np.ndarray (float NaN / None for missing values)
    nulls: Any               # name -> (count, first index) of missing values
    codes: Any               # name -> (sorted distinct values, per-row index into them)
    n_rows: int

    def where(self, i: int) -> str:
        return f"line {i + 2}" if self.fmt == "csv" else f"row {i}"


def _arrow_columns(path: Path, fmt: str, section: DatasetSection) -> _Columns:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        if fmt == "csv":
            from pyarrow import csv

            keep = None
            if section.features is not None:  # convert only the columns used (the tokenizer still reads all)
                keep = list(dict.fromkeys([*section.features, section.label, *_extra_columns(section)]))
            try:
                table = csv.read_csv(path, convert_options=csv.ConvertOptions(include_columns=keep))
            except KeyError:  # a listed column is not in the file: read all, the checks below name it
                table = csv.read_csv(path)
        else:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)  # not pq.read_table: that imports pyarrow.dataset (and pandas), ~2 s
            wanted = None
            if section.features is not None:
                used = {*section.features, section.label, *_extra_columns(section)}
                wanted = [c for c in pf.schema_arrow.names if c in used]
            table = pf.read(columns=wanted)
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable {fmt} file: {first}") from None

    def get(name: str) -> np.ndarray:
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        return col.to_numpy()

    def nulls(name: str) -> tuple[int, int]:
        col = table.column(name)
        n = col.null_count
        if pa.types.is_floating(col.type):
            n += int(pc.sum(pc.is_nan(col)).as_py() or 0)
        if not n:
            return 0, -1
        missing = pc.or_kleene(pc.is_null(col, nan_is_null=True), pa.scalar(False))
        return n, int(pc.index(missing, True).as_py())

    def codes(name: str) -> tuple[np.ndarray, np.ndarray]:
        # pyarrow hashes strings far faster than numpy sorts them (1M labels: ~0.1 s instead of ~3 s)
        enc = pc.dictionary_encode(table.column(name).combine_chunks())
        return sorted_codes(enc.dictionary.to_numpy(zero_copy_only=False), enc.indices.to_numpy())

    return _Columns(path, fmt, list(table.column_names), get, nulls, codes, table.num_rows)


def _npz_columns(path: Path) -> _Columns:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable npz file: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    lengths = {len(a) for a in arrays.values() if a.ndim >= 1}

    def nulls(name: str) -> tuple[int, int]:
        a = arrays[name]
        if a.dtype.kind != "f":
            return 0, -1
        bad = np.isnan(a).reshape(len(a), -1).any(axis=1)
        n = int(bad.sum())
        return n, int(np.argmax(bad)) if n else -1

    def codes(name: str) -> tuple[np.ndarray, np.ndarray]:
        uniq, inverse = np.unique(arrays[name], return_inverse=True)
        return uniq, inverse.reshape(-1)

    return _Columns(path, "npz", list(arrays), arrays.__getitem__, nulls, codes, max(lengths) if lengths else 0)


def _extra_columns(section: DatasetSection) -> list[str]:
    """Columns that order or group samples (never inputs by default)."""
    cols = [section.split_column()]
    if section.windows:
        cols += [section.windows.time, section.windows.group]
    return [c for c in dict.fromkeys(cols) if c]


def _require(cols: _Columns, name: str, key: str) -> None:
    if name not in cols.names:
        shown = ", ".join(cols.names[:12]) + (" ..." if len(cols.names) > 12 else "")
        kind = "array" if cols.fmt == "npz" else "column"
        raise DataError(f"{cols.path}: {key}: {kind} {name!r} not found; the file has: {shown}")


def _check_missing(cols: _Columns, name: str) -> None:
    n, first = cols.nulls(name)
    if n:
        raise DataError(f"{cols.path}: column {name!r} has {n} missing value{'s' if n > 1 else ''} (first at "
                        f"{cols.where(first)}); fill or drop them before training")


def _features(cols: _Columns, names: list[str], warnings: list[str]) -> tuple[np.ndarray, list[str] | None]:
    """Return the inputs, (rows, n_features) float32 or one npz array as is (float32), and their column names."""
    columns: list[str] | None = names
    if cols.fmt == "npz" and len(names) == 1 and cols.get(names[0]).ndim > 1:
        a = cols.get(names[0])
        if a.dtype.kind not in "fiub":
            raise DataError(f"{cols.path}: array {names[0]!r} is not numeric ({a.dtype})")
        with np.errstate(over="ignore", invalid="ignore"):
            X = np.ascontiguousarray(a, dtype=np.float32)
        columns = [f"{names[0]}_{j}" for j in range(X.shape[1])] if X.ndim == 2 else None
    else:
        X = np.empty((cols.n_rows, len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            a = cols.get(name)
            if a.dtype.kind not in "fiub":
                sample = next((v for v in a[:1000] if v is not None), None)
                raise DataError(f"{cols.path}: feature column {name!r} is not numeric ({a.dtype}, e.g. {sample!r}); "
                                "encode it or leave it out of dataset.features")
            if a.ndim != 1:
                raise DataError(f"{cols.path}: array {name!r} has shape {list(a.shape)}: one (N, ...) array as "
                                "features, or several (N,) arrays")
            with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: reported below
                X[:, j] = a
    flat = X.reshape(len(X), -1)
    bad = ~np.isfinite(flat)
    if bad.any():  # inf in the file, or beyond float32's range (~3.4e38)
        j, i = int(np.flatnonzero(bad.any(axis=0))[0]), int(np.flatnonzero(bad.any(axis=1))[0])
        col = columns[j] if columns else names[0]
        raise DataError(f"{cols.path}: column {col!r} has infinite values or values beyond float32 (first at "
                        f"{cols.where(i)})")
    const = np.flatnonzero(flat.min(axis=0) == flat.max(axis=0)) if len(X) else np.zeros(0, np.int64)
    if len(const) and columns:
        shown = ", ".join(repr(columns[j]) for j in const[:8]) + (" ..." if len(const) > 8 else "")
        warn(warnings, f"{cols.path}: constant column{'s' if len(const) > 1 else ''} {shown} (same value in every "
                       "row): no information for the model; consider leaving them out of dataset.features")
    return X, columns


def _times(cols: _Columns, name: str) -> np.ndarray:
    """Return a time column as float64 ordering keys (numbers as they are, dates/times as epoch seconds)."""
    a = cols.get(name)
    if a.dtype.kind in "iuf":
        return a.astype(np.float64)
    if a.dtype.kind != "M":
        import pandas as pd

        try:
            a = pd.to_datetime(pd.Series(a), utc=True).to_numpy(dtype="datetime64[ns]")
        except (ValueError, TypeError):
            raise DataError(f"{cols.path}: time column {name!r} is neither numeric nor a date/time "
                            f"(e.g. {a[0]!r})") from None
    return a.astype("datetime64[ns]").astype(np.int64) / 1e9


def _windows(X: np.ndarray, y: np.ndarray, w: WindowsSection, group: np.ndarray | None, t: np.ndarray | None,
             class_names: list[str], path: Path, warnings: list[str]) -> dict[str, Any]:
    """Cut rows into windows of ``w.size`` rows (``w.stride`` apart), sorted by time within each group."""
    n = len(y)
    g = group if group is not None else np.zeros(n, np.int64)
    order = np.lexsort((t, g)) if t is not None else np.argsort(g, kind="stable")
    stride = w.stride or w.size
    idx_parts, short = [], 0
    bounds = np.flatnonzero(np.diff(g[order])) + 1
    for rows in np.split(order, bounds):
        if len(rows) < w.size:
            short += 1
            continue
        starts = np.arange(0, len(rows) - w.size + 1, stride)
        idx_parts.append(rows[starts[:, None] + np.arange(w.size)])
    if short:
        warn(warnings, f"{path}: {short} group{'s' if short > 1 else ''} shorter than windows.size={w.size} rows "
                       "left out (no full window)")
    if not idx_parts:
        raise DataError(f"{path}: no windows: every group has fewer than windows.size={w.size} rows")
    idx = np.concatenate(idx_parts)
    labels = y[idx]
    pure = (labels == labels[:, :1]).all(axis=1)
    if not pure.all():
        n_mixed = int((~pure).sum())
        if w.mixed_labels == "skip":
            warn(warnings, f"{path}: {n_mixed} of {len(idx)} windows mix labels and were skipped "
                           "(windows.mixed_labels: skip)")
            idx, labels = idx[pure], labels[pure]
        else:
            counts = np.stack([(labels == c).sum(axis=1) for c in range(len(class_names))], axis=1)
            labels = np.repeat(counts.argmax(axis=1)[:, None], w.size, axis=1)
            warn(warnings, f"{path}: {n_mixed} of {len(idx)} windows mix labels and took the majority label "
                           "(windows.mixed_labels: majority)")
    if not len(idx):
        raise DataError(f"{path}: no windows left: every window mixes labels (see windows.mixed_labels)")
    out: dict[str, Any] = {"X": X[idx], "y": labels[:, 0].astype(np.int64), "groups": g[idx[:, 0]]}
    if t is not None:
        out["t_start"], out["t_end"] = t[idx[:, 0]], t[idx[:, -1]]
    return out


def load_rows(section: DatasetSection, path: Path) -> Dataset:
    """Load a csv, parquet or npz source: validate, encode labels, optionally window; see docs/data.md."""
    fmt = str(section.source)
    cols = _npz_columns(path) if fmt == "npz" else _arrow_columns(path, fmt, section)
    if cols.n_rows == 0:
        raise DataError(f"{path}: no rows")
    _require(cols, section.label, "dataset.label")
    extra = _extra_columns(section)
    for key, name in (("windows.time", section.windows and section.windows.time),
                      ("windows.group", section.windows and section.windows.group),
                      ("split.by", section.split.by)):
        if name:
            _require(cols, name, f"dataset.{key}")
    if section.features is not None:
        for f in section.features:
            _require(cols, f, "dataset.features")
        names = list(section.features)
    else:
        names = [c for c in cols.names if c != section.label and c not in extra]
        if fmt == "npz":
            names = [c for c in names if cols.get(c).ndim >= 1 and len(cols.get(c)) == len(cols.get(section.label))]
            big = [c for c in names if cols.get(c).ndim > 1]
            names = big if len(big) == 1 else names
        if not names:
            raise DataError(f"{path}: no feature columns besides the label {section.label!r}")
    if fmt == "npz":
        lengths = {len(cols.get(c)) for c in [*names, section.label, *extra]}
        if len(lengths) > 1:
            raise DataError(f"{path}: arrays {[*names, section.label]} have different lengths {sorted(lengths)}")
    for c in [section.label, *extra, *names]:
        _check_missing(cols, c)
    warnings: list[str] = []
    X, columns = _features(cols, names, warnings)
    uniq, inverse = cols.codes(section.label)
    y, class_names = encode_labels(uniq, inverse, section.classes, f"{path}: column {section.label!r}", cols.where)
    parts: dict[str, Any] = {"X": X, "y": y}
    by = section.split_column()
    columnar = columns is not None
    if section.windows is not None:
        w = section.windows
        if not columnar:
            raise DataError(f"{path}: windows: need rows of columns; array {names[0]!r} holds "
                            f"{list(X.shape[1:])} samples")
        if by and by not in (w.time, w.group):
            raise DataError(f"{path}: split.by: {by!r} must be windows.group or windows.time when windows are cut "
                            "(a window spans several rows)")
        if section.split.strategy == "group" and by != w.group:
            raise DataError(f"{path}: split.by: the group strategy needs the group column windows.group")
        if section.split.strategy == "time" and by != w.time:
            raise DataError(f"{path}: split.by: the time strategy needs the time column windows.time")
        t = _times(cols, w.time) if w.time else None
        g = cols.codes(w.group)[1] if w.group else None
        parts = _windows(X, y, w, g, t, class_names, path, warnings)
    elif section.split.strategy == "group":
        parts["groups"] = cols.codes(str(by))[1]
    elif section.split.strategy == "time":
        t = _times(cols, str(by))
        parts["t_start"], parts["t_end"] = t, t
    unit = "window" if section.windows else "sample"
    check_class_counts(parts["y"], class_names, str(path), unit)
    sha = file_sha256(path)
    meta: dict[str, object] = {"rows": cols.n_rows}
    if section.windows is not None:
        meta["windows"] = section.windows.model_dump()
    return Dataset(section.name, parts["X"], parts["y"], class_names, f"{fmt} {path} (sha256 {sha[:12]})",
                   meta=meta, feature_names=columns, source_format=fmt,
                   path=str(path), content_sha256=sha, groups=parts.get("groups"), t_start=parts.get("t_start"),
                   t_end=parts.get("t_end"), warnings=tuple(warnings))
