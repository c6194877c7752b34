"""The drift verdict: a pure function from measured figures and thresholds to ``ok`` / ``warn`` / ``retrain``.

Per feature and overall, with the reasons and figures behind every level. Windows that cannot be judged say so
(``insufficient data``, ``incompatible sketch``) instead of guessing; NaN/inf values are counted and reported.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tinymlops.monitor.cbpe import PerformanceEstimate
from tinymlops.monitor.config import Thresholds
from tinymlops.monitor.drift import DeviceFigures, DistributionFigures, DriftFigures, FeatureFigures

Level = Literal["ok", "warn", "retrain", "insufficient data", "incompatible sketch", "suspected-extraction"]
_RANK = {"ok": 0, "insufficient data": 0, "incompatible sketch": 0, "warn": 1, "retrain": 2,
         "suspected-extraction": 3}


class Check(BaseModel):
    """One judged quantity: its level, why, and the figures used."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["feature", "predictions", "confidence", "performance", "device", "sketch", "window", "extraction"]
    name: str
    level: Level
    reasons: list[str] = []
    figures: dict[str, float | int | None] = {}


class Verdict(BaseModel):
    """The decision for one model version x target x cohort x window."""

    model_config = ConfigDict(extra="forbid")

    level: Level
    reasons: list[str]
    model: str
    version: str
    target: str | None = None
    cohort: str | None = None
    n_inferences: int
    n_devices: int
    features: list[Check]
    checks: list[Check]
    summary: dict[str, float | int | None]

    @property
    def drifted_features(self) -> list[str]:
        return [c.name for c in self.features if c.level in ("warn", "retrain")]


def _worst(levels: list[Level]) -> Level:
    judged = [lv for lv in levels if lv in ("ok", "warn", "retrain")]
    return max(judged, key=_RANK.__getitem__) if judged else "ok"


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _shift_level(psi: float, wasserstein: float | None, p_value: float, alpha: float, th_psi: tuple[float, float],
                 th_w: tuple[float, float]) -> tuple[Level, str | None]:
    """Level of a binned shift: significant at ``alpha`` and large (PSI or Wasserstein) enough."""
    w = wasserstein if wasserstein is not None else 0.0
    effect = f"PSI {psi:.3f}" + (f", Wasserstein {w:.3f} std" if wasserstein is not None else "")
    if p_value >= alpha:
        return "ok", None
    if psi >= th_psi[1] or w >= th_w[1]:
        return "retrain", f"{effect} (p={p_value:.1e})"
    if psi >= th_psi[0] or w >= th_w[0]:
        return "warn", f"{effect} (p={p_value:.1e})"
    return "ok", None


def judge_feature(f: FeatureFigures, th: Thresholds, alpha: float) -> Check:
    """Judge one feature's figures (``alpha`` is the per-test significance level after correction)."""
    ft = th.features
    figs: dict[str, float | int | None] = {"n": f.n, "nonfinite": f.nonfinite, "psi": f.psi,
                                            "js_distance": f.js_distance, "wasserstein_norm": f.wasserstein_norm,
                                            "p_value": f.p_value}
    reasons: list[str] = []
    level: Level = "ok"
    total = f.n + f.nonfinite
    if total == 0:
        return Check(kind="feature", name=f.name, level="insufficient data", reasons=["insufficient data: no values"],
                     figures=figs)
    if f.nonfinite > 0:
        share = f.nonfinite / total
        if share >= ft.nonfinite_warn:
            level = "warn"
            reasons.append(f"{f.nonfinite} NaN/inf values ({share:.1%} of {total})")
    if f.n < th.overall.min_inferences:
        reasons.append(f"insufficient data: {f.n} finite values < {th.overall.min_inferences}")
        return Check(kind="feature", name=f.name, level=level if level != "ok" else "insufficient data",
                     reasons=reasons, figures=figs)
    if not _finite(f.psi, f.wasserstein_norm, f.p_value):
        reasons.append("figures are not finite")
        return Check(kind="feature", name=f.name, level="insufficient data", reasons=reasons, figures=figs)
    shift, why = _shift_level(f.psi, f.wasserstein_norm, f.p_value, alpha, (ft.psi_warn, ft.psi_retrain),
                              (ft.wasserstein_warn, ft.wasserstein_retrain))
    if why:
        reasons.append(why)
    return Check(kind="feature", name=f.name, level=_worst([level, shift]), reasons=reasons, figures=figs)


