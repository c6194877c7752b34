"""Seeded tri-axial accelerometer windows from a rotating machine.

Physically motivated, after the classic vibration-analysis signatures (e.g. ISO 20816 practice, Randall's
*Vibration-based Condition Monitoring*): imbalance is a strong once-per-revolution (1x) radial force rotating
with the shaft; misalignment shows 2x radial and strong axial 1x/2x; a bearing outer-race fault is a train of
impulses at the ball-pass frequency (BPFO ~ 3.58x for a typical deep-groove bearing) exciting a structural
resonance. Covariate-shift knobs (``gain``, ``offset``, ``noise_std``, ``shaft_hz``) model sensor and process
drift and are reused by the fleet simulator and the drift benchmarks.
"""

from __future__ import annotations

import numpy as np

from tinymlops.data.config import VibrationParams

CLASSES = ("healthy", "imbalance", "misalignment", "bearing_fault")
AXES = ("x", "y", "z")
BPFO_RATIO = 3.58
RESONANCE_HZ = 430.0
RESONANCE_DECAY_S = 0.004


def window(p: VibrationParams, label: int, rng: np.random.Generator) -> np.ndarray:
    """Generate one window (samples x 3 axes, float32) of class ``label``."""
    n, fs = p.window_samples, p.sample_rate_hz
    t = np.arange(n) / fs
    f = p.shaft_hz * (1.0 + rng.uniform(-p.shaft_hz_jitter, p.shaft_hz_jitter))
    phase = rng.uniform(0, 2 * np.pi)
    w = 2 * np.pi * f * t + phase
    sev = rng.uniform(0.15, 1.2)  # fault severity varies from incipient to severe
    base = rng.uniform(0.15, 0.3)
    sig = np.zeros((n, 3))
    # every machine has a little residual imbalance and running-speed harmonics
    sig[:, 0] += base * np.sin(w) + 0.05 * np.sin(2 * w + 1.0)
    sig[:, 1] += base * np.cos(w) + 0.05 * np.cos(2 * w + 1.0)
    sig[:, 2] += 0.04 * np.sin(w + 0.5)
    if label == 1:  # imbalance: strong rotating 1x radial force
        a = 0.9 * sev
        sig[:, 0] += a * np.sin(w)
        sig[:, 1] += a * np.cos(w)
    elif label == 2:  # misalignment: 2x radial, strong axial 1x and 2x
        a = 0.6 * sev
        sig[:, 0] += a * np.sin(2 * w + 0.3)
        sig[:, 1] += a * np.cos(2 * w + 0.3)
        sig[:, 2] += 0.7 * sev * np.sin(w + 0.2) + 0.4 * sev * np.sin(2 * w)
    elif label == 3:  # bearing outer-race fault: impulses at BPFO ringing at a structural resonance
        period = 1.0 / (BPFO_RATIO * f)
        t0 = rng.uniform(0, period)
        ring = np.zeros(n)
        for ti in np.arange(t0, t[-1], period):
            dt = t - ti
            m = dt >= 0
            ring[m] += np.exp(-dt[m] / RESONANCE_DECAY_S) * np.sin(2 * np.pi * RESONANCE_HZ * dt[m])
        a = 0.8 * sev
        sig[:, 0] += a * ring
        sig[:, 1] += 0.6 * a * ring
        sig[:, 2] += 0.3 * a * ring
    sig += rng.normal(0.0, p.noise_std, size=sig.shape)
    return (p.gain * sig + p.offset).astype(np.float32)


def generate(p: VibrationParams, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``per_class`` windows of every class: X (N, samples, 3) float32, y (N,) int64."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(CLASSES)), per_class)
    X = np.stack([window(p, int(c), rng) for c in y])
    return X, y.astype(np.int64)


def stream(p: VibrationParams, seed: int, class_weights: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)):
    """Yield an endless stream of (window, label) pairs, as a device's sensor would produce them.

    The default class mix is the training mix, so a drift check on an undrifted stream compares like with like.
    """
    rng = np.random.default_rng(seed)
    probs = np.asarray(class_weights, dtype=float) / sum(class_weights)
    while True:
        label = int(rng.choice(len(CLASSES), p=probs))
        yield window(p, label, rng), label
