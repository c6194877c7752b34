"""Simulated query streams for extraction detection: natural devices and three extraction attacks.

Simulation only (benchmarks and tests): production code never imports this module. Each generator yields model
inputs and calls ``predict`` (batch of inputs -> probabilities) as a black-box attacker would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


def natural(pool: np.ndarray, n: int, rng: np.random.Generator, noise: float = 0.05) -> Iterator[np.ndarray]:
    """A normal device: natural inputs (drawn from a pool of real ones) with small sensor noise."""
    scale = pool.reshape(len(pool), -1).std(axis=0).reshape(pool.shape[1:]) + 1e-6
    for i in rng.choice(len(pool), n, replace=n > len(pool)):  # fresh sensor windows, no replays
        yield (pool[i] + rng.normal(0, noise, pool.shape[1:]) * scale).astype(np.float32)


def random_probe(lo: np.ndarray, hi: np.ndarray, n: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Random probing: uniform inputs inside the valid input range."""
    for _ in range(n):
        yield rng.uniform(lo, hi).astype(np.float32)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def jacobian_augmented(seed: np.ndarray, predict: Predict, n_classes: int, n: int, rng: np.random.Generator,
                       step: float = 0.1) -> Iterator[np.ndarray]:
    """Papernot et al.'s attack: label a small seed set, fit a substitute, add x + step*sign(Jacobian) each round."""
    shape = seed.shape[1:]
    X = seed.reshape(len(seed), -1).astype(np.float64)
    scale = X.std(axis=0) + 1e-6
    emitted = 0
    for x in seed:
        if emitted < n:
            emitted += 1
            yield x.astype(np.float32)
    y = predict(seed.astype(np.float32)).argmax(axis=1)
    while emitted < n:
        W = np.zeros((X.shape[1], n_classes))  # softmax-regression substitute, a few gradient steps
        for _ in range(100):
            P = _softmax(X @ W)
            P[np.arange(len(y)), y] -= 1
            W -= 0.5 * X.T @ P / len(y)
        P = _softmax(X @ W)
        grad = P[np.arange(len(y)), y][:, None] * (W[:, y].T - P @ W.T)  # d p_y / d x of the substitute
        new = np.unique(X + step * scale * np.sign(grad), axis=0)  # an attacker never asks the same twice
        new = new[rng.permutation(len(new))][: n - emitted]
        labels = predict(new.reshape((len(new), *shape)).astype(np.float32)).argmax(axis=1)
        for x in new:
            emitted += 1
            yield x.reshape(shape).astype(np.float32)
        X, y = np.concatenate([X, new]), np.concatenate([y, labels])


def boundary_seeking(seed: np.ndarray, predict: Predict, n: int, rng: np.random.Generator,
                     steps: int = 6) -> Iterator[np.ndarray]:
    """Boundary probing: bisect segments between inputs of different predicted classes, querying each midpoint."""
    labels = predict(seed.astype(np.float32)).argmax(axis=1)
    emitted = 0
    while emitted < n:
        i, j = rng.choice(len(seed), 2, replace=False)
        if labels[i] == labels[j]:
            continue
        a, b, la = seed[i].astype(np.float64), seed[j].astype(np.float64), labels[i]
        for _ in range(steps):
            if emitted >= n:
                return
            mid = ((a + b) / 2).astype(np.float32)
            emitted += 1
            yield mid
            if predict(mid[None]).argmax() == la:
                a = mid
            else:
                b = mid
