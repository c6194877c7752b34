"""Stage gates: every check's pass, fail and inconclusive branch, and how checks combine into a decision."""

from __future__ import annotations

import pytest

from tinymlops.rollout import gates
from tinymlops.rollout.config import GateThresholds, StageConfig
from tinymlops.rollout.gates import ArmFigures, StageFigures

TH = GateThresholds(report_grace_s=10, min_error_samples=50, min_latency_samples=30, min_control_inferences=100,
                    min_feedback=20)
STAGE = StageConfig(percent=25, min_devices=2, min_inferences=100, bake_s=10, deadline_s=60)
BALANCED = [250, 250, 250, 250]


def healthy(**changes: object) -> StageFigures:
    """A stage window with plenty of healthy evidence; keyword arguments replace fields."""
    base = StageFigures(
        target="t", version="2", stage_index=1, assigned_devices=5, stage_devices=5, installed_devices=5,
        reporting_devices=5, baked_s=30,
        candidate=ArmFigures(devices=5, inferences=1000, errors=2, latency_p95_ms=1.0, prediction_counts=BALANCED,
                             confidence_mean=0.9, feedback_n=50, feedback_correct=45),
        control=ArmFigures(devices=15, inferences=3000, latency_p95_ms=1.0, prediction_counts=[750] * 4,
                           confidence_mean=0.9, feedback_n=150, feedback_correct=135),
        reference_prediction_counts=BALANCED, reference_confidence_mean=0.9, reference_accuracy=0.9,
        expected_latency_ms=1.0, latency_slo_ms=20.0)
    return base.model_copy(update=changes)


def arm(f: StageFigures, **changes: object) -> ArmFigures:
    return f.candidate.model_copy(update=changes)


def outcome(check: gates.Check) -> str:
    return check.outcome


def test_healthy_window_passes_with_every_check_passing_or_skipped():
    d = gates.decide(healthy(), STAGE, TH)
    assert d.outcome == "pass"
    assert {c.name: c.outcome for c in d.checks} == {
        "installs": "pass", "silent": "pass", "errors": "pass", "latency": "pass", "prediction_shift": "pass",
        "confidence": "pass", "accuracy": "pass", "coverage": "pass", "bake": "pass"}
    assert d.figures["candidate.inferences"] == 1000 and d.figures["control.devices"] == 15


# ---- installs -----------------------------------------------------------------------------------------------


def test_installs_fail_on_any_rejection_with_zero_tolerance():
    c = gates.check_installs(healthy(rejected_devices=1, installed_devices=4), TH)
    assert c.outcome == "fail" and "1 of 5 devices rejected" in c.reason


def test_installs_tolerate_rejections_up_to_the_threshold():
    th = TH.model_copy(update={"max_rejection_rate": 0.2})
    assert gates.check_installs(healthy(rejected_devices=1, installed_devices=4), th).outcome == "pass"
    assert gates.check_installs(healthy(rejected_devices=2, installed_devices=3), th).outcome == "fail"


def test_installs_inconclusive_before_any_device_installed():
    assert gates.check_installs(healthy(installed_devices=0), TH).outcome == "inconclusive"


# ---- silent devices (crash loop) ----------------------------------------------------------------------------


def test_silent_devices_fail_above_the_share():
    c = gates.check_silent(healthy(silent_devices=2), TH)
    assert c.outcome == "fail" and "crash loop" in c.reason
    assert gates.check_silent(healthy(silent_devices=1), TH).outcome == "pass"  # 1/5 = 20% <= 25%


def test_silent_inconclusive_when_nothing_installed():
    assert gates.check_silent(healthy(installed_devices=0, silent_devices=0), TH).outcome == "inconclusive"


# ---- coverage and bake ----------------------------------------------------------------------------------------


def test_coverage_waits_for_rate_limited_assignment():
    c = gates.check_coverage(healthy(assigned_devices=3), STAGE, TH)
    assert c.outcome == "inconclusive" and "rate limit" in c.reason


