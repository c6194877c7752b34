"""Stage gates: pure functions from measured figures and thresholds to ``pass`` / ``fail`` / ``inconclusive``.

A stage fails as soon as any check has evidence of harm (install rejections, silent devices running the
candidate, error rate, latency p95 against the profiled expectation and the SLO, prediction-distribution shift or
confidence drop against a control group still on the old version, accuracy on labelled feedback). It passes only
when every check has enough evidence and nothing failed; otherwise it is inconclusive and the controller holds.
Missing evidence never counts as a pass: offline devices and thin samples make a gate inconclusive.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tinymlops.monitor.drift import psi
from tinymlops.rollout.config import GateThresholds, StageConfig

Outcome = Literal["pass", "fail", "inconclusive"]
CheckOutcome = Literal["pass", "fail", "inconclusive", "skipped"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArmFigures(_Model):
    """Telemetry of one arm (candidate or control) of a stage window, merged over its devices."""

    devices: int = 0
    inferences: int = 0
    errors: int = 0
    rejections: int = 0
    latency_p95_ms: float | None = None
    prediction_counts: list[int] = Field(default_factory=list)
    confidence_mean: float | None = None
    feedback_n: int = 0
    feedback_correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback_n if self.feedback_n else None


class StageFigures(_Model):
    """Everything the gate of one stage of one target's rollout looks at."""

    target: str
    version: str
    stage_index: int
    assigned_devices: int = Field(description="devices told to run the candidate so far (cumulative)")
    stage_devices: int = Field(description="devices this stage should reach")
    installed_devices: int = 0
    rejected_devices: int = 0
    reporting_devices: int = 0
    silent_devices: int = Field(0, description="run the candidate, call in, send no telemetry past the grace time")
    offline_devices: int = 0
    baked_s: float = Field(0.0, description="time since the last device of the stage was assigned")
    candidate: ArmFigures = Field(default_factory=ArmFigures)
    control: ArmFigures | None = Field(None, description="devices of the target still on the old version")
    reference_prediction_counts: list[int] | None = None
    reference_confidence_mean: float | None = None
    reference_accuracy: float | None = None
    expected_latency_ms: float | None = Field(None, description="profiled latency of the candidate on the target")
    latency_slo_ms: float | None = None


class Check(_Model):
    """One judged quantity with its outcome and reason."""

    name: str
    outcome: CheckOutcome
    reason: str


class GateDecision(_Model):
    """Outcome of a stage gate with the reasons and figures behind it."""

    outcome: Outcome
    reasons: list[str]
    checks: list[Check]
    figures: dict[str, float]


# --------------------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------------------


def check_installs(f: StageFigures, th: GateThresholds) -> Check:
    """Fail when more devices refuse the package than allowed; wait while none has installed or refused."""
    tried = f.installed_devices + f.rejected_devices
    if f.rejected_devices and f.rejected_devices / max(f.assigned_devices, 1) > th.max_rejection_rate:
        return Check(name="installs", outcome="fail",
                     reason=f"{f.rejected_devices} of {f.assigned_devices} devices rejected the package "
                            f"(allowed share {th.max_rejection_rate:.0%})")
    if tried == 0:
        return Check(name="installs", outcome="inconclusive", reason="no device has installed the candidate yet")
    return Check(name="installs", outcome="pass",
                 reason=f"{f.installed_devices} installed, {f.rejected_devices} rejected")


def check_silent(f: StageFigures, th: GateThresholds) -> Check:
    """Fail when devices running the candidate keep calling in but send no telemetry (crash loop or hang)."""
    if f.installed_devices == 0:
        return Check(name="silent", outcome="inconclusive", reason="no device runs the candidate yet")
    share = f.silent_devices / f.installed_devices
    if f.silent_devices and share > th.max_silent_rate:
        return Check(name="silent", outcome="fail",
                     reason=f"{f.silent_devices} of {f.installed_devices} devices running the candidate are online "
                            f"but send no telemetry (crash loop?; allowed share {th.max_silent_rate:.0%})")
    return Check(name="silent", outcome="pass", reason=f"{f.silent_devices} silent devices")


def check_coverage(f: StageFigures, stage: StageConfig, th: GateThresholds) -> Check:
    """Wait until the stage is fully assigned, enough devices report, and enough inferences arrived."""
    if f.assigned_devices < f.stage_devices:
        return Check(name="coverage", outcome="inconclusive",
                     reason=f"{f.assigned_devices} of {f.stage_devices} stage devices assigned so far (rate limit)")
    need = max(stage.min_devices, math.ceil(th.min_reporting_share * f.stage_devices))
    if f.reporting_devices < need:
        return Check(name="coverage", outcome="inconclusive",
                     reason=f"{f.reporting_devices} devices reported on the candidate, need {need} "
                            f"({f.offline_devices} offline)")
    if f.candidate.inferences < stage.min_inferences:
        return Check(name="coverage", outcome="inconclusive",
                     reason=f"{f.candidate.inferences} candidate inferences, need {stage.min_inferences}")
    return Check(name="coverage", outcome="pass",
                 reason=f"{f.reporting_devices} devices, {f.candidate.inferences} inferences")


