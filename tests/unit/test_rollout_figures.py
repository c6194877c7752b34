"""Stage figures: the fast merge over raw telemetry rows agrees with the sketch model's own merge and quantiles."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tinymlops.monitor.reference import CONFIDENCE_EDGES
from tinymlops.monitor.sketches import LATENCY_EDGES_MS, Sketch, merge_all
from tinymlops.rollout.figures import _Arm, confidence_midpoints, latency_quantile_ms


def random_sketch(rng: random.Random, n: int) -> Sketch:
    sk = Sketch(edges_digest="x", feature_counts=[[n]], nonfinite_counts=[0], prediction_counts=[0, 0, 0, 0],
                confidence_counts=[0] * (len(CONFIDENCE_EDGES) + 1))
    sk.n_inferences = n
    for _ in range(n):
        sk.prediction_counts[rng.randrange(4)] += 1
        sk.confidence_counts[rng.randrange(len(CONFIDENCE_EDGES) + 1)] += 1
        sk.latency_counts[rng.randrange(10, 40)] += 1
    sk.latency_max_ms = LATENCY_EDGES_MS[40]
    sk.errors = rng.randrange(3)
    return sk


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_arm_merge_matches_sketch_merge(seed: int):
    rng = random.Random(seed)
    sketches = [random_sketch(rng, rng.randrange(1, 60)) for _ in range(25)]
    arm = _Arm()
    mids = confidence_midpoints(CONFIDENCE_EDGES, 4)
    for i, sk in enumerate(sketches):
        arm.add(f"d{i % 7}", sk.model_dump(), mids, [{"prediction": 1, "label": 1}, {"prediction": 0, "label": 2}])
    fig = arm.figures()
    merged = merge_all(sketches)
    assert merged is not None
    assert fig.devices == 7 and fig.inferences == merged.n_inferences and fig.errors == merged.errors
    assert fig.prediction_counts == merged.prediction_counts
    assert fig.latency_p95_ms == merged.latency_quantile_ms(0.95)
    expected_conf = float(np.dot(merged.confidence_counts, mids)) / merged.n_inferences
    assert fig.confidence_mean == pytest.approx(expected_conf)
    assert fig.feedback_n == 50 and fig.feedback_correct == 25 and fig.accuracy == 0.5


def test_latency_quantile_of_empty_histogram_is_none():
    assert latency_quantile_ms(np.zeros(len(LATENCY_EDGES_MS) + 1), 0.0, 0.95) is None


def test_confidence_midpoints_span_one_over_c_to_one():
    mids = confidence_midpoints(CONFIDENCE_EDGES, 4)
    assert len(mids) == len(CONFIDENCE_EDGES) + 1
    assert mids[0] == pytest.approx((0.25 + 0.3) / 2) and mids[-1] == pytest.approx((0.99 + 1.0) / 2)
    assert np.all(np.diff(mids) > 0)
