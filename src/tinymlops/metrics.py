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