def test_offline_devices_make_the_gate_inconclusive_not_pass():
    f = healthy(reporting_devices=3, offline_devices=2)  # need max(2, ceil(0.8*5)=4)
    c = gates.check_coverage(f, STAGE, TH)
    assert c.outcome == "inconclusive" and "2 offline" in c.reason
    assert gates.decide(f, STAGE, TH).outcome == "inconclusive"


def test_coverage_needs_min_inferences():
    f = healthy(candidate=ArmFigures(devices=5, inferences=99, prediction_counts=[25, 25, 25, 24],
                                     latency_p95_ms=1.0, confidence_mean=0.9))
    assert gates.check_coverage(f, STAGE, TH).outcome == "inconclusive"


def test_coverage_needs_min_devices_even_when_share_is_met():
    stage = STAGE.model_copy(update={"min_devices": 6})
    assert gates.check_coverage(healthy(), stage, TH).outcome == "inconclusive"


def test_bake_time_holds_a_healthy_stage():
    f = healthy(baked_s=9.5)
    assert gates.check_bake(f, STAGE).outcome == "inconclusive"
    d = gates.decide(f, STAGE, TH)
    assert d.outcome == "inconclusive" and d.reasons == ["bake: baking: 10 of 10 s"]


# ---- errors -----------------------------------------------------------------------------------------------------


def test_error_rate_above_threshold_fails():
    f = healthy()
    c = gates.check_errors(f.model_copy(update={"candidate": arm(f, errors=30)}), TH)
    assert c.outcome == "fail" and "error rate 2.9%" in c.reason


def test_error_rate_needs_samples_unless_errors_alone_are_overwhelming():
    f = healthy()
    few = f.model_copy(update={"candidate": arm(f, inferences=10, errors=5)})
    assert gates.check_errors(few, TH).outcome == "inconclusive"
    many = f.model_copy(update={"candidate": arm(f, inferences=0, errors=60)})
    assert gates.check_errors(many, TH).outcome == "fail"


def test_error_check_fails_the_decision_even_while_baking():
    f = healthy(baked_s=0.0)
    f = f.model_copy(update={"candidate": arm(f, errors=500)})
    d = gates.decide(f, STAGE, TH)
    assert d.outcome == "fail" and d.reasons[0].startswith("errors:")


# ---- latency ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("p95", "expected", "slo", "control", "result", "needle"), [
    (25.0, None, 20.0, None, "fail", "SLO"),
    (2.9, 1.0, None, None, "pass", ""),          # limit = max(2x1, 1+2) = 3 ms
    (3.1, 1.0, None, None, "fail", "profiled"),
    (10.0, 5.0, None, None, "pass", ""),          # limit = max(10, 7) = 10 ms
    (10.5, 5.0, None, None, "fail", "profiled"),
    (9.0, None, None, 2.0, "fail", "control"),    # limit = max(4, 4) = 4 ms
    (3.9, None, None, 2.0, "pass", ""),
    (9.0, None, None, None, "pass", ""),          # nothing to compare with: no reason to fail
])
def test_latency_against_slo_expectation_and_control(p95: float, expected: float | None, slo: float | None,
                                                    control: float | None, result: str, needle: str):
    f = healthy(expected_latency_ms=expected, latency_slo_ms=slo)
    ctl = None if control is None else f.control.model_copy(update={"latency_p95_ms": control})  # type: ignore
    f = f.model_copy(update={"candidate": arm(f, latency_p95_ms=p95), "control": ctl})
    c = gates.check_latency(f, TH)
    assert c.outcome == result and needle in c.reason


def test_latency_inconclusive_without_enough_samples():
    f = healthy()
    f = f.model_copy(update={"candidate": arm(f, inferences=10, latency_p95_ms=500.0)})
    assert gates.check_latency(f, TH).outcome == "inconclusive"


# ---- prediction shift and confidence -------------------------------------------------------------------------


def test_prediction_shift_vs_control_fails_on_collapse_to_one_class():
    f = healthy()
    f = f.model_copy(update={"candidate": arm(f, prediction_counts=[1000, 0, 0, 0])})
    c = gates.check_prediction_shift(f, TH, STAGE)
    assert c.outcome == "fail" and "vs control" in c.reason