def _judge_distribution(kind: Literal["predictions", "confidence"], d: DistributionFigures, th: Thresholds,
                        alpha: float, max_level: Level) -> Check:
    ft = th.features
    figs: dict[str, float | int | None] = {"n": d.n, "psi": d.psi, "js_distance": d.js_distance,
                                            "p_value": d.p_value}
    if d.n < th.overall.min_inferences or not _finite(d.psi, d.p_value):
        return Check(kind=kind, name=kind, level="insufficient data",
                     reasons=[f"insufficient data: {d.n} inferences"], figures=figs)
    level, why = _shift_level(d.psi, None, d.p_value, alpha, (ft.psi_warn, ft.psi_retrain), (math.inf, math.inf))
    if _RANK[level] > _RANK[max_level]:
        level = max_level
    return Check(kind=kind, name=kind, level=level, reasons=[f"{kind} shifted: {why}"] if why else [], figures=figs)


def judge_performance(perf_n: int, accuracy: float, macro_f1: float, ref_accuracy: float | None,
                      ref_macro_f1: float | None, th: Thresholds) -> Check:
    """Judge labelled feedback against the reference accuracy and macro-F1."""
    pt = th.performance
    figs: dict[str, float | int | None] = {"n": perf_n, "accuracy": accuracy, "macro_f1": macro_f1,
                                            "reference_accuracy": ref_accuracy, "reference_macro_f1": ref_macro_f1}
    if perf_n < pt.min_feedback:
        return Check(kind="performance", name="performance", level="insufficient data",
                     reasons=[f"insufficient data: {perf_n} labelled samples < {pt.min_feedback}"], figures=figs)
    levels: list[Level] = []
    reasons = []
    for name, value, ref, warn, retrain in (("accuracy", accuracy, ref_accuracy, pt.accuracy_drop_warn,
                                             pt.accuracy_drop_retrain),
                                            ("macro-F1", macro_f1, ref_macro_f1, pt.macro_f1_drop_warn,
                                             pt.macro_f1_drop_retrain)):
        if not _finite(ref, value):
            continue
        assert ref is not None
        drop = ref - value + 1e-9  # 0.98 - 0.93 must count as a drop of 0.05
        if drop >= retrain:
            levels.append("retrain")
        elif drop >= warn:
            levels.append("warn")
        else:
            continue
        reasons.append(f"{name} {value:.3f} vs reference {ref:.3f} (drop {ref - value:.3f})")
    if not _finite(ref_accuracy) and not _finite(ref_macro_f1):
        return Check(kind="performance", name="performance", level="insufficient data",
                     reasons=["no reference accuracy to compare with"], figures=figs)
    return Check(kind="performance", name="performance", level=_worst(levels), reasons=reasons, figures=figs)


def judge_device(d: DeviceFigures, th: Thresholds) -> Check:
    """Flag device metrics that exceed the profiled expectation of the target."""
    dt = th.device
    e = d.expected
    figs: dict[str, float | int | None] = {
        "n": d.n, "latency_p95_ms": d.latency_p95_ms, "latency_max_ms": d.latency_max_ms,
        "peak_memory_bytes": d.peak_memory_bytes, "energy_uj_per_inference": d.energy_uj_per_inference,
        "error_rate": d.error_rate, "expected_latency_ms": e.latency_ms, "expected_peak_ram_bytes": e.peak_ram_bytes,
        "expected_energy_uj": e.energy_uj}
    reasons = []
    for name, observed, expected, ratio, unit in (
            ("p95 latency", d.latency_p95_ms, e.latency_ms, dt.latency_p95_ratio_warn, "ms"),
            ("peak memory", float(d.peak_memory_bytes) if d.peak_memory_bytes else None,
             float(e.peak_ram_bytes) if e.peak_ram_bytes else None, dt.peak_memory_ratio_warn, "bytes"),
            ("energy per inference", d.energy_uj_per_inference, e.energy_uj, dt.energy_ratio_warn, "uJ")):
        if observed is None or expected is None:
            continue
        if not _finite(observed):
            reasons.append(f"{name} reported as {observed}")
        elif expected > 0 and observed / expected >= ratio:
            reasons.append(f"{name} {observed:.4g} {unit} is {observed / expected:.2f}x the profiled "
                           f"{expected:.4g} {unit} on {e.target or 'this target'}")
    if not _finite(d.latency_max_ms):
        reasons.append(f"latency reported as {d.latency_max_ms}")
    if d.error_rate >= dt.error_rate_warn and d.error_rate > 0:
        reasons.append(f"error/rejection rate {d.error_rate:.1%}")
    return Check(kind="device", name=d.device, level="warn" if reasons else "ok", reasons=reasons, figures=figs)


