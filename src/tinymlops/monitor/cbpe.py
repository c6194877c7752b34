"""Label-free performance estimation (CBPE-style) from calibrated confidence and mergeable sketches.

At training time the model's confidence is calibrated on the validation split: per predicted class and
top-class confidence bin (the reference's confidence bins), how many predictions there were and how many were
right, plus the validation confusion matrix (where wrong predictions went). Devices already sketch every
inference into a predicted-class x confidence-bin histogram, so a window's expected confusion matrix is

    E[pred j, true j] = sum_b n[j, b] * P(correct | j, b)
    E[pred j, true k] = (n[j] - E[j, j]) * P(true k | pred j, wrong)          (k != j)

and accuracy and macro-F1 follow from it (NannyML's CBPE with histogram-binning calibration; no raw data and no
labels leave the devices, and the estimate of merged sketches is the estimate of the merged window). The interval
is a parametric bootstrap over both the window's sampling noise (which predictions happen to be right) and the
calibration's own uncertainty (Beta/Dirichlet posteriors of the validation counts).

Like every CBPE, the estimate assumes the model stays calibrated per bin under the shift (covariate shift, no
concept shift); ``benchmarks/learning.py`` measures how far that holds on the vibration generator's shifts.
NumPy + pydantic only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

#: pseudo-counts: a sparse (class, bin) cell leans on its bin's pooled accuracy, a sparse bin on its mean confidence.
CELL_PRIOR = 5.0
BIN_PRIOR = 2.0
#: pseudo-count spread over the other classes when distributing a predicted class's errors.
ERROR_PRIOR = 1.0
BOOTSTRAP_DRAWS = 400
DRAW_CELLS = 4_000_000  # bootstrap draws x classes x max(classes, bins) held in memory at once


class Calibration(BaseModel):
    """Validation-split calibration of a classifier's top-class confidence (stored in the reference profile)."""

    model_config = ConfigDict(extra="forbid")

    method: str = "binned-cbpe"
    n: int
    confidence_inner_edges: list[float]
    counts: list[list[int]]  # [predicted class][confidence bin]: validation predictions
    correct: list[list[int]]  # [predicted class][confidence bin]: ... of them right
    confusion: list[list[int]]  # [predicted class][true class]
    mean_confidence: list[float]  # per confidence bin (the prior of a bin with few samples)
    class_counts: list[int]  # true-class counts of the training data (the class prior a cohort is assumed to keep)
    accuracy: float
    macro_f1: float


class PerformanceEstimate(BaseModel):
    """Estimated accuracy and macro-F1 of a window with a (1 - alpha) interval."""

    model_config = ConfigDict(extra="forbid")

    n: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    macro_f1: float
    macro_f1_low: float
    macro_f1_high: float
    level: float  # interval confidence, e.g. 0.95
    joint: bool  # False: the sketch had no class x confidence histogram (older agent); classes assumed alike
    class_prior: bool = False  # raked to the training class mix (no label shift assumed)
    accuracy_calibration_only: float | None = None  # with the prior: what calibration alone estimates (label shift)
    reference_accuracy: float | None = None
    reference_macro_f1: float | None = None


def confidence_bins(edges: Sequence[float], probabilities: np.ndarray) -> np.ndarray:
    """Return the confidence bin of every row's top-class probability (open-ended bins on ``edges``)."""
    conf = np.asarray(probabilities, dtype=np.float64).max(axis=1)
    return np.searchsorted(np.asarray(edges, dtype=np.float64), conf, side="right")