def test_prediction_shift_small_noise_passes():
    f = healthy()
    f = f.model_copy(update={"candidate": arm(f, prediction_counts=[270, 240, 250, 240])})
    assert gates.check_prediction_shift(f, TH, STAGE).outcome == "pass"


def test_prediction_shift_uses_reference_when_control_is_too_small():
    f = healthy()
    small = f.control.model_copy(update={"inferences": 50, "prediction_counts": [50, 0, 0, 0]})  # type: ignore
    f = f.model_copy(update={"control": small})
    c = gates.check_prediction_shift(f, TH, STAGE)
    assert c.outcome == "pass" and "vs reference" in c.reason


def test_prediction_shift_inconclusive_with_nothing_comparable():
    f = healthy(control=None, reference_prediction_counts=None)
    assert gates.check_prediction_shift(f, TH, STAGE).outcome == "inconclusive"
    f = healthy(control=None, reference_prediction_counts=[1, 2, 3])  # other classes
    assert gates.check_prediction_shift(f, TH, STAGE).outcome == "inconclusive"


def test_confidence_drop_fails_and_small_drop_passes():
    f = healthy()
    assert gates.check_confidence(f.model_copy(update={"candidate": arm(f, confidence_mean=0.75)}), TH,
                                  STAGE).outcome == "fail"
    assert gates.check_confidence(f.model_copy(update={"candidate": arm(f, confidence_mean=0.85)}), TH,
                                  STAGE).outcome == "pass"


def test_confidence_inconclusive_without_baseline():
    f = healthy(control=None, reference_confidence_mean=None)
    assert gates.check_confidence(f, TH, STAGE).outcome == "inconclusive"


# ---- accuracy on feedback -------------------------------------------------------------------------------------


def test_accuracy_collapse_on_feedback_fails():
    f = healthy()
    f = f.model_copy(update={"candidate": arm(f, feedback_n=50, feedback_correct=10)})
    c = gates.check_accuracy(f, TH)
    assert c.outcome == "fail" and "vs control" in c.reason
    assert gates.decide(f, STAGE, TH).outcome == "fail"


def test_accuracy_skipped_without_feedback_waits_for_enough_and_uses_reference_without_control_feedback():
    f = healthy()
    assert gates.check_accuracy(f.model_copy(update={"candidate": arm(f, feedback_n=0)}), TH).outcome == "skipped"
    some = f.model_copy(update={"candidate": arm(f, feedback_n=5, feedback_correct=5)})
    assert gates.check_accuracy(some, TH).outcome == "inconclusive"
    assert gates.decide(some, STAGE, TH).outcome == "inconclusive"
    no_ctl = f.model_copy(update={"control": f.control.model_copy(update={"feedback_n": 0})})  # type: ignore
    c = gates.check_accuracy(no_ctl, TH)
    assert c.outcome == "pass" and "vs reference" in c.reason
    nothing = no_ctl.model_copy(update={"reference_accuracy": None})
    assert gates.check_accuracy(nothing, TH).outcome == "skipped"


# ---- combination ------------------------------------------------------------------------------------------------


def test_fail_beats_inconclusive_and_lists_only_failures():
    f = healthy(assigned_devices=2, rejected_devices=1, installed_devices=1)
    d = gates.decide(f, STAGE, TH)
    assert d.outcome == "fail" and all(r.startswith("installs") for r in d.reasons)


def test_empty_window_is_inconclusive_never_pass():
    f = StageFigures(target="t", version="2", stage_index=0, assigned_devices=1, stage_devices=1)
    d = gates.decide(f, STAGE, TH)
    assert d.outcome == "inconclusive"
    assert {c.name for c in d.checks if c.outcome == "inconclusive"} >= {"installs", "coverage", "bake", "errors"}


def test_flat_figures_are_numbers_for_mlflow():
    figs = gates.flat_figures(healthy())
    assert all(isinstance(v, int | float) for v in figs.values())
    assert figs["candidate.feedback_accuracy"] == pytest.approx(0.9)
    assert figs["expected_latency_ms"] == 1.0