def decide(figures: DriftFigures, thresholds: Thresholds) -> Verdict:
    """Turn one window's figures into per-feature and overall verdicts with reasons."""
    th = thresholds
    checks = [Check(kind="sketch", name=r.device, level="warn", reasons=[r.reason]) for r in figures.rejected]
    base: dict[str, Any] = {"model": figures.model, "version": figures.version, "target": figures.target,
                            "cohort": figures.cohort, "n_inferences": figures.n_inferences,
                            "n_devices": figures.n_devices}
    summary: dict[str, float | int | None] = {"n_inferences": figures.n_inferences, "n_devices": figures.n_devices,
                                               "rejected_sketches": len(figures.rejected)}
    early = _without_enough_data(figures, th)
    if early is not None:
        return Verdict(level=early[0], reasons=early[1], features=[], checks=checks, summary=summary, **base)

    # one family of tests per window: every feature plus the prediction and confidence histograms
    alpha = th.features.alpha / max(len(figures.features) + 2, 1)
    levels: list[Level] = [c.level for c in checks]
    reasons: list[str] = []
    feats = _judge_features(figures, th, alpha, levels, reasons, summary)
    for c in _judge_outputs(figures, th, alpha, summary):
        checks.append(c)
        levels.append(c.level)
        reasons += c.reasons
    _judge_devices(figures, th, checks, levels, reasons, summary)
    if figures.rejected:
        reasons.append(f"{len(figures.rejected)} report(s) rejected as incompatible sketch (not merged)")
    level = _worst(levels)
    if level == "ok":
        reasons.insert(0, f"no drift: {figures.n_inferences} inferences from {figures.n_devices} device(s)")
    return Verdict(level=level, reasons=reasons, features=feats, checks=checks, summary=summary, **base)


def _without_enough_data(figures: DriftFigures, th: Thresholds) -> tuple[Level, list[str]] | None:
    """Return (level, reasons) when the window cannot be judged: every sketch rejected, or too few inferences."""
    rejected = [f"{r.device}: {r.reason}" for r in figures.rejected[:5]]
    if figures.n_inferences == 0 and figures.rejected and figures.n_devices == 0:
        return "incompatible sketch", [f"incompatible sketch: all {len(figures.rejected)} reports rejected",
                                       *rejected]
    if figures.n_inferences < th.overall.min_inferences:
        return "insufficient data", [f"insufficient data: {figures.n_inferences} inferences in the window "
                                     f"< {th.overall.min_inferences}", *rejected]
    return None


def _judge_features(figures: DriftFigures, th: Thresholds, alpha: float, levels: list[Level], reasons: list[str],
                    summary: dict[str, float | int | None]) -> list[Check]:
    """Judge every feature; add the overall feature-drift level and reasons; return the per-feature checks."""
    feats = [judge_feature(f, th, alpha) for f in figures.features]
    judged = [c for c in feats if c.level in ("ok", "warn", "retrain")]
    n_warn = sum(c.level in ("warn", "retrain") for c in feats)
    n_retrain = sum(c.level == "retrain" for c in feats)
    retrain_share = n_retrain / max(len(judged), 1)
    summary.update({"features_judged": len(judged), "features_warn_or_worse": n_warn,
                    "features_retrain": n_retrain, "features_retrain_share": round(retrain_share, 4),
                    "max_psi": max((f.psi for f in figures.features), default=None),
                    "max_js_distance": max((f.js_distance for f in figures.features), default=None),
                    "max_wasserstein_norm": max((f.wasserstein_norm for f in figures.features), default=None),
                    "nonfinite_values": sum(f.nonfinite for f in figures.features)})
    if n_retrain and retrain_share >= th.overall.retrain_feature_share:
        levels.append("retrain")
        reasons.append(f"{n_retrain}/{len(judged)} features drifted at retrain level "
                       f"(>= {th.overall.retrain_feature_share:.0%})")
    elif n_warn >= th.overall.warn_features:
        levels.append("warn")
        reasons.append(f"{n_warn}/{len(judged)} features drifted: "
                       + ", ".join(c.name for c in feats if c.level in ("warn", "retrain"))[:400])
    nonfinite = [c for c in feats if any("NaN/inf" in r for r in c.reasons)]
    if nonfinite:
        levels.append("warn")
        reasons.append(f"NaN/inf inputs on {len(nonfinite)} features")
    return feats


