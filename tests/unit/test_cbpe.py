"""Label-free performance estimates (CBPE): calibration, estimate, interval, mergeability, verdict."""

from __future__ import annotations

import numpy as np
import pytest

from tinymlops.monitor.cbpe import estimate, fit_calibration
from tinymlops.monitor.config import Thresholds
from tinymlops.monitor.drift import DeviceReport, DriftFigures, compute_figures
from tinymlops.monitor.reference import CONFIDENCE_EDGES, ReferenceProfile, compute_reference
from tinymlops.monitor.sketches import Sketch, SketchBuilder
from tinymlops.monitor.verdict import decide, render_markdown

C = 4


def calibrated(n: int, rng: np.random.Generator, sharp: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a perfectly calibrated model: the true class is drawn from the predicted distribution."""
    logits = rng.normal(0, sharp, size=(n, C))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(C, p=row) for row in p])
    return p, y


def histograms(p: np.ndarray) -> tuple[list[list[int]], list[int], list[int]]:
    b = np.searchsorted(CONFIDENCE_EDGES, p.max(axis=1), side="right")
    joint = np.zeros((C, len(CONFIDENCE_EDGES) + 1), np.int64)
    np.add.at(joint, (p.argmax(axis=1), b), 1)
    return joint.tolist(), joint.sum(axis=1).tolist(), joint.sum(axis=0).tolist()


def test_calibration_counts_and_bad_input() -> None:
    rng = np.random.default_rng(0)
    p, y = calibrated(400, rng)
    cal = fit_calibration(p, y, CONFIDENCE_EDGES)
    assert np.asarray(cal.counts).sum() == 400 and np.asarray(cal.confusion).sum() == 400
    assert np.trace(np.asarray(cal.confusion)) == np.asarray(cal.correct).sum()
    assert cal.accuracy == pytest.approx(float((p.argmax(axis=1) == y).mean()))
    assert sum(cal.class_counts) == 400
    with pytest.raises(ValueError, match="labels must be in"):
        fit_calibration(p, np.full(400, 7), CONFIDENCE_EDGES)
    with pytest.raises(ValueError, match="probabilities"):
        fit_calibration(p, y[:10], CONFIDENCE_EDGES)
    with pytest.raises(ValueError, match="do not match"):
        estimate(cal, None, [1, 2], [3] * 10)


def test_estimate_tracks_realised_accuracy_of_a_calibrated_model_and_interval_covers_it() -> None:
    rng = np.random.default_rng(1)
    cal = fit_calibration(*calibrated(1500, rng), CONFIDENCE_EDGES)
    covered, errors = 0, []
    for sharp in (1.0, 2.0, 4.0):  # low to high confidence: accuracy far from the calibration split's
        for _ in range(8):
            p, y = calibrated(500, rng, sharp)
            e = estimate(cal, *histograms(p), class_prior=False)
            assert e is not None and e.joint
            truth = float((p.argmax(axis=1) == y).mean())
            errors.append(abs(e.accuracy - truth))
            covered += e.accuracy_low <= truth <= e.accuracy_high
            assert e.accuracy_low <= e.accuracy <= e.accuracy_high
            assert e.macro_f1_low <= e.macro_f1 <= e.macro_f1_high
    assert np.mean(errors) < 0.03
    assert covered >= 0.85 * 24


def test_class_prior_catches_a_confidently_wrong_model() -> None:
    """Under a sensor shift the model calls half of class 3 'class 0' at full confidence; the prior exposes it."""
    rng = np.random.default_rng(2)
    cal = fit_calibration(*calibrated(2000, rng, sharp=8.0), CONFIDENCE_EDGES)
    y = rng.integers(0, C, 800)
    pred = y.copy()
    pred[(y == 3) & (rng.random(800) < 0.5)] = 0
    p = np.full((800, C), 0.001)
    p[np.arange(800), pred] = 0.997
    truth = float((pred == y).mean())
    naive = estimate(cal, *histograms(p), class_prior=False)
    raked = estimate(cal, *histograms(p), class_prior=True)
    assert naive is not None and raked is not None
    assert naive.accuracy > truth + 0.08  # plain CBPE trusts the confidence
    assert abs(raked.accuracy - truth) < 0.03
    assert raked.accuracy_low <= truth <= raked.accuracy_high


def test_estimate_of_merged_sketches_equals_estimate_of_the_whole_window() -> None:
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(600, 3))
    pv, yv = calibrated(600, rng)
    ref = compute_reference(feats, pv, ["a", "b", "c"], list("wxyz"), calibration=(pv, yv),
                            metrics={"accuracy": 0.9, "macro_f1": 0.9})
    p, _ = calibrated(400, rng)
    whole, parts = SketchBuilder(ref), [SketchBuilder(ref), SketchBuilder(ref)]
    for i in range(400):
        for b in (whole, parts[i % 2]):
            b.add(feats[i], p[i], latency_ms=1.0, timestamp=float(i))
    merged = parts[0].flush().merge(parts[1].flush())
    one = whole.flush()
    assert merged.class_confidence_counts == one.class_confidence_counts
    reps = [DeviceReport(device=f"d{k}", sketch=s, version="1") for k, s in enumerate((merged,))]
    fig = compute_figures(ref, "m", "1", reps)
    fig_one = compute_figures(ref, "m", "1", [DeviceReport(device="d", sketch=one, version="1")])
    assert fig.estimated is not None and fig.estimated == fig_one.estimated
    # an agent without the joint histogram: merge keeps none, the estimate falls back to the marginals
    old = Sketch.model_validate({**one.model_dump(), "class_confidence_counts": []})
    assert one.merge(old).class_confidence_counts == []
    e_old = compute_figures(ref, "m", "1", [DeviceReport(device="d", sketch=old, version="1")]).estimated
    assert e_old is not None and not e_old.joint


def _drifted_window(feedback: int) -> tuple[ReferenceProfile, DeviceReport]:
    """A calibrated reference and one window in which the model calls 80 % of class 3 'class 0', confidently."""
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(2000, 2))
    pv, yv = calibrated(2000, rng, sharp=8.0)
    ref = compute_reference(feats, pv, ["a", "b"], list("wxyz"), calibration=(pv, yv),
                            metrics={"accuracy": float((pv.argmax(1) == yv).mean()), "macro_f1": 0.97})
    b = SketchBuilder(ref)
    y = rng.integers(0, C, 600)
    pred = np.where((y == 3) & (rng.random(600) < 0.8), 0, y)
    for i in range(600):
        p = np.full(C, 0.001)
        p[pred[i]] = 0.997
        b.add(rng.normal(size=2), p, latency_ms=1.0, timestamp=float(i))
    rep = DeviceReport(device="d", sketch=b.flush(), version="1", feedback_true=y[:feedback] if feedback else None,
                       feedback_pred=pred[:feedback] if feedback else None)
    return ref, rep


def _figures_with_drop(feedback: int) -> DriftFigures:
    ref, rep = _drifted_window(feedback)
    return compute_figures(ref, "m", "1", [rep])


def test_verdict_judges_the_estimate_without_labels_and_says_so() -> None:
    v = decide(_figures_with_drop(feedback=0), Thresholds())
    est = [c for c in v.checks if c.kind == "performance" and c.name == "estimated"]
    assert est and est[0].level == "retrain"
    assert any("estimated without labels" in r for r in v.reasons)
    # the drop rests on the class prior (the model is confidently wrong): the reason says what label shift means
    assert any("if the class mix itself changed" in r for r in v.reasons)
    assert v.summary["estimated_accuracy_calibration_only"] > v.summary["estimated_accuracy"] + 0.1
    assert v.level == "retrain"
    assert "accuracy: estimated" in render_markdown(v)


def test_verdict_prefers_feedback_and_shows_both() -> None:
    v = decide(_figures_with_drop(feedback=200), Thresholds())
    assert not [c for c in v.checks if c.name == "estimated"]
    assert v.summary["feedback_n"] == 200 and v.summary["estimated_accuracy"] is not None
    md = render_markdown(v)
    assert "accuracy: estimated" in md and "feedback" in md


def test_fleet_service_rejects_inconsistent_class_confidence_histograms() -> None:
    from tinymlops.fleet.service.context import PackageCtx, check_sketch
    from tinymlops.monitor.sketches import edges_digest

    rng = np.random.default_rng(5)
    feats = rng.normal(size=(300, 2))
    pv, yv = calibrated(300, rng)
    ref = compute_reference(feats, pv, ["a", "b"], list("wxyz"), calibration=(pv, yv))
    b = SketchBuilder(ref)
    for i in range(50):
        b.add(feats[i], pv[i], latency_ms=1.0, timestamp=float(i))
    sk = b.flush()
    pkg = PackageCtx("p", "m", "1", "t", edges_digest(ref), tuple(len(f.inner_edges) + 1 for f in ref.features),
                     C, len(CONFIDENCE_EDGES) + 1, 2)
    assert check_sketch(sk, pkg) is None
    assert check_sketch(sk.model_copy(update={"class_confidence_counts": []}), pkg) is None  # older agent
    moved = [row[:] for row in sk.class_confidence_counts]
    i = int(np.argmax([sum(r) for r in moved]))
    j = int(np.argmax(moved[i]))
    moved[i][j] -= 1
    moved[(i + 1) % C][j] += 1  # column sums still right, row sums not
    assert "add up" in (check_sketch(sk.model_copy(update={"class_confidence_counts": moved}), pkg) or "")
    wide = [[*row, 0] for row in sk.class_confidence_counts]
    assert "shape" in (check_sketch(sk.model_copy(update={"class_confidence_counts": wide}), pkg) or "")
    hostile = [[10**20] * (len(CONFIDENCE_EDGES) + 1) for _ in range(C)]
    assert check_sketch(sk.model_copy(update={"class_confidence_counts": hostile}), pkg) is not None



def test_estimate_options_from_the_drift_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tinymlops.config import load
    from tinymlops.errors import ConfigError
    from tinymlops.monitor.config import EstimateSection

    bad = tmp_path / "drift.yaml"
    bad.write_text("kind: drift\nestimate: {interval: 1.5}\n")
    with pytest.raises(ConfigError, match="interval"):
        load(bad)
    ref, rep = _drifted_window(feedback=0)

    def est(opt: EstimateSection):  # type: ignore[no-untyped-def]
        return compute_figures(ref, "m", "1", [rep], estimate_options=opt).estimated

    assert est(EstimateSection(enabled=False)) is None
    with_prior, plain = est(EstimateSection()), est(EstimateSection(class_prior=False))
    assert with_prior is not None and plain is not None
    assert plain.accuracy > with_prior.accuracy + 0.1  # without the prior the confidently wrong model looks fine
    narrow = est(EstimateSection(interval=0.6))
    assert narrow is not None and narrow.accuracy_high - narrow.accuracy_low < with_prior.accuracy_high - \
        with_prior.accuracy_low


def test_many_classes_estimate_in_bounded_memory() -> None:
    """A 150-class model: the bootstrap runs in chunks of draws (memory bounded by DRAW_CELLS)."""
    rng = np.random.default_rng(6)
    k = 150
    logits = rng.normal(0, 3, size=(3000, k))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.where(rng.random(3000) < 0.7, p.argmax(axis=1), rng.integers(0, k, 3000))
    cal = fit_calibration(p, y, CONFIDENCE_EDGES)
    b = np.searchsorted(CONFIDENCE_EDGES, p.max(axis=1), side="right")
    joint = np.zeros((k, len(CONFIDENCE_EDGES) + 1), np.int64)
    np.add.at(joint, (p.argmax(axis=1), b), 1)
    e = estimate(cal, joint.tolist(), joint.sum(axis=1).tolist(), joint.sum(axis=0).tolist(), class_prior=False)
    assert e is not None and e.accuracy_low <= e.accuracy <= e.accuracy_high
    assert abs(e.accuracy - cal.accuracy) < 0.05
