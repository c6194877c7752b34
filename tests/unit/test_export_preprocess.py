"""Pre-processing parity: every built-in block's C99 code (compiled with the host cc) against the Python block.

The Python block (float64 NumPy) is the reference; the C block computes in single precision as a Cortex-M4F does.
Bounds per block are documented in docs/data.md ("Pre-processing"); the max abs difference is printed (pytest -s).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tinymlops.config import PreprocessingSection
from tinymlops.export.preprocess_c import host_preprocess, render_config
from tinymlops.preprocessing import fit, transform
from tinymlops.runtimes import quantize

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a host C compiler")

#: max abs difference per block (docs/data.md "Pre-processing": C parity)
BOUNDS = {"spectral-pow2": 1e-4, "spectral-dft": 1e-4, "identity-standard": 1e-6, "identity-none": 1e-6,
          "window_stats": 1e-4, "window_stats-subset-standard": 1e-4, "log_mel-pow2": 1e-4,
          "log_mel-dft-magnitude": 1e-4, "mfcc-standard": 1e-4, "image-gray-down": 1e-6, "image-rgb-up-standard": 1e-5,
          "image-chain-3": 1e-5}


def _vibration_like(n: int, samples: int, axes: int | None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 1600.0
    shape = (n, samples) if axes is None else (n, samples, axes)
    x = rng.normal(0.0, 0.3, size=shape)
    tone = np.sin(2 * np.pi * 25.0 * t) + 0.3 * np.sin(2 * np.pi * 180.0 * t + 0.4)
    x += tone[None, :] if axes is None else tone[None, :, None]
    x += rng.normal(0.0, 0.02, size=(n,) + (1,) * (len(shape) - 1))  # a per-window offset (the mean feature)
    return x.astype(np.float32)


def _audio_like(n: int, samples: int, rate: float = 8000.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    f0 = rng.uniform(200, 2000, size=(n, 1))
    return (0.5 * np.sin(2 * np.pi * f0 * t[None]) + 0.1 * rng.normal(size=(n, samples))).astype(np.float32)


CASES = {
    # the demo's block: (256 samples, 3 axes), 8 bands, standardised -> radix-2 FFT path
    "spectral-pow2": (PreprocessingSection(features="spectral", bands=8), _vibration_like(60, 256, 3)),
    # 200 samples (not a power of two), one axis given as (N, samples), 5 bands, scaled -> direct DFT path
    "spectral-dft": (PreprocessingSection(features="spectral", bands=5, scale=2.0), _vibration_like(40, 200, None)),
    # digits-like 8x8 images scaled by 16 and standardised
    "identity-standard": (PreprocessingSection(features="identity", scale=16.0),
                          np.random.default_rng(1).integers(0, 17, size=(50, 8, 8)).astype(np.float32)),
    "identity-none": (PreprocessingSection(features="identity", scale=3.0, normalize="none"),
                      np.random.default_rng(2).normal(size=(30, 20)).astype(np.float32)),
    "window_stats": (PreprocessingSection(blocks=["window_stats"], scale=4.0), _vibration_like(40, 128, 3)),
    "window_stats-subset-standard": (PreprocessingSection(blocks=[
        {"block": "window_stats", "stats": ["crest", "rms", "kurtosis"]}, "standardize"]), _vibration_like(40, 96, 2)),
    "log_mel-pow2": (PreprocessingSection(blocks=[{"block": "log_mel", "frame_length": 256, "frame_step": 128,
                                                   "n_mels": 32}]), _audio_like(12, 4000)),
    "log_mel-dft-magnitude": (PreprocessingSection(blocks=[
        {"block": "log_mel", "frame_length": 200, "fft_length": 200, "frame_step": 100, "n_mels": 20, "power": 1},
        {"block": "standardize", "mode": "global"}]), _audio_like(10, 3000)),
    "mfcc-standard": (PreprocessingSection(blocks=[{"block": "mfcc", "frame_length": 256, "frame_step": 160,
                                                    "n_mels": 40, "n_mfcc": 13}, "standardize"]),
                      _audio_like(12, 4000)),
    "image-gray-down": (PreprocessingSection(blocks=[{"block": "image", "size": [12, 10], "grayscale": True,
                                                      "scale": 255}]),
                        np.random.default_rng(4).integers(0, 256, size=(10, 20, 24, 3)).astype(np.float32)),
    # three blocks: resize -> standardize -> grayscale ping-pongs between the two intermediate buffers
    "image-chain-3": (PreprocessingSection(blocks=[{"block": "image", "size": [9, 7]}, "standardize",
                                                   {"block": "image", "grayscale": True}]),
                      np.random.default_rng(6).integers(0, 256, size=(8, 20, 24, 3)).astype(np.float32)),
    "image-rgb-up-standard": (PreprocessingSection(blocks=[{"block": "image", "size": [30, 31], "scale": 255},
                                                           {"block": "standardize", "mode": "global"}]),
                              np.random.default_rng(5).integers(0, 256, size=(8, 20, 24, 3)).astype(np.float32)),
}


@pytest.mark.parametrize("block", list(CASES))
def test_c_block_matches_python_block(block: str) -> None:
    section, X = CASES[block]
    spec = fit(section, X[: len(X) // 2], 8000.0)
    ref = transform(spec, X)
    got, _ = host_preprocess(spec, X)
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    print(f"\n{block}: {spec.n_features} features, max abs diff {diff:.3g} (bound {BOUNDS[block]:g})")
    assert got.shape == ref.shape
    assert diff <= BOUNDS[block]


@pytest.mark.parametrize("block", ["spectral-pow2", "identity-standard", "mfcc-standard"])
def test_c_quantisation_matches_runtime_quantize(block: str) -> None:
    """The int8 input the device computes (tm_pp_run_int8) equals the runtime's quantisation of the C features."""
    section, X = CASES[block]
    spec = fit(section, X, 8000.0)
    scale, zp = 0.0279167, 11
    feats, q = host_preprocess(spec, X, quant=(scale, zp))
    assert q is not None
    expected = quantize(feats, np.float32(scale), zp, np.int8)
    assert np.array_equal(q, expected)
    # and within one step of quantising the Python reference features (a feature on a rounding boundary)
    assert np.abs(q.astype(int) - quantize(transform(spec, X), np.float32(scale), zp, np.int8).astype(int)).max() <= 1
    # and saturation: far outside the int8 range clips to -128/127
    big = fit(PreprocessingSection(features="identity", normalize="none"), np.zeros((2, 4)))
    _, q2 = host_preprocess(big, np.array([[1e6, -1e6, 0.0, 0.01]], np.float32), quant=(0.01, -3))
    assert q2 is not None and q2.tolist() == [[127, -128, -3, -2]]