def _judge_outputs(figures: DriftFigures, th: Thresholds, alpha: float,
                   summary: dict[str, float | int | None]) -> list[Check]:
    """Return the checks of the model's outputs: prediction and confidence histograms, labelled feedback."""
    out = []
    if figures.predictions is not None:
        max_pred: Level = "retrain" if th.overall.prediction_drift_retrain else "warn"
        out.append(_judge_distribution("predictions", figures.predictions, th, alpha, max_pred))
        summary["prediction_psi"] = figures.predictions.psi
    if figures.confidence is not None:
        out.append(_judge_distribution("confidence", figures.confidence, th, alpha, "warn"))
        summary["confidence_psi"] = figures.confidence.psi
    if figures.performance is not None:
        p = figures.performance
        out.append(judge_performance(p.n, p.accuracy, p.macro_f1, p.reference_accuracy, p.reference_macro_f1, th))
        summary.update({"feedback_n": p.n, "feedback_accuracy": p.accuracy, "feedback_macro_f1": p.macro_f1})
    e = figures.estimated
    if e is not None:
        summary.update({"estimated_accuracy": e.accuracy, "estimated_accuracy_low": e.accuracy_low,
                        "estimated_accuracy_high": e.accuracy_high, "estimated_macro_f1": e.macro_f1,
                        "estimated_macro_f1_low": e.macro_f1_low, "estimated_macro_f1_high": e.macro_f1_high,
                        "estimated_accuracy_calibration_only": e.accuracy_calibration_only})
        labelled = figures.performance.n if figures.performance is not None else 0
        if labelled < th.performance.min_feedback:
            out.append(judge_estimate(e, labelled, th))
    return out


def judge_estimate(e: PerformanceEstimate, labelled: int, th: Thresholds) -> Check:
    """Judge the label-free (CBPE) estimate like feedback; a drop counts only when the interval excludes no drop.

    Used when there is too little labelled feedback; the check's reasons say that the figures are estimates.
    """
    pt = th.performance
    figs: dict[str, float | int | None] = {
        "n": e.n, "labelled": labelled, "accuracy": e.accuracy, "accuracy_low": e.accuracy_low,
        "accuracy_high": e.accuracy_high, "macro_f1": e.macro_f1, "macro_f1_low": e.macro_f1_low,
        "macro_f1_high": e.macro_f1_high, "reference_accuracy": e.reference_accuracy,
        "reference_macro_f1": e.reference_macro_f1, "accuracy_calibration_only": e.accuracy_calibration_only}
    why = f"estimated without labels (CBPE; {labelled} labelled < {pt.min_feedback})"
    plain = e.accuracy_calibration_only
    if e.class_prior and plain is not None and e.reference_accuracy is not None and (
            e.reference_accuracy - plain < pt.accuracy_drop_warn <= e.reference_accuracy - e.accuracy):
        # the drop rests on the class-prior assumption: say what a changed class mix would mean instead
        why += (f"; assumes the training class mix: if the class mix itself changed (label shift), calibration "
                f"alone estimates {plain:.3f} (set estimate.class_prior: false)")
    levels: list[Level] = []
    reasons = []
    for name, value, low, high, ref, warn, retrain in (
            ("accuracy", e.accuracy, e.accuracy_low, e.accuracy_high, e.reference_accuracy, pt.accuracy_drop_warn,
             pt.accuracy_drop_retrain),
            ("macro-F1", e.macro_f1, e.macro_f1_low, e.macro_f1_high, e.reference_macro_f1, pt.macro_f1_drop_warn,
             pt.macro_f1_drop_retrain)):
        if not _finite(ref, value, high):
            continue
        assert ref is not None
        drop = ref - value + 1e-9
        if high >= ref or drop < warn:  # within noise of the reference, or too small to matter
            continue
        levels.append("retrain" if drop >= retrain else "warn")
        reasons.append(f"{name} {value:.3f} [{low:.3f}, {high:.3f}] vs reference {ref:.3f} "
                       f"(drop {ref - value:.3f}), {why}")
    if not _finite(e.reference_accuracy) and not _finite(e.reference_macro_f1):
        return Check(kind="performance", name="estimated", level="insufficient data",
                     reasons=[f"no reference accuracy to compare the estimate with ({why})"], figures=figs)
    return Check(kind="performance", name="estimated", level=_worst(levels), reasons=reasons, figures=figs)


