"""Binned drift metrics, sketch compatibility and merging, device and performance figures."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency, wasserstein_distance
from sklearn.metrics import accuracy_score, f1_score

from tinymlops.monitor.config import Thresholds
from tinymlops.monitor.drift import (
    DeviceExpectation,
    DeviceReport,
    chi2_p_value,
    compute_figures,
    incompatibility,
    js_distance,
    merge_reports,
    performance_figures,
    psi,
    wasserstein_norm,
)
from tinymlops.monitor.reference import bin_counts, compute_reference
from tinymlops.monitor.sketches import SketchBuilder
from tinymlops.monitor.verdict import decide

RNG = np.random.default_rng(0)
REF_X = RNG.normal(size=(3000, 4))
REF_P = RNG.dirichlet([1, 1, 1], size=3000)
REF = compute_reference(REF_X, REF_P, ["a", "b", "c", "d"], ["x", "y", "z"], bins=10,
                        metrics={"accuracy": 0.9, "macro_f1": 0.88})


def sketch(X: np.ndarray, P: np.ndarray | None = None, latency_ms: float = 2.0, reference=REF):
    b = SketchBuilder(reference)
    P = P if P is not None else np.random.default_rng(1).dirichlet([1, 1, 1], size=len(X))
    for i in range(len(X)):
        b.add(X[i], P[i], latency_ms=latency_ms, timestamp=1000.0 + i, energy_uj=40.0, memory_bytes=10_000)
    return b.flush()


def test_psi_matches_the_formula_and_is_zero_on_identical_histograms():
    r, c = np.array([100, 200, 300, 400]), np.array([150, 250, 250, 350])
    p, q = (r + 0.5) / (r + 0.5).sum(), (c + 0.5) / (c + 0.5).sum()
    assert psi(r, c) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert psi(r, r * 3) == pytest.approx(0.0, abs=1e-4)
    assert np.isfinite(psi([10, 0, 0], [0, 0, 10]))  # empty bins do not make it infinite


def test_js_distance_bounds():
    assert js_distance([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-9)
    assert js_distance([5, 0], [0, 5]) == pytest.approx(1.0)
    assert 0 < js_distance([5, 5], [6, 4]) < 0.2


def test_chi2_p_value_matches_scipy():
    r, c = np.array([120, 80, 50, 10, 0]), np.array([30, 40, 20, 9, 0])
    expected = chi2_contingency(np.vstack([r, c])[:, :4], correction=False)[1]
    assert chi2_p_value(r, c) == pytest.approx(expected, rel=1e-9)
    assert chi2_p_value([5, 5], [0, 0]) == 1.0


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (0.3, 1.0), (1.0, 1.0), (0.0, 1.5), (0.0, 1.15)])
def test_binned_wasserstein_approximates_the_raw_one(shift: float, scale: float):
    rng = np.random.default_rng(3)
    ref = rng.normal(size=20_000)
    cur = rng.normal(size=20_000) * scale + shift
    edges = np.quantile(ref, np.linspace(0, 1, 11)[1:-1])
    approx = wasserstein_norm(edges, bin_counts(edges, ref), bin_counts(edges, cur), ref.std(), ref.min(), ref.max())
    raw = wasserstein_distance(ref, cur) / ref.std()
    if scale == 1.0:
        assert approx == pytest.approx(raw, abs=0.03 + 0.25 * raw)
    else:  # open-ended bins hide how far tail mass moved: a conservative (lower) estimate
        assert 0.45 * raw <= approx <= raw


def test_sketch_of_same_distribution_is_quiet_and_shifted_one_is_flagged():
    same = sketch(np.random.default_rng(5).normal(size=(600, 4)))
    shifted_x = np.random.default_rng(6).normal(size=(600, 4))
    shifted_x[:, 2] += 0.8
    shifted = sketch(shifted_x)
    reps = [DeviceReport("d1", same, "1")]
    v = decide(compute_figures(REF, "m", "1", reps), Thresholds())
    assert v.level == "ok"
    v2 = decide(compute_figures(REF, "m", "1", [DeviceReport("d1", shifted, "1")]), Thresholds())
    assert v2.drifted_features == ["c"]


def test_wrong_bins_and_unknown_versions_are_rejected_never_merged():
    other = compute_reference(REF_X + 5, REF_P, ["a", "b", "c", "d"], ["x", "y", "z"])
    good = sketch(REF_X[:300])
    wrong_bins = sketch(REF_X[:300], reference=other)
    assert incompatibility(REF, good) is None
    assert "bin edges" in (incompatibility(REF, wrong_bins) or "")
    res = merge_reports(REF, "1", [DeviceReport("good", good, "1"), DeviceReport("wrong", wrong_bins, "1"),
                                   DeviceReport("future", good, "7")])
    assert res.merged is not None and res.merged.n_inferences == 300
    assert [r.device for r in res.rejected] == ["wrong", "future"]
    assert "unknown version 7" in res.rejected[1].reason
    figs = compute_figures(REF, "m", "1", [DeviceReport("wrong", wrong_bins, "1")])
    assert decide(figs, Thresholds()).level == "incompatible sketch"


def test_tampered_histogram_lengths_are_incompatible():
    s = sketch(REF_X[:50])
    s.feature_counts[1] = s.feature_counts[1][:-1]
    assert "feature b" in (incompatibility(REF, s) or "")
    s2 = sketch(REF_X[:50])
    s2.prediction_counts = [1, 2]
    assert "classes" in (incompatibility(REF, s2) or "")


def test_nan_and_inf_inputs_are_counted_per_feature():
    X = REF_X[:400].copy()
    X[:20, 1] = np.nan
    X[20:25, 1] = np.inf
    figs = compute_figures(REF, "m", "1", [DeviceReport("d", sketch(X), "1")])
    b = figs.features[1]
    assert (b.n, b.nonfinite) == (375, 25)
    v = decide(figs, Thresholds())
    assert v.level == "warn" and "NaN/inf" in v.features[1].reasons[0]


def test_device_figures_per_device_and_fleet():
    r1 = DeviceReport("fast", sketch(REF_X[:300], latency_ms=2.0), "1")
    r2 = DeviceReport("slow", sketch(REF_X[300:600], latency_ms=9.0), "1")
    exp = DeviceExpectation(target="m4", latency_ms=2.0, peak_ram_bytes=10_000, energy_uj=40.0)
    figs = compute_figures(REF, "m", "1", [r1, r2], exp, target="m4")
    by = {d.device: d for d in figs.devices}
    assert by["fast"].latency_p95_ms <= 2.0 * 1.34  # log histogram: 8 bins per decade
    assert by["slow"].latency_p95_ms >= 9.0
    assert by["fast"].energy_uj_per_inference == pytest.approx(40.0)
    assert figs.fleet_device is not None and figs.fleet_device.n == 600
    v = decide(figs, Thresholds())
    assert [c.name for c in v.checks if c.kind == "device" and c.level == "warn"] == ["slow", "fleet"]


def test_performance_figures_match_sklearn():
    rng = np.random.default_rng(2)
    t = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.8, t, rng.integers(0, 4, 300))
    perf = performance_figures(t, p, 4, {"accuracy": 0.9})
    assert perf.accuracy == pytest.approx(accuracy_score(t, p))
    assert perf.macro_f1 == pytest.approx(f1_score(t, p, average="macro"))
    assert perf.reference_accuracy == 0.9 and perf.reference_macro_f1 is None
