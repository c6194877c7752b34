"""The NumPy audio and image blocks against TensorFlow on the same input: log_mel / mfcc within 1e-4 of
``tf.signal``; the image block's resize and grayscale against ``tf.image``."""

from __future__ import annotations

import numpy as np
import pytest

from tinymlops.preprocessing import PreprocessingSection, fit, transform

pytestmark = pytest.mark.integration

RATE = 16000.0


def _audio(n: int = 6, samples: int = 8000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / RATE
    f0 = rng.uniform(150, 3000, size=(n, 1))
    chirp = np.sin(2 * np.pi * (f0 + 800 * t[None]) * t[None])
    return (0.4 * chirp + 0.05 * rng.normal(size=(n, samples))).astype(np.float32)


def _tf_log_mel(x: np.ndarray, frame_length: int, frame_step: int, fft_length: int, n_mels: int, fmin: float,
                fmax: float, power: int, offset: float) -> np.ndarray:
    from tinymlops.tf import tf

    stft = tf.signal.stft(tf.constant(x), frame_length, frame_step, fft_length,
                          window_fn=tf.signal.hann_window, pad_end=False)
    spec = tf.abs(stft) ** power
    w = tf.signal.linear_to_mel_weight_matrix(n_mels, fft_length // 2 + 1, RATE, fmin, fmax)
    return tf.math.log(tf.tensordot(spec, w, 1) + offset).numpy()


@pytest.mark.parametrize(("frame_length", "frame_step", "fft_length", "n_mels", "power"),
                         [(400, 160, 512, 40, 2), (256, 128, None, 32, 1), (480, 240, 480, 20, 2)])
def test_log_mel_and_mfcc_match_tf_signal(frame_length: int, frame_step: int, fft_length: int | None, n_mels: int,
                                          power: int) -> None:
    from tinymlops.tf import tf

    X = _audio()
    block = {"frame_length": frame_length, "frame_step": frame_step, "fft_length": fft_length, "n_mels": n_mels,
             "fmin_hz": 60.0, "fmax_hz": 7600.0, "power": power}
    spec = fit(PreprocessingSection(blocks=[{"block": "log_mel", **block}]), X, RATE)
    ours = transform(spec, X).reshape(len(X), *spec.feature_shape)  # type: ignore[misc]
    nfft = spec.blocks[0].fft_length  # type: ignore[attr-defined]
    ref = _tf_log_mel(X, frame_length, frame_step, nfft, n_mels, 60.0, 7600.0, power, 1e-6)
    diff = float(np.abs(ours - ref).max())
    print(f"\nlog_mel {frame_length}/{frame_step}/{nfft}/{n_mels} power {power}: max abs diff vs tf.signal {diff:.3g}")
    assert ours.shape == ref.shape and diff <= 1e-4

    mspec = fit(PreprocessingSection(blocks=[{"block": "mfcc", **block, "n_mfcc": 13}]), X, RATE)
    mf = transform(mspec, X).reshape(len(X), -1, 13)
    ref_m = tf.signal.mfccs_from_log_mel_spectrograms(tf.constant(ref))[..., :13].numpy()
    diff_m = float(np.abs(mf - ref_m).max())
    print(f"mfcc: max abs diff vs tf.signal {diff_m:.3g}")
    assert diff_m <= 1e-4


@pytest.mark.parametrize(("size", "grayscale"), [((12, 10), True), ((37, 29), False), ((20, 24), True)])
def test_image_block_matches_tf_image(size: tuple[int, int], grayscale: bool) -> None:
    from tinymlops.tf import tf

    X = np.random.default_rng(1).integers(0, 256, size=(5, 20, 24, 3)).astype(np.float32)
    spec = fit(PreprocessingSection(blocks=[{"block": "image", "size": list(size), "grayscale": grayscale,
                                             "scale": 255.0}]), X)
    ours = transform(spec, X).reshape(len(X), *spec.feature_shape)  # type: ignore[misc]
    ref = tf.image.resize(tf.constant(X), size, method="bilinear", antialias=False)
    if grayscale:
        ref = tf.image.rgb_to_grayscale(ref)
    diff = float(np.abs(ours - ref.numpy() / 255.0).max())
    print(f"\nimage {size} gray={grayscale}: max abs diff vs tf.image {diff:.3g}")
    assert diff <= 1e-5