def _judge_devices(figures: DriftFigures, th: Thresholds, checks: list[Check], levels: list[Level],
                   reasons: list[str], summary: dict[str, float | int | None]) -> None:
    """Check every device (and the fleet) against the target's profile; a warn names the first few anomalies."""
    anomalous = []
    for d in figures.devices + ([figures.fleet_device] if figures.fleet_device else []):
        c = judge_device(d, th)
        checks.append(c)
        if c.level == "warn":
            anomalous.append(c)
    if anomalous:
        levels.append("warn")
        reasons.append(f"device metrics off profile on {len(anomalous)} device(s): "
                       + "; ".join(f"{c.name}: {c.reasons[0]}" for c in anomalous[:3]))
    summary["device_anomalies"] = len(anomalous)
    if figures.fleet_device is not None:
        fd = figures.fleet_device
        summary.update({"latency_p50_ms": fd.latency_p50_ms, "latency_p95_ms": fd.latency_p95_ms,
                        "latency_max_ms": fd.latency_max_ms, "peak_memory_bytes": fd.peak_memory_bytes,
                        "energy_uj_per_inference": fd.energy_uj_per_inference, "error_rate": fd.error_rate})


def accuracy_line(summary: dict[str, Any], short: bool = False) -> str:
    """Return "accuracy: estimated x [lo, hi] without labels, feedback y on n labelled" ("" when neither).

    ``short``: the table-cell form "est x [lo, hi] / feedback y (n)".
    """
    parts = []
    est, lo, hi = (summary.get(k) for k in ("estimated_accuracy", "estimated_accuracy_low",
                                            "estimated_accuracy_high"))
    if est is not None and lo is not None and hi is not None:
        parts.append(f"est {est:.3f} [{lo:.3f}, {hi:.3f}]" if short
                     else f"estimated {est:.3f} [{lo:.3f}, {hi:.3f}] without labels")
    fb, n = summary.get("feedback_accuracy"), summary.get("feedback_n")
    if fb is not None:
        parts.append(f"feedback {fb:.3f} ({n})" if short else f"feedback {fb:.3f} on {n} labelled")
    if short:
        return " / ".join(parts)
    return ("accuracy: " + ", ".join(parts)) if parts else ""


def render_markdown(verdict: Verdict, max_features: int = 50) -> str:
    """Render a verdict as markdown (Prefect artifact, MLflow text, CLI)."""
    v = verdict
    scope = " / ".join(x for x in (f"{v.model} v{v.version}", v.target, v.cohort) if x)
    lines = [f"# Drift verdict: **{v.level}**", "", f"{scope}: {v.n_inferences} inferences, {v.n_devices} device(s)",
             ""]
    lines += [f"- {r}" for r in v.reasons]
    acc_line = accuracy_line(v.summary)
    if acc_line:
        lines += ["", acc_line]
    if v.features:
        lines += ["", "| feature | level | PSI | JS | Wasserstein/std | p | NaN/inf |", "|---|---|---|---|---|---|---|"]
        order = sorted(v.features, key=lambda c: (-_RANK[c.level], -(c.figures.get("psi") or 0)))
        for c in order[:max_features]:
            f = c.figures
            lines.append(f"| {c.name} | {c.level} | {f.get('psi', 0):.3f} | {f.get('js_distance', 0):.3f} | "
                         f"{f.get('wasserstein_norm', 0):.3f} | {f.get('p_value', 1):.1e} | {f.get('nonfinite', 0)} |")
    other = [c for c in v.checks if c.level != "ok"]
    if other:
        lines += ["", "| check | name | level | reasons |", "|---|---|---|---|"]
        lines += [f"| {c.kind} | {c.name} | {c.level} | {'; '.join(c.reasons)} |" for c in other]
    return "\n".join(lines) + "\n"
