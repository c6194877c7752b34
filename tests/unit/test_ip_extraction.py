"""Extraction detection: the on-device statistic flags simulated attacks and spares natural query streams."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tinymlops.ip import attacks
from tinymlops.ip import extraction as ex


@pytest.fixture(scope="module")
def victim() -> tuple[np.ndarray, np.ndarray, object]:
    """A softmax-regression digits classifier (the victim) and the natural inputs its devices see."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    w = np.zeros((64, 10))
    for _ in range(300):
        z = x @ w
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        w -= 0.5 * x.T @ p / len(y)

    def predict(batch: np.ndarray) -> np.ndarray:
        z = np.asarray(batch, np.float64).reshape(len(batch), -1) @ w * 3
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return x, y, predict


def _figures(stream: object, predict) -> dict[str, float]:  # type: ignore[no-untyped-def]
    xs = np.stack(list(stream))  # type: ignore[call-overload]
    mon = ex.QueryDistanceMonitor()
    for q, p in zip(xs, predict(xs), strict=True):
        mon.add(q, p)
    return mon.figures()


def test_shapiro_francia_separates_normal_from_skewed() -> None:
    rng = np.random.default_rng(0)
    assert ex.shapiro_francia(rng.normal(size=500)) > 0.99
    assert ex.shapiro_francia(rng.exponential(size=500) ** 3) < 0.8
    assert ex.shapiro_francia(np.ones(50)) == 0.0 and ex.shapiro_francia(np.arange(3.0)) == 1.0


def test_figures_are_numbers_only_and_bounded() -> None:
    mon = ex.QueryDistanceMonitor(memory_per_class=8, distances=100)
    rng = np.random.default_rng(0)
    for _ in range(500):
        mon.add(rng.normal(size=16), np.array([0.7, 0.2, 0.1]))
    figs = mon.figures()
    assert set(figs) == {"queries", "distances", "w", "repeat_fraction", "dist_p10", "dist_p50", "dist_p90",
                         "low_margin_fraction", "dist_rel_p50"}
    assert figs["queries"] == 500 and figs["distances"] == 100 and len(mon._seen[0]) == 8
    assert all(isinstance(v, float) for v in figs.values())
    assert 0.5 < figs["dist_rel_p50"] < 1.5  # i.i.d. normal inputs: the nearest of 8 is about as far as any


def test_attacks_flagged_and_natural_devices_not(victim) -> None:  # type: ignore[no-untyped-def]
    x, _, predict = victim
    base = ex.natural_baseline(x, predict(x))
    assert base is not None and 0 < base.low_margin_fraction < 0.1
    lo, hi = np.percentile(x, 1, 0), np.percentile(x, 99, 0) + 1e-3
    natural, flagged = [], {"random": [], "jacobian": [], "boundary": []}
    for s in range(5):
        rng = np.random.default_rng(s)
        # drifted natural streams too: gain, offset and extra noise keep the geometry of natural inputs
        for pool, noise in ((x, 0.05), (x * 1.5, 0.05), (x + 0.2, 0.05), (x, 0.3)):
            natural.append(ex.assess(f"n{s}", _figures(attacks.natural(pool, 600, rng, noise), predict), baseline=base))
        seed = x[rng.choice(len(x), 30, replace=False)]
        flagged["random"].append(ex.assess("r", _figures(attacks.random_probe(lo, hi, 600, rng), predict),
                                           baseline=base))
        flagged["jacobian"].append(ex.assess("j", _figures(
            attacks.jacobian_augmented(seed, predict, 10, 600, rng), predict), baseline=base))
        flagged["boundary"].append(ex.assess("b", _figures(attacks.boundary_seeking(seed, predict, 600, rng),
                                                           predict), baseline=base))
    assert not any(v.suspected for v in natural), [v.reasons for v in natural if v.suspected]
    for kind, verdicts in flagged.items():
        assert sum(v.suspected for v in verdicts) >= 4, kind
        assert all(v.decision == "suspected-extraction" and v.reasons for v in verdicts if v.suspected)


def test_uncertain_natural_answers_are_drift_not_an_attack(victim) -> None:  # type: ignore[no-untyped-def]
    """A less sure model (or drift) answers natural inputs with low margins: only probing geometry flags."""
    x, _, predict = victim

    def unsure(batch: np.ndarray) -> np.ndarray:  # the same classifier, far less confident
        p = predict(batch) ** 0.15
        return p / p.sum(1, keepdims=True)

    base = ex.natural_baseline(x, unsure(x))
    assert base is not None and base.low_margin_fraction > 0.3
    rng = np.random.default_rng(0)
    drifted = _figures(attacks.natural(x * 1.3 + 0.1, 600, rng), unsure)
    assert drifted["low_margin_fraction"] > 0.3  # the old absolute 12 % rule called this an attack
    for b in (base, None):
        v = ex.assess("honest", drifted, baseline=b)
        assert not v.suspected, v.reasons
    lo, hi = np.percentile(x, 1, 0), np.percentile(x, 99, 0) + 1e-3
    probe = _figures(attacks.random_probe(lo, hi, 600, rng), unsure)
    v = ex.assess("prober", probe, baseline=base)
    assert v.suspected and "wider than natural inputs" in v.reasons[0]
    assert probe["dist_rel_p50"] > 1.3 * base.dist_rel_p50 and drifted["dist_rel_p50"] < 1.3 * base.dist_rel_p50


