"""Bundled datasets: deterministic, stratified splits; a physically-shaped vibration generator with drift knobs."""

from __future__ import annotations

import numpy as np

from tinymlops.config import PreprocessingSection
from tinymlops.data import load_dataset, shift_augment, split
from tinymlops.data.config import DatasetSection, VibrationParams
from tinymlops.data.vibration import CLASSES, generate, stream, window
from tinymlops.metrics import agreement, classification_metrics, confusion
from tinymlops.preprocessing import fit, transform


def small_vibration(seed: int = 1) -> DatasetSection:
    return DatasetSection(name="vibration", seed=seed, vibration=VibrationParams(windows_per_class=20))


def test_splits_are_deterministic_stratified_and_disjoint() -> None:
    ds = load_dataset(small_vibration())
    a = split(ds, 3, 0.2, 0.2)
    b = split(ds, 3, 0.2, 0.2)
    assert {k: v.digest() for k, v in a.items()} == {k: v.digest() for k, v in b.items()}
    assert sum(len(v.y) for v in a.values()) == len(ds.y)
    for part in a.values():
        assert set(np.unique(part.y)) == set(range(len(CLASSES)))
    c = split(ds, 4, 0.2, 0.2)
    assert c["test"].digest() != a["test"].digest()


def test_digits_are_bundled() -> None:
    ds = load_dataset(DatasetSection(name="digits"))
    assert ds.X.shape == (1797, 64) and len(ds.class_names) == 10
    assert "sklearn" in ds.source


def test_vibration_generator_is_seeded_and_gain_scales_signal() -> None:
    p = VibrationParams()
    x1, y1 = generate(p, 3, seed=5)
    x2, _ = generate(p, 3, seed=5)
    assert np.array_equal(x1, x2) and x1.shape == (12, p.window_samples, 3) and x1.dtype == np.float32
    base = window(p, 1, np.random.default_rng(0))
    gained = window(p.model_copy(update={"gain": 1.15}), 1, np.random.default_rng(0))
    np.testing.assert_allclose(gained, 1.15 * base, rtol=1e-5, atol=1e-6)
    offset = window(p.model_copy(update={"offset": 0.5}), 1, np.random.default_rng(0))
    np.testing.assert_allclose(offset - base, 0.5, atol=1e-5)


def test_fault_signatures_differ_as_physics_says() -> None:
    p = VibrationParams(noise_std=0.0)
    rng = np.random.default_rng(0)
    rms = {c: np.mean([np.sqrt((window(p, c, rng) ** 2).mean(axis=0)) for _ in range(20)], axis=0)
           for c in range(4)}
    assert rms[1][0] > 2 * rms[0][0]          # imbalance: strong radial 1x
    assert rms[2][2] > 3 * rms[0][2]          # misalignment: strong axial
    kurt = {c: np.mean([((w := window(p, c, rng)[:, 0] - window(p, c, rng)[:, 0].mean()) ** 4).mean()
                        / (w ** 2).mean() ** 2 for _ in range(20)]) for c in (0, 3)}
    assert kurt[3] > kurt[0]                  # bearing impulses are spiky


def test_stream_yields_labelled_windows() -> None:
    it = stream(VibrationParams(), seed=0)
    xs, ys = zip(*(next(it) for _ in range(50)), strict=True)
    assert all(x.shape == (256, 3) for x in xs) and set(ys) <= {0, 1, 2, 3}


def test_spectral_preprocessing_roundtrip_and_shape_check() -> None:
    ds = load_dataset(small_vibration())
    spec = fit(PreprocessingSection(features="spectral", bands=8), ds.X, ds.sample_rate_hz)
    f = transform(spec, ds.X)
    assert f.shape == (len(ds.X), 36) and f.dtype == np.float32
    assert spec.feature_names[0] == "x_band0_log_energy" and spec.n_features == 36
    np.testing.assert_allclose(f.mean(axis=0), 0, atol=1e-4)
    again = type(spec).model_validate_json(spec.model_dump_json())
    np.testing.assert_array_equal(transform(again, ds.X[:5]), f[:5])
    try:
        transform(spec, ds.X[:, :100])
    except ValueError as exc:
        assert "does not match" in str(exc)
    else:
        raise AssertionError("shape mismatch must raise")


def test_shift_augment_moves_pixels() -> None:
    X = np.zeros((1, 16), np.float32)
    X[0, 5] = 1.0  # row 1, col 1 of a 4x4 image
    Xa, ya = shift_augment(X, np.array([3]))
    assert Xa.shape == (5, 16) and (ya == 3).all()
    assert {int(np.flatnonzero(x)[0]) for x in Xa} == {5, 1, 9, 4, 6}


def test_metrics() -> None:
    y = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 2])
    m = classification_metrics(y, pred, 3)
    assert m["accuracy"] == 0.8
    assert abs(m["macro_f1"] - np.mean([2 / 3, 0.8, 1.0])) < 1e-9
    assert confusion(y, pred, 3)[0, 1] == 1
    assert agreement(np.eye(3)[pred], pred) == 1.0
