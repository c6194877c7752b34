"""Evidently reports on what devices opted in to share: raw-sample data drift and labelled-feedback quality.

Evidently (0.7) costs seconds to import, so it is imported inside the functions only. The data-drift report
runs ``DataDriftPreset`` on current vs reference model-input samples; each column's verdict is Evidently's own
test outcome (``Value Drift for column ...``). The default per-column test is Kolmogorov-Smirnov at the
Bonferroni-corrected level the sketch verdict uses (``alpha / (features + 2)``): both sides then answer the same
question ("is this shift significant for the whole window?") and agree on >= 95 % of (feature, window) pairs in
``benchmarks/drift.py``; Evidently's default (normed Wasserstein >= 0.1) is an effect size without a noise
allowance and flags ~12 % of features in windows of 500 inferences that have no drift at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class DataDriftResult:
    """Evidently's per-column drift verdicts and scores, plus the HTML report."""

    method: str
    threshold: float | None
    columns: dict[str, dict[str, float | bool]]
    drifted_share: float
    n_reference: int
    n_current: int
    html: str = field(repr=False, default="")

    @property
    def drifted(self) -> list[str]:
        return [c for c, v in self.columns.items() if v["drifted"]]


@dataclass
class ClassificationResult:
    """Evidently's classification quality on labelled feedback, plus the HTML report."""

    n: int
    accuracy: float
    macro_f1: float
    html: str = field(repr=False, default="")


def _frame(values: np.ndarray, columns: Sequence[str]):  # -> pandas.DataFrame
    import pandas as pd

    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(columns):
        raise ValueError(f"samples have shape {arr.shape}, expected (n, {len(columns)})")
    arr = arr[np.isfinite(arr).all(axis=1)]  # Evidently cannot test NaN/inf; the sketches count them
    return pd.DataFrame(arr, columns=list(columns))


def _packed(snap: Any) -> str:
    """Return the snapshot's standalone HTML, packed: one offline file, ~4x smaller (see tinymlops.htmlpack)."""
    from tinymlops.htmlpack import pack

    return pack(snap.get_html_str(as_iframe=False))


def data_drift(reference: np.ndarray, current: np.ndarray, feature_names: Sequence[str], method: str = "ks",
               threshold: float | None = None, html: bool = True) -> DataDriftResult:
    """Run Evidently's DataDriftPreset on current vs reference samples of the model-input features."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    ref, cur = _frame(reference, feature_names), _frame(current, feature_names)
    definition = DataDefinition(numerical_columns=list(feature_names))
    ref_ds = Dataset.from_pandas(ref, data_definition=definition)
    cur_ds = Dataset.from_pandas(cur, data_definition=definition)
    report = Report([DataDriftPreset(method=method, threshold=threshold)], include_tests=True)
    snap = report.run(cur_ds, ref_ds)
    out = snap.dict()
    scores: dict[str, float] = {}
    for m in out["metrics"]:
        cfg = m.get("config", {})
        if cfg.get("type", "").endswith("ValueDrift"):
            scores[cfg["column"]] = float(m["value"])
    verdicts: dict[str, bool] = {}
    prefix = "Value Drift for column "
    for t in out.get("tests", []):
        name = str(t.get("name", ""))
        if name.startswith(prefix):
            verdicts[name[len(prefix):]] = str(t.get("status", "")).upper().endswith("FAIL")
    columns = {c: {"score": scores.get(c, float("nan")), "drifted": verdicts.get(c, False)} for c in feature_names}
    drifted = sum(bool(v["drifted"]) for v in columns.values())
    return DataDriftResult(method=method, threshold=threshold, columns=columns,
                           drifted_share=drifted / max(len(columns), 1), n_reference=len(ref), n_current=len(cur),
                           html=_packed(snap) if html else "")


def classification(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str],
                   html: bool = True) -> ClassificationResult:
    """Run Evidently's ClassificationPreset on labelled feedback (true vs predicted class indices)."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.presets import ClassificationPreset

    labels = dict(enumerate(class_names))
    df = pd.DataFrame({"target": np.asarray(y_true, dtype=np.int64), "prediction": np.asarray(y_pred, np.int64)})
    definition = DataDefinition(
        classification=[MulticlassClassification(target="target", prediction_labels="prediction", labels=labels)],
        categorical_columns=["target", "prediction"])
    snap = Report([ClassificationPreset()]).run(Dataset.from_pandas(df, data_definition=definition), None)
    values = {m["metric_name"].split("(")[0]: m["value"] for m in snap.dict()["metrics"]}
    return ClassificationResult(n=len(df), accuracy=float(values["Accuracy"]), macro_f1=float(values["F1Score"]),
                                html=_packed(snap) if html else "")