def fit_calibration(probabilities: np.ndarray, y_true: np.ndarray, edges: Sequence[float],
                    prior_labels: np.ndarray | None = None) -> Calibration:
    """Calibrate top-class confidence on a labelled split (the validation split at training time).

    ``prior_labels``: the training labels, whose class mix is the prior the estimate may assume (default: the
    split's own labels).

    Raises:
        ValueError: shapes disagree, labels outside the classes, or an empty split.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    if p.ndim != 2 or len(p) != len(y) or len(y) == 0:
        raise ValueError(f"calibration needs probabilities (N, C) and N labels, got {p.shape} and {y.shape}")
    n_classes, n_bins = p.shape[1], len(edges) + 1
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"calibration labels must be in [0, {n_classes}), got {y.min()}..{y.max()}")
    pred, b = p.argmax(axis=1), confidence_bins(edges, p)
    counts = np.zeros((n_classes, n_bins), np.int64)
    correct = np.zeros((n_classes, n_bins), np.int64)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(counts, (pred, b), 1)
    np.add.at(correct, (pred, b), (pred == y).astype(np.int64))
    np.add.at(confusion, (pred, y), 1)
    conf = p.max(axis=1)
    mids = _bin_midpoints(edges)
    mean_conf = [float(conf[b == i].mean()) if (b == i).any() else mids[i] for i in range(n_bins)]
    acc, f1 = (float(v[0]) for v in _batch_metrics(confusion[None].astype(np.float64)))
    prior = np.asarray(y if prior_labels is None else prior_labels, dtype=np.int64).reshape(-1)
    prior = prior[(prior >= 0) & (prior < n_classes)]
    return Calibration(n=len(y), confidence_inner_edges=list(map(float, edges)), counts=counts.tolist(),
                       correct=correct.tolist(), confusion=confusion.tolist(), mean_confidence=mean_conf,
                       class_counts=np.bincount(prior, minlength=n_classes).tolist(), accuracy=acc, macro_f1=f1)


def _bin_midpoints(edges: Sequence[float]) -> list[float]:
    e = [0.0, *map(float, edges), 1.0]
    return [(a + b) / 2 for a, b in zip(e[:-1], e[1:], strict=True)]


def _batch_metrics(cms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return accuracy and macro-F1 of [pred, true] confusion matrices (D, C, C); absent classes skipped."""
    tp = np.diagonal(cms, axis1=1, axis2=2)
    denom = cms.sum(axis=2) + cms.sum(axis=1)
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1e-12), 0.0)
    acc = tp.sum(axis=1) / np.maximum(cms.sum(axis=(1, 2)), 1e-12)
    return acc, f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _posteriors(cal: Calibration) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return Beta(alpha, beta) of P(correct | class, bin) and Dirichlet weights of where errors go."""
    m = np.asarray(cal.counts, np.float64)
    c = np.asarray(cal.correct, np.float64)
    prior = np.clip(np.asarray(cal.mean_confidence, np.float64), 1e-3, 1 - 1e-3)
    pooled = (c.sum(axis=0) + BIN_PRIOR * prior) / (m.sum(axis=0) + BIN_PRIOR)
    a = c + CELL_PRIOR * pooled[None, :]
    b = (m - c) + CELL_PRIOR * (1 - pooled[None, :])
    conf = np.asarray(cal.confusion, np.float64)
    k = len(conf)
    off = ~np.eye(k, dtype=bool)
    err = np.where(off, conf + ERROR_PRIOR / max(k - 1, 1), 0.0)
    return a, b, err, off


def estimate(cal: Calibration, joint_counts: Sequence[Sequence[int]] | None,
             prediction_counts: Sequence[int], confidence_counts: Sequence[int], level: float = 0.95,
             reference: dict[str, float] | None = None, class_prior: bool = True,
             seed: int = 0) -> PerformanceEstimate | None:
    """Estimate a window's accuracy and macro-F1 from its sketch histograms (None without inferences).

    ``joint_counts`` is the sketch's predicted-class x confidence-bin histogram; without it (older agents) the
    joint is taken as the product of the two marginals, i.e. every class assumed equally confident.
    ``class_prior``: assume the window's true classes keep the training mix (no label shift) and rake the expected
    confusion matrix to it (:func:`rake`): a model that is confidently wrong under a sensor shift still has to
    explain where the missing classes went.

    Raises:
        ValueError: histograms whose shapes do not match the calibration.
    """
    n_classes, n_bins = len(cal.counts), len(cal.confidence_inner_edges) + 1
    pred = np.asarray(prediction_counts, np.float64)
    confc = np.asarray(confidence_counts, np.float64)
    if pred.shape != (n_classes,) or confc.shape != (n_bins,):
        raise ValueError(f"sketch histograms {pred.shape}/{confc.shape} do not match the calibration's "
                         f"{n_classes} classes x {n_bins} confidence bins")
    n = float(pred.sum())
    if n <= 0:
        return None
    joint = bool(joint_counts)
    if joint:
        nj = np.asarray(joint_counts, np.float64)
        if nj.shape != (n_classes, n_bins):
            raise ValueError(f"class x confidence histogram {nj.shape} does not match ({n_classes}, {n_bins})")
    else:
        nj = np.outer(pred, confc) / max(confc.sum(), 1.0)
    a, b, err, off = _posteriors(cal)
    prior_counts = np.asarray(cal.class_counts, np.float64) + 0.5
    use_prior = class_prior and len(prior_counts) == n_classes
    cm = _expected_confusion(nj[None], (a / (a + b))[None], (err / err.sum(axis=1, keepdims=True))[None])
    plain_acc = float(_batch_metrics(cm)[0][0])
    if use_prior:
        cm = rake(cm, prior_target(cm, (prior_counts / prior_counts.sum())[None], n))
    acc, f1 = _batch_metrics(cm)

    # parametric bootstrap in chunks (memory stays ~ DRAW_CELLS floats however many classes)
    rng = np.random.default_rng(seed)
    cells = np.rint(nj).astype(np.int64)
    chunk = max(1, min(BOOTSTRAP_DRAWS, DRAW_CELLS // (n_classes * max(n_classes, n_bins))))
    parts = [_draw(rng, min(chunk, BOOTSTRAP_DRAWS - i), a, b, err, off, cells,
                   prior_counts if use_prior else None, n) for i in range(0, BOOTSTRAP_DRAWS, chunk)]
    accs, f1s = np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    ref = reference or {}
    acc0, f10 = float(acc[0]), float(f1[0])
    return PerformanceEstimate(
        n=int(round(n)), accuracy=acc0, accuracy_low=float(min(np.quantile(accs, lo), acc0)),
        accuracy_high=float(max(np.quantile(accs, hi), acc0)), macro_f1=f10,
        macro_f1_low=float(min(np.quantile(f1s, lo), f10)), macro_f1_high=float(max(np.quantile(f1s, hi), f10)),
        level=level, joint=joint, class_prior=use_prior, accuracy_calibration_only=plain_acc if use_prior else None,
        reference_accuracy=ref.get("accuracy"), reference_macro_f1=ref.get("macro_f1"))


def _draw(rng: np.random.Generator, d: int, a: np.ndarray, b: np.ndarray, err: np.ndarray, off: np.ndarray,
          cells: np.ndarray, prior_counts: np.ndarray | None, n: float) -> tuple[np.ndarray, np.ndarray]:
    """Return ``d`` bootstrap draws of (accuracy, macro-F1).

    Each draw takes the calibration from its posterior (Beta per cell, Dirichlet for where errors go), lets the
    window's predictions be right by chance (binomial per cell) and, with a prior, lets the window's classes occur
    by chance (multinomial on a Dirichlet draw of the training mix) before raking.
    """
    p = rng.beta(np.broadcast_to(a, (d, *a.shape)), np.broadcast_to(b, (d, *b.shape)))
    q = np.where(off, rng.gamma(np.broadcast_to(np.where(off, err, 1.0), (d, *err.shape))), 0.0)
    q /= np.maximum(q.sum(axis=2, keepdims=True), 1e-12)
    right = rng.binomial(np.broadcast_to(cells, p.shape), p) / np.maximum(cells, 1)  # realised share per cell
    cms = _expected_confusion(np.broadcast_to(cells, p.shape).astype(np.float64), right, q)
    if prior_counts is not None:
        realised = rng.multinomial(int(round(n)), rng.dirichlet(prior_counts, size=d)) + 1e-9
        cms = rake(cms, prior_target(cms, realised / realised.sum(axis=1, keepdims=True), n, noise=2.0))
    return _batch_metrics(cms)


def _expected_confusion(nj: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Return expected [pred, true] confusion matrices (D, C, C) of class x bin histograms (D, C, B).

    ``p`` (D, C, B): probability a prediction in a cell is right; ``q`` (D, C, C): where a predicted class's
    errors go (zero diagonal, rows summing to one).
    """
    right = (nj * p).sum(axis=2)
    cm = (nj.sum(axis=2) - right)[:, :, None] * q
    idx = np.arange(right.shape[1])
    cm[:, idx, idx] = right
    return cm


