"""Pre-processing parity: every built-in block's C99 code (compiled with the host cc) against the Python block.

The Python block (float64 NumPy) is the reference; the C block computes in single precision as a Cortex-M4F does.
Bounds per block are documented in docs/mcu.md; the max abs difference is printed (pytest -s / -rA).
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

#: max abs difference of standardised features, per block (docs/mcu.md "Pre-processing parity")
BOUNDS = {"spectral-pow2": 1e-4, "spectral-dft": 1e-4, "identity-standard": 1e-6, "identity-none": 1e-6}


def _vibration_like(n: int, samples: int, axes: int | None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 1600.0
    shape = (n, samples) if axes is None else (n, samples, axes)
    x = rng.normal(0.0, 0.3, size=shape)
    tone = np.sin(2 * np.pi * 25.0 * t) + 0.3 * np.sin(2 * np.pi * 180.0 * t + 0.4)
    x += tone[None, :] if axes is None else tone[None, :, None]
    x += rng.normal(0.0, 0.02, size=(n,) + (1,) * (len(shape) - 1))  # a per-window offset (the mean feature)
    return x.astype(np.float32)


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
}


@pytest.mark.parametrize("block", list(CASES))
def test_c_block_matches_python_block(block: str) -> None:
    section, X = CASES[block]
    spec = fit(section, X[: len(X) // 2])
    ref = transform(spec, X)
    got, _ = host_preprocess(spec, X)
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    print(f"\n{block}: {spec.n_features} features, max abs diff {diff:.3g} (bound {BOUNDS[block]:g})")
    assert got.shape == ref.shape
    assert diff <= BOUNDS[block]


@pytest.mark.parametrize("block", ["spectral-pow2", "identity-standard"])
def test_c_quantisation_matches_runtime_quantize(block: str) -> None:
    """The int8 input the device computes (tm_pp_run_int8) equals the runtime's quantisation of the C features."""
    section, X = CASES[block]
    spec = fit(section, X)
    scale, zp = 0.0279167, 11
    feats, q = host_preprocess(spec, X, quant=(scale, zp))
    assert q is not None
    expected = quantize(feats, np.float32(scale), zp, np.int8)
    assert np.array_equal(q, expected)
    # and within one step of quantising the Python reference features (a feature on a rounding boundary)
    assert np.abs(q.astype(int) - quantize(transform(spec, X), np.float32(scale), zp, np.int8).astype(int)).max() <= 1
    # and saturation: far outside the int8 range clips to -128/127
    big = fit(PreprocessingSection(features="identity", normalize="none"), X[:, :4, 0])
    _, q2 = host_preprocess(big, np.array([[1e6, -1e6, 0.0, 0.01]], np.float32), quant=(0.01, -3))
    assert q2 is not None and q2.tolist() == [[127, -128, -3, -2]]


def test_spectral_band_edges_follow_the_python_block() -> None:
    """The generated C tables carry the Python block's own band edges (rfft bins, DC skipped)."""
    spec = fit(PreprocessingSection(features="spectral", bands=5), _vibration_like(4, 200, None))
    src = render_config(spec)
    assert "static const int pp_edges[6] = {1, 21, 41, 61, 81, 101};" in src
    assert "TM_PP_SPECTRAL, 200, 1, 5" in src


def test_unknown_layout_is_a_clear_error() -> None:
    from tinymlops.errors import UsageError
    from tinymlops.preprocessing import FittedPreprocessing

    spec = FittedPreprocessing(features="spectral", bands=4, scale=1.0, normalize="none", raw_shape=[8, 8, 3],
                               feature_names=["f"] * 24)
    with pytest.raises(UsageError, match=r"\(samples,\) or \(samples, axes\)"):
        render_config(spec)
