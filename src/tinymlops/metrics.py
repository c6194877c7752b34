"""Classification figures shared by training, compression and monitoring (NumPy only)."""

from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Return the confusion matrix (rows: true class, columns: predicted class)."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def classification_metrics(y_true: np.ndarray, probs_or_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Return accuracy and macro-F1 (in [0, 1]) from labels and probabilities or predicted classes."""
    pred = probs_or_pred.argmax(axis=1) if probs_or_pred.ndim == 2 else probs_or_pred
    cm = confusion(y_true, pred, n_classes)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(axis=0), out=np.zeros_like(tp), where=cm.sum(axis=0) > 0)
    recall = np.divide(tp, cm.sum(axis=1), out=np.zeros_like(tp), where=cm.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    present = cm.sum(axis=1) > 0
    return {"accuracy": float(tp.sum() / max(cm.sum(), 1)), "macro_f1": float(f1[present].mean() if present.any() else 0.0)}


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Return the fraction of samples on which two prediction arrays (classes or probabilities) agree."""
    a = pred_a.argmax(axis=1) if pred_a.ndim == 2 else pred_a
    b = pred_b.argmax(axis=1) if pred_b.ndim == 2 else pred_b
    return float((a == b).mean()) if len(a) else 1.0


# --------------------------------------------------------------------------------------------------------------
# per-target profile figures: the one place their MLflow keys are built and parsed
# --------------------------------------------------------------------------------------------------------------

#: figures the profile stage logs per target on a version's run, as metrics ``<target>.<figure>``
PROFILE_FIGURES = ("latency_ms", "energy_uj", "peak_ram_bytes", "flash_bytes")


def target_metric(target: str, figure: str) -> str:
    """Return the metric key of a profiled figure on a target: ``<target>.<figure>`` (e.g. ``host.latency_ms``)."""
    return f"{target}.{figure}"


def fits_key(target: str) -> str:
    """Return the run/version tag saying whether a version fits a target: ``fits.<target>``."""
    return f"fits.{target}"


def profile_metrics(target: str, figures: dict[str, float], fits: bool) -> dict[str, float]:
    """Return the metrics the profile stage logs for one version on one target (NaN figures left out)."""
    out = {target_metric(target, k): float(figures[k]) for k in PROFILE_FIGURES
           if k in figures and figures[k] == figures[k]}
    out[target_metric(target, "fits")] = 1.0 if fits else 0.0
    return out


def target_figures(metrics: dict[str, float], target: str, figures: tuple[str, ...] = PROFILE_FIGURES
                   ) -> dict[str, float]:
    """Return ``{figure: value}`` of one target read back from a run's metrics (missing and NaN ones left out)."""
    out = {}
    for k in figures:
        v = metrics.get(target_metric(target, k))
        if v is not None and v == v:
            out[k] = float(v)
    return out
