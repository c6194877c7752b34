"""Folder sources: one subfolder per class of WAV files (audio) or PNG/JPEG files (images)."""

from __future__ import annotations

from collections import defaultdict
from math import gcd
from pathlib import Path

import numpy as np

from tinymlops.data.config import DatasetSection
from tinymlops.data.dataset import Dataset, check_class_counts, folder_sha256, warn
from tinymlops.errors import DataError

AUDIO_SUFFIXES = (".wav",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _class_files(root: Path, section: DatasetSection, suffixes: tuple[str, ...],
                 warnings: list[str]) -> tuple[list[str], list[tuple[Path, int]]]:
    """Return (class names, [(file, class id)]) of a class-per-subfolder tree; warn about files left out."""
    if not root.is_dir():
        raise DataError(f"{root}: dataset.path: expected a folder with one subfolder per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no rows: no class subfolders (expected {root}/<class>/<file>)")
    names = [p.name for p in folders]
    if section.classes is not None:
        unknown = [n for n in names if n not in section.classes]
        if unknown:
            raise DataError(f"{root / unknown[0]}: unknown label {unknown[0]!r} (a class subfolder); "
                            f"dataset.classes allows only {', '.join(section.classes)}")
        names = list(section.classes)
    files: list[tuple[Path, int]] = []
    ignored = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    for folder in folders:
        cid = names.index(folder.name)
        for f in sorted(folder.rglob("*")):
            if f.name.startswith(".") or not f.is_file():
                continue
            if f.suffix.lower() in suffixes:
                files.append((f, cid))
            else:
                ignored.append(str(f.relative_to(root)))
    if ignored:
        shown = ", ".join(ignored[:3]) + (" ..." if len(ignored) > 3 else "")
        warn(warnings, f"{root}: {len(ignored)} file{'s' if len(ignored) > 1 else ''} left out (not "
                       f"{'/'.join(s.lstrip('.') for s in suffixes)} in a class subfolder): {shown}")
    return names, files


def _read_wav(path: Path) -> tuple[int, np.ndarray]:
    """Return (rate, mono float32 samples in [-1, 1]) of a PCM or float WAV file."""
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(path)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable WAV file: {exc}") from None
    if data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype.kind == "i":
        x = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    else:
        x = data.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if not len(x):
        raise DataError(f"{path}: WAV file has no audio frames")
    return int(rate), x


def load_audio_folder(section: DatasetSection, root: Path) -> Dataset:
    """Load WAV clips: mono, resampled to ``audio.sample_rate_hz``, zero-padded or trimmed to ``audio.length_s``."""
    from scipy.signal import resample_poly

    warnings: list[str] = []
    class_names, files = _class_files(root, section, AUDIO_SUFFIXES, warnings)
    clips = [(_read_wav(f), f, c) for f, c in files]
    rates: dict[int, list[Path]] = defaultdict(list)
    for (rate, _), f, _c in clips:
        rates[rate].append(f)
    target = section.audio.sample_rate_hz
    if target is None:
        if len(rates) > 1:
            (r0, f0), (r1, f1) = ((r, fs[0]) for r, fs in list(rates.items())[:2])
            raise DataError(f"{f1}: sample rate {r1} Hz differs from {f0} ({r0} Hz); set "
                            "dataset.audio.sample_rate_hz to resample every file to one rate")
        target = next(iter(rates)) if rates else 16000
    for rate, fs in sorted(rates.items()):
        if rate != target:
            warn(warnings, f"{fs[0]}: {len(fs)} WAV file{'s' if len(fs) > 1 else ''} at {rate} Hz (this one "
                           f"first) resampled to {target} Hz")
    length = max(1, round(section.audio.length_s * target))
    X = np.zeros((len(clips), length), dtype=np.float32)
    y = np.empty(len(clips), dtype=np.int64)
    for i, ((rate, x), _f, c) in enumerate(clips):
        if rate != target:
            g = gcd(rate, target)
            x = resample_poly(x, target // g, rate // g).astype(np.float32)
        X[i, :min(length, len(x))] = x[:length]
        y[i] = c
    check_class_counts(y, class_names, str(root), "file")
    sha = folder_sha256(root, [f for f, _ in files])
    return Dataset(section.name, X, y, class_names, f"audio_folder {root} (sha256 {sha[:12]})",
                   sample_rate_hz=float(target), meta={"files": len(files), "length_samples": length},
                   source_format="audio_folder", path=str(root), content_sha256=sha, warnings=tuple(warnings))


def load_image_folder(section: DatasetSection, root: Path) -> Dataset:
    """Load PNG/JPEG images as float32 (H, W, C) arrays in 0..255, resized to ``image.size`` if set."""
    from PIL import Image, UnidentifiedImageError

    warnings: list[str] = []
    class_names, files = _class_files(root, section, IMAGE_SUFFIXES, warnings)
    size = section.image.size
    channels = 1 if section.image.grayscale else 3
    first: tuple[Path, tuple[int, int]] | None = None
    arrays, y = [], np.empty(len(files), dtype=np.int64)
    for i, (f, c) in enumerate(files):
        try:
            with Image.open(f) as opened:
                im = opened.convert("L" if channels == 1 else "RGB")
            if size is not None:
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.float32)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
            raise DataError(f"{f}: not a readable image: {exc}") from None
        hw = (a.shape[0], a.shape[1])
        if first is None:
            first = (f, hw)
        elif hw != first[1]:
            raise DataError(f"{f}: image is {hw[0]}x{hw[1]} (HxW) but {first[0]} is {first[1][0]}x{first[1][1]}; "
                            "set dataset.image.size: [height, width] to resize every image")
        arrays.append(a.reshape(*hw, channels))
        y[i] = c
    check_class_counts(y, class_names, str(root), "image")
    X = np.stack(arrays)
    sha = folder_sha256(root, [f for f, _ in files])
    return Dataset(section.name, X, y, class_names, f"image_folder {root} (sha256 {sha[:12]})",
                   meta={"files": len(files), "shape": list(X.shape[1:])}, source_format="image_folder",
                   path=str(root), content_sha256=sha, warnings=tuple(warnings))