def test_low_margin_counts_only_with_geometry_and_above_the_models_own_share() -> None:
    base = ex.QueryBaseline(low_margin_fraction=0.08, dist_rel_p50=0.5, n=500)
    figs: dict[str, float | None] = {"distances": 900.0, "w": 0.98, "repeat_fraction": 0.0,
                                     "low_margin_fraction": 0.3, "dist_rel_p50": 0.52}
    assert not ex.assess("d", figs, baseline=base).suspected  # natural geometry: uncertainty is drift
    assert not ex.assess("d", figs).suspected  # no baseline: low margins alone never flag
    wide = ex.assess("d", {**figs, "dist_rel_p50": 0.9}, baseline=base)
    assert wide.suspected and "30 % low-margin answers > 24 % (the model's natural share is 8.0 %)" in wide.reasons[0]
    assert ex.assess("d", {**figs, "dist_rel_p50": 0.2}, baseline=base).reasons[0].endswith(
        "queries crowd together, 0.40x the natural spacing: boundary or random probing")
    assert not ex.assess("d", {**figs, "low_margin_fraction": 0.2, "dist_rel_p50": 0.9}, baseline=base).suspected
    assert not ex.assess("d", {**figs, "dist_rel_p50": None}, baseline=base).suspected  # an older agent
    both = ex.assess("d", {**figs, "w": 0.8})  # W is a probing sign alone; low margins then corroborate
    assert both.suspected and len(both.reasons) == 2 and "no natural baseline" in both.reasons[1]


def test_reference_profile_carries_the_baseline_and_old_profiles_still_load() -> None:
    from tinymlops.monitor.reference import ReferenceProfile, compute_reference

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    probs = np.tile([0.6, 0.3, 0.1], (400, 1))
    held = np.tile([0.4, 0.35, 0.25], (100, 1))
    ref = compute_reference(x, probs, list("abcd"), ["x", "y", "z"], calibration=(held, np.zeros(100, int)))
    assert ref.queries is not None and ref.queries.low_margin_fraction == 1.0 and ref.queries.n == 400
    old = ref.model_dump()
    del old["queries"]
    assert ReferenceProfile.model_validate(old).queries is None


def test_too_few_queries_is_never_a_verdict() -> None:
    v = ex.assess("d", {"distances": 50.0, "w": 0.1, "low_margin_fraction": 0.9})
    assert not v.suspected and "only 50 query distances" in v.reasons[0]


def test_sketch_carries_the_figures_and_the_check_names_the_device() -> None:
    from tinymlops.monitor.drift import DeviceReport
    from tinymlops.monitor.reference import compute_reference
    from tinymlops.monitor.sketches import Sketch, SketchBuilder
    from tinymlops.monitor.verdict import Verdict

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    probs = np.full((300, 3), 1 / 3)
    ref = compute_reference(x, probs, ["a", "b", "c", "d"], ["x", "y", "z"])
    honest, prober = SketchBuilder(ref), SketchBuilder(ref)
    for i in range(400):
        honest.add(rng.normal(size=4), np.array([0.9, 0.05, 0.05]), 1.0, float(i))
        prober.add(np.round(rng.normal(size=4)), np.array([0.4, 0.35, 0.25]), 1.0, float(i))  # repeats, low margin
    sk_h, sk_p = honest.flush(), prober.flush()
    wire = Sketch.model_validate_json(sk_p.model_dump_json())  # what the service stores and the check reads
    assert wire.extraction is not None and wire.extraction.queries == 400
    assert sk_h.merge(sk_p).extraction is None  # per device, never merged
    with pytest.raises(ValueError):
        Sketch.model_validate({**sk_p.model_dump(), "extraction": {**sk_p.extraction.model_dump(), "w": 7}})
    base = Verdict(level="retrain", reasons=["feature drift"], model="m", version="1", n_inferences=800,
                   n_devices=2, features=[], checks=[], summary={})
    reports = [DeviceReport("honest", sk_h, "1"), DeviceReport("prober", wire, "1")]
    v = ex.judge_reports(base, reports)
    assert v.level == "suspected-extraction" and v.summary["devices_suspected_extraction"] == 1
    assert v.reasons[0].startswith("device prober:") and "feature drift" in v.reasons
    assert [c.name for c in v.checks if c.kind == "extraction"] == ["prober"]
    assert ex.judge_reports(base, reports[:1]) is base