def check_bake(f: StageFigures, stage: StageConfig) -> Check:
    """Wait until every stage device has run the candidate for the bake time."""
    if f.baked_s < stage.bake_s:
        return Check(name="bake", outcome="inconclusive", reason=f"baking: {f.baked_s:.0f} of {stage.bake_s:.0f} s")
    return Check(name="bake", outcome="pass", reason=f"baked {f.baked_s:.0f} s")


def check_errors(f: StageFigures, th: GateThresholds) -> Check:
    """Fail on an error rate above the threshold once enough inferences were attempted."""
    c = f.candidate
    total = c.inferences + c.errors
    rate = c.errors / total if total else 0.0
    if total < th.min_error_samples:
        # overwhelming evidence needs no minimum: errors alone above the sample minimum already fail
        if c.errors >= th.min_error_samples:
            return Check(name="errors", outcome="fail", reason=f"{c.errors} inference errors")
        return Check(name="errors", outcome="inconclusive",
                     reason=f"{total} attempted inferences, need {th.min_error_samples}")
    if rate > th.max_error_rate:
        return Check(name="errors", outcome="fail",
                     reason=f"error rate {rate:.1%} > {th.max_error_rate:.1%} ({c.errors} of {total})")
    return Check(name="errors", outcome="pass", reason=f"error rate {rate:.1%}")


def latency_limit_ms(expected_ms: float, th: GateThresholds) -> float:
    """Return the highest acceptable p95 given an expectation: factor or absolute tolerance, whichever is larger."""
    return max(expected_ms * th.latency_factor, expected_ms + th.latency_tolerance_ms)


def check_latency(f: StageFigures, th: GateThresholds) -> Check:
    """Fail when p95 exceeds the SLO, the profiled expectation (with slack) or the control group (with slack)."""
    c = f.candidate
    if c.latency_p95_ms is None or c.inferences < th.min_latency_samples:
        return Check(name="latency", outcome="inconclusive",
                     reason=f"{c.inferences} latency samples, need {th.min_latency_samples}")
    p95 = c.latency_p95_ms
    if f.latency_slo_ms is not None and p95 > f.latency_slo_ms:
        return Check(name="latency", outcome="fail", reason=f"p95 {p95:.3g} ms > SLO {f.latency_slo_ms:.3g} ms")
    if f.expected_latency_ms is not None and p95 > latency_limit_ms(f.expected_latency_ms, th):
        return Check(name="latency", outcome="fail",
                     reason=f"p95 {p95:.3g} ms > limit {latency_limit_ms(f.expected_latency_ms, th):.3g} ms "
                            f"(profiled {f.expected_latency_ms:.3g} ms)")
    ctl = f.control
    if (ctl is not None and ctl.latency_p95_ms is not None and ctl.inferences >= th.min_latency_samples
            and p95 > latency_limit_ms(ctl.latency_p95_ms, th)):
        return Check(name="latency", outcome="fail",
                     reason=f"p95 {p95:.3g} ms > limit {latency_limit_ms(ctl.latency_p95_ms, th):.3g} ms "
                            f"(control p95 {ctl.latency_p95_ms:.3g} ms)")
    return Check(name="latency", outcome="pass", reason=f"p95 {p95:.3g} ms")


def _baseline(f: StageFigures, th: GateThresholds) -> tuple[str, ArmFigures | None]:
    """Pick what the candidate is compared with: the control group if it has enough data, else the reference."""
    if f.control is not None and f.control.inferences >= th.min_control_inferences:
        return "control", f.control
    return "reference", None


def check_prediction_shift(f: StageFigures, th: GateThresholds, stage: StageConfig) -> Check:
    """Fail when the predicted-class distribution moved away from the control group's (or the reference's)."""
    c = f.candidate
    if c.inferences < stage.min_inferences or not c.prediction_counts:
        return Check(name="prediction_shift", outcome="inconclusive",
                     reason=f"{c.inferences} candidate inferences, need {stage.min_inferences}")
    source, ctl = _baseline(f, th)
    base = ctl.prediction_counts if ctl is not None else f.reference_prediction_counts
    if not base or len(base) != len(c.prediction_counts):
        return Check(name="prediction_shift", outcome="inconclusive",
                     reason="no control group or reference with the same classes to compare with")
    value = psi(base, c.prediction_counts)
    if value > th.max_prediction_psi:
        return Check(name="prediction_shift", outcome="fail",
                     reason=f"predicted classes shifted vs {source}: PSI {value:.3f} > {th.max_prediction_psi}")
    return Check(name="prediction_shift", outcome="pass", reason=f"PSI vs {source} {value:.3f}")