def test_spectral_band_edges_follow_the_python_block() -> None:
    """The generated C tables carry the Python block's own band edges (rfft bins, DC skipped)."""
    spec = fit(PreprocessingSection(features="spectral", bands=5), _vibration_like(4, 200, None))
    src = render_config(spec)
    assert "static const int pp0_edges[6] = {1, 21, 41, 61, 81, 101};" in src
    assert ".kind = TM_PP_SPECTRAL, .samples = 200, .channels = 1, .bands = 5" in src


def test_unknown_layout_is_a_clear_error() -> None:
    from tinymlops.errors import UsageError
    from tinymlops.preprocessing import FittedPreprocessing

    spec = FittedPreprocessing(features="spectral", bands=4, scale=1.0, normalize="none", raw_shape=[8, 8, 3],
                               feature_names=["f"] * 24)
    with pytest.raises(UsageError, match=r"\(samples,\) or \(samples, axes\)"):
        render_config(spec)


def test_custom_block_has_no_c(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymlops.errors import UsageError

    (tmp_path / "pp_c_blocks.py").write_text("def double(X):\n    return 2 * X\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = fit(PreprocessingSection(blocks=["pp_c_blocks:double"]), np.ones((2, 3)))
    with pytest.raises(UsageError, match="block 'pp_c_blocks:double' has no C implementation"):
        render_config(spec)


def test_work_buffer_is_what_the_chain_needs() -> None:
    """Standardize runs in place in the feature buffer; longer chains ping-pong between two intermediate buffers;
    no blocks or a lone standardize stream (no feature buffer)."""
    from tinymlops.export.preprocess_c import buffer_floats

    spec = fit(*CASES["mfcc-standard"][:2], 8000.0)
    assert buffer_floats(spec) == (spec.n_features, 2 * 256 + 129 + 40)  # mfcc writes the features: scratch only
    chain = fit(CASES["image-chain-3"][0], CASES["image-chain-3"][1])
    assert buffer_floats(chain) == (9 * 7, 2 * 9 * 7 * 3)
    assert buffer_floats(fit(*CASES["identity-standard"]))[0] == 1