def prior_target(cm: np.ndarray, prior: np.ndarray, n: float, noise: float = 1.0) -> np.ndarray:
    """Return the true-class mix to rake to: the prior plus the calibrated expectation's deviation, shrunk.

    A window's true classes scatter around the prior by sampling noise (variance ``p (1 - p) / n`` per class,
    times ``noise``); the deviation of the calibrated expectation from the prior is shrunk towards zero by
    positive-part James-Stein over the classes, so noise-sized deviations are mostly kept (the calibration is
    trusted) and large ones are taken as the calibration failing (the classes are raked back to the prior).
    """
    implied = cm.sum(axis=1) / np.maximum(cm.sum(axis=(1, 2))[:, None], 1e-12)
    dev = implied - prior
    z2 = (dev**2 / np.maximum(noise * prior * (1 - prior) / max(n, 1.0), 1e-12)).sum(axis=1, keepdims=True)
    keep = np.clip((prior.shape[1] - 1) / np.maximum(z2, 1e-12), 0.0, 1.0)  # share of the deviation kept
    target = np.clip(prior + keep * dev, 1e-9, None)
    return target / target.sum(axis=1, keepdims=True)


def rake(cm: np.ndarray, true_share: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Rake [pred, true] confusion matrices (D, C, C) to the observed predicted counts and a true-class mix (D, C).

    Iterative proportional fitting: alternately scale the columns to the true-class mix and the rows back to the
    predicted counts the window observed; the result is the matrix closest (in KL) to the calibrated expectation
    with both margins right. Errors the calibration already expected keep their direction.
    """
    rows = cm.sum(axis=2, keepdims=True)
    target = true_share[:, None, :] * rows.sum(axis=(1, 2), keepdims=True)
    out = cm + 1e-9
    for _ in range(iterations):
        out = out * (target / np.maximum(out.sum(axis=1, keepdims=True), 1e-12))
        out = out * (rows / np.maximum(out.sum(axis=2, keepdims=True), 1e-12))
    return out