def check_confidence(f: StageFigures, th: GateThresholds, stage: StageConfig) -> Check:
    """Fail when mean top-class confidence dropped by more than allowed vs control (or reference)."""
    c = f.candidate
    if c.inferences < stage.min_inferences or c.confidence_mean is None:
        return Check(name="confidence", outcome="inconclusive",
                     reason=f"{c.inferences} candidate inferences, need {stage.min_inferences}")
    source, ctl = _baseline(f, th)
    base = ctl.confidence_mean if ctl is not None else f.reference_confidence_mean
    if base is None:
        return Check(name="confidence", outcome="inconclusive", reason="no control or reference confidence")
    drop = base - c.confidence_mean
    if drop > th.max_confidence_drop:
        return Check(name="confidence", outcome="fail",
                     reason=f"mean confidence {c.confidence_mean:.3f} dropped {drop:.3f} vs {source} "
                            f"({base:.3f}) > {th.max_confidence_drop}")
    return Check(name="confidence", outcome="pass", reason=f"mean confidence {c.confidence_mean:.3f} ({source} "
                                                          f"{base:.3f})")


def check_accuracy(f: StageFigures, th: GateThresholds) -> Check:
    """Fail when accuracy on labelled feedback dropped vs control (or reference); skipped without feedback.

    Once feedback arrives, the gate waits for enough of it: a stage must not pass on the strength of the other
    checks while the one signal that sees wrong answers is still accumulating.
    """
    c = f.candidate
    if c.feedback_n == 0:
        return Check(name="accuracy", outcome="skipped", reason="no labelled feedback from the stage devices")
    if c.feedback_n < th.min_feedback:
        return Check(name="accuracy", outcome="inconclusive",
                     reason=f"{c.feedback_n} labelled feedback, {th.min_feedback} needed to judge accuracy")
    acc = c.feedback_correct / c.feedback_n
    ctl = f.control
    if ctl is not None and ctl.feedback_n >= th.min_feedback:
        source, base = "control", ctl.feedback_correct / ctl.feedback_n
    elif f.reference_accuracy is not None:
        source, base = "reference", f.reference_accuracy
    else:
        return Check(name="accuracy", outcome="skipped", reason=f"accuracy {acc:.1%} with nothing to compare with")
    if base - acc > th.max_accuracy_drop:
        return Check(name="accuracy", outcome="fail",
                     reason=f"accuracy on feedback {acc:.1%} vs {source} {base:.1%}: drop > "
                            f"{th.max_accuracy_drop:.0%} (n={c.feedback_n})")
    return Check(name="accuracy", outcome="pass", reason=f"accuracy {acc:.1%} vs {source} {base:.1%}")


# --------------------------------------------------------------------------------------------------------------
# the decision
# --------------------------------------------------------------------------------------------------------------


def flat_figures(f: StageFigures) -> dict[str, float]:
    """Return the numeric figures of a stage window under flat names (logged as MLflow metrics)."""
    out: dict[str, float] = {
        "stage_index": f.stage_index, "assigned_devices": f.assigned_devices, "stage_devices": f.stage_devices,
        "installed_devices": f.installed_devices, "rejected_devices": f.rejected_devices,
        "reporting_devices": f.reporting_devices, "silent_devices": f.silent_devices,
        "offline_devices": f.offline_devices, "baked_s": round(f.baked_s, 3),
    }
    for arm_name, arm in (("candidate", f.candidate), ("control", f.control)):
        if arm is None:
            continue
        total = arm.inferences + arm.errors
        out[f"{arm_name}.devices"] = arm.devices
        out[f"{arm_name}.inferences"] = arm.inferences
        out[f"{arm_name}.errors"] = arm.errors
        out[f"{arm_name}.error_rate"] = arm.errors / total if total else 0.0
        if arm.latency_p95_ms is not None:
            out[f"{arm_name}.latency_p95_ms"] = arm.latency_p95_ms
        if arm.confidence_mean is not None:
            out[f"{arm_name}.confidence_mean"] = arm.confidence_mean
        if arm.accuracy is not None:
            out[f"{arm_name}.feedback_accuracy"] = arm.accuracy
            out[f"{arm_name}.feedback_n"] = arm.feedback_n
    if f.expected_latency_ms is not None:
        out["expected_latency_ms"] = f.expected_latency_ms
    if f.latency_slo_ms is not None:
        out["latency_slo_ms"] = f.latency_slo_ms
    return out


def decide(f: StageFigures, stage: StageConfig, th: GateThresholds) -> GateDecision:
    """Judge a stage: any failed check fails it; otherwise any inconclusive check holds it; otherwise it passes."""
    checks = [check_installs(f, th), check_silent(f, th), check_errors(f, th), check_latency(f, th),
              check_prediction_shift(f, th, stage), check_confidence(f, th, stage), check_accuracy(f, th),
              check_coverage(f, stage, th), check_bake(f, stage)]
    failed = [c for c in checks if c.outcome == "fail"]
    waiting = [c for c in checks if c.outcome == "inconclusive"]
    if failed:
        outcome: Outcome = "fail"
        reasons = [f"{c.name}: {c.reason}" for c in failed]
    elif waiting:
        outcome = "inconclusive"
        reasons = [f"{c.name}: {c.reason}" for c in waiting]
    else:
        outcome = "pass"
        reasons = [f"{c.name}: {c.reason}" for c in checks if c.outcome == "pass"]
    return GateDecision(outcome=outcome, reasons=reasons, checks=checks, figures=flat_figures(f))
