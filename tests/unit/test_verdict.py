"""The drift verdict: every rule, every bad-input state, and monotonicity in the figures."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.monitor.config import DeviceThresholds, OverallThresholds, Thresholds
from tinymlops.monitor.drift import (
    DeviceExpectation,
    DeviceFigures,
    DistributionFigures,
    DriftFigures,
    FeatureFigures,
    PerformanceFigures,
    RejectedSketch,
)
from tinymlops.monitor.verdict import decide, judge_feature, render_markdown

TH = Thresholds()
N = 500


def feat(name: str = "f", psi: float = 0.01, w: float = 0.02, p: float = 0.5, n: int = N,
         nonfinite: int = 0) -> FeatureFigures:
    return FeatureFigures(name=name, n=n, nonfinite=nonfinite, psi=psi, js_distance=math.sqrt(psi) / 3,
                          wasserstein_norm=w, p_value=p)


def dist(psi: float = 0.01, p: float = 0.5, n: int = N) -> DistributionFigures:
    return DistributionFigures(n=n, psi=psi, js_distance=0.01, p_value=p, reference_share=[0.5, 0.5],
                               current_share=[0.5, 0.5])


def device(name: str = "d1", p95: float | None = 2.0, mem: int = 20_000, energy: float | None = 50.0,
           err: float = 0.0, expected: DeviceExpectation | None = None) -> DeviceFigures:
    return DeviceFigures(device=name, n=N, latency_p50_ms=1.5, latency_p95_ms=p95, latency_max_ms=3.0,
                         peak_memory_bytes=mem, energy_uj_per_inference=energy, error_rate=err,
                         expected=expected or DeviceExpectation(target="m4", latency_ms=2.0, peak_ram_bytes=20_000,
                                                                energy_uj=50.0))


def figures(features: list[FeatureFigures] | None = None, n: int = N, predictions: DistributionFigures | None = None,
            confidence: DistributionFigures | None = None, **kw) -> DriftFigures:
    feats = features if features is not None else [feat(f"f{i}") for i in range(10)]
    return DriftFigures(model="m", version="1", target="m4", cohort="a", n_inferences=n, n_devices=5,
                        features=feats, predictions=predictions or dist(), confidence=confidence or dist(), **kw)


def test_no_drift_is_ok_with_a_reason():
    v = decide(figures(), TH)
    assert v.level == "ok"
    assert v.reasons[0].startswith("no drift")
    assert all(c.level == "ok" for c in v.features)
    assert v.drifted_features == []


def test_significant_large_shift_on_one_feature_warns_and_names_it():
    feats = [feat(f"f{i}") for i in range(9)] + [feat("gain", psi=0.15, w=0.2, p=1e-9)]
    v = decide(figures(feats), TH)
    assert v.level == "warn"
    assert v.drifted_features == ["gain"]
    assert any("gain" in r for r in v.reasons)
    assert "PSI 0.150" in v.features[-1].reasons[0]


def test_significant_but_tiny_shift_is_ok():
    # huge windows make every difference significant; the effect-size gate keeps them quiet
    v = decide(figures([feat("f", psi=0.02, w=0.05, p=1e-30, n=100_000)], n=100_000), TH)
    assert v.level == "ok"


def test_large_but_insignificant_shift_is_ok():
    assert decide(figures([feat("f", psi=0.4, w=0.5, p=0.2)]), TH).level == "ok"


def test_wasserstein_alone_can_warn():
    v = decide(figures([feat("f", psi=0.05, w=0.2, p=1e-6)]), TH)
    assert v.level == "warn"
    assert "Wasserstein 0.200" in v.features[0].reasons[0]


def test_bonferroni_depends_on_the_number_of_features():
    many = [feat(f"f{i}") for i in range(35)] + [feat("x", psi=0.2, w=0.2, p=0.01)]
    assert decide(figures(many), TH).level == "ok"  # 0.01 > 0.05 / 38
    assert decide(figures([feat("x", psi=0.2, w=0.2, p=0.01)]), TH).level == "warn"  # 0.01 < 0.05 / 3


@pytest.mark.parametrize(("n_retrain", "expected"), [(1, "warn"), (2, "warn"), (3, "retrain"), (10, "retrain")])
def test_retrain_needs_a_share_of_features_at_retrain_level(n_retrain: int, expected: str):
    feats = [feat(f"d{i}", psi=0.5, w=0.5, p=1e-20) for i in range(n_retrain)]
    feats += [feat(f"f{i}") for i in range(10 - n_retrain)]
    v = decide(figures(feats), TH)
    assert v.level == expected
    assert v.summary["features_retrain"] == n_retrain


def test_feature_levels_use_psi_and_wasserstein_thresholds():
    alpha = 0.001
    assert judge_feature(feat(psi=0.09, w=0.14, p=1e-9), TH, alpha).level == "ok"
    assert judge_feature(feat(psi=0.10, w=0.0, p=1e-9), TH, alpha).level == "warn"
    assert judge_feature(feat(psi=0.0, w=0.15, p=1e-9), TH, alpha).level == "warn"
    assert judge_feature(feat(psi=0.25, w=0.0, p=1e-9), TH, alpha).level == "retrain"
    assert judge_feature(feat(psi=0.0, w=0.3, p=1e-9), TH, alpha).level == "retrain"
    assert judge_feature(feat(psi=0.5, w=0.5, p=alpha), TH, alpha).level == "ok"  # p must be below alpha


def test_nan_inf_values_are_reported_not_merged_silently():
    v = decide(figures([feat("f", nonfinite=10)] + [feat(f"g{i}") for i in range(3)]), TH)
    assert v.level == "warn"
    assert "NaN/inf" in v.features[0].reasons[0]
    assert any("NaN/inf" in r for r in v.reasons)
    assert v.summary["nonfinite_values"] == 10
    # a handful below the share threshold is counted but does not warn
    assert decide(figures([feat("f", nonfinite=2)]), TH).level == "ok"


def test_feature_with_only_nan_values_is_insufficient_data_and_warns():
    v = decide(figures([feat("f", n=0, nonfinite=N)] + [feat("g")]), TH)
    assert v.features[0].level == "warn"
    assert any("insufficient data" in r for r in v.features[0].reasons)
    assert v.level == "warn"


def test_non_finite_figures_do_not_crash():
    v = decide(figures([feat("f", psi=math.nan, w=math.inf, p=math.nan), feat("g")]), TH)
    assert v.features[0].level == "insufficient data"
    assert v.level == "ok"
    assert "not finite" in v.features[0].reasons[0]


def test_empty_window_is_insufficient_data():
    v = decide(DriftFigures(model="m", version="1", n_inferences=0, n_devices=0, features=[], predictions=None,
                            confidence=None), TH)
    assert v.level == "insufficient data"
    assert "insufficient data" in v.reasons[0]


def test_small_window_is_insufficient_data():
    v = decide(figures(n=TH.overall.min_inferences - 1), TH)
    assert v.level == "insufficient data"
    assert v.features == []


def test_all_reports_incompatible_is_incompatible_sketch():
    rej = [RejectedSketch(device=f"d{i}", reason="incompatible sketch: bin edges x differ") for i in range(3)]
    v = decide(DriftFigures(model="m", version="1", n_inferences=0, n_devices=0, features=[], predictions=None,
                            confidence=None, rejected=rej), TH)
    assert v.level == "incompatible sketch"
    assert "all 3 reports rejected" in v.reasons[0]
    assert [c.kind for c in v.checks] == ["sketch"] * 3


def test_some_incompatible_reports_warn_but_the_rest_is_judged():
    rej = [RejectedSketch(device="old", reason="incompatible sketch: reported for unknown version 9")]
    v = decide(figures(rejected=rej), TH)
    assert v.level == "warn"
    assert any("rejected as incompatible sketch" in r for r in v.reasons)
    assert len(v.features) == 10


def test_prediction_shift_retrains_unless_configured_to_warn():
    f = figures(predictions=dist(psi=0.4, p=1e-12))
    assert decide(f, TH).level == "retrain"
    th = Thresholds(overall=OverallThresholds(prediction_drift_retrain=False))
    assert decide(f, th).level == "warn"
    assert decide(figures(predictions=dist(psi=0.12, p=1e-6)), TH).level == "warn"


def test_confidence_shift_warns_at_most():
    v = decide(figures(confidence=dist(psi=2.0, p=1e-50)), TH)
    assert v.level == "warn"
    assert any(r.startswith("confidence shifted") for r in v.reasons)


@pytest.mark.parametrize(("acc", "f1", "expected"), [(0.97, 0.96, "ok"), (0.93, 0.96, "warn"), (0.97, 0.90, "warn"),
                                                     (0.87, 0.96, "retrain"), (0.5, 0.4, "retrain")])
def test_performance_drop_against_reference(acc: float, f1: float, expected: str):
    perf = PerformanceFigures(n=200, accuracy=acc, macro_f1=f1, reference_accuracy=0.98, reference_macro_f1=0.97)
    v = decide(figures(performance=perf), TH)
    assert v.level == expected
    if expected != "ok":
        assert any("reference 0.9" in r for r in v.reasons)


def test_too_little_feedback_or_no_reference_is_not_judged():
    few = PerformanceFigures(n=10, accuracy=0.1, macro_f1=0.1, reference_accuracy=0.98, reference_macro_f1=0.97)
    v = decide(figures(performance=few), TH)
    assert v.level == "ok"
    assert [c.level for c in v.checks if c.kind == "performance"] == ["insufficient data"]
    noref = PerformanceFigures(n=500, accuracy=0.1, macro_f1=0.1)
    assert decide(figures(performance=noref), TH).level == "ok"


@pytest.mark.parametrize(("kw", "needle"), [({"p95": 3.1}, "p95 latency"), ({"mem": 23_000}, "peak memory"),
                                            ({"energy": 80.0}, "energy per inference"),
                                            ({"err": 0.05}, "error/rejection rate"),
                                            ({"p95": math.nan}, "p95 latency reported as nan")])
def test_device_metrics_off_profile_warn(kw: dict, needle: str):
    v = decide(figures(devices=[device("ok-dev"), device("bad-dev", **kw)]), TH)
    assert v.level == "warn"
    assert v.summary["device_anomalies"] == 1
    bad = [c for c in v.checks if c.kind == "device" and c.level == "warn"]
    assert [c.name for c in bad] == ["bad-dev"]
    assert needle in bad[0].reasons[0]


def test_device_metrics_within_profile_or_without_expectation_are_ok():
    assert decide(figures(devices=[device(p95=2.9, mem=21_000, energy=70.0)]), TH).level == "ok"
    no_exp = device(p95=500.0, expected=DeviceExpectation(target="m4"))
    assert decide(figures(devices=[no_exp]), TH).level == "ok"
    strict = Thresholds(device=DeviceThresholds(latency_p95_ratio_warn=1.2))
    assert decide(figures(devices=[device(p95=2.9)]), strict).level == "warn"


def test_markdown_lists_level_reasons_and_features():
    feats = [feat("gain", psi=0.5, w=0.5, p=1e-20)] + [feat(f"f{i}") for i in range(3)]
    md = render_markdown(decide(figures(feats), TH))
    assert "**retrain**" in md
    assert "| gain | retrain | 0.500 |" in md


RANK = {"ok": 0, "warn": 1, "retrain": 2}


@settings(max_examples=200, deadline=None)
@given(psi=st.floats(0, 3), w=st.floats(0, 3), p=st.floats(0, 1), bump=st.floats(0, 1))
def test_verdict_is_monotonic_in_effect_size(psi: float, w: float, p: float, bump: float):
    a = decide(figures([feat("x", psi=psi, w=w, p=p), feat("y")]), TH)
    b = decide(figures([feat("x", psi=psi + bump, w=w + bump, p=p), feat("y")]), TH)
    assert RANK[b.level] >= RANK[a.level]
    c = decide(figures([feat("x", psi=psi, w=w, p=p / 10), feat("y")]), TH)
    assert RANK[c.level] >= RANK[a.level]
