"""Reference profiles and sketches: exact merges, bin compatibility, no raw values in what devices send."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinymlops.monitor.reference import bin_counts, compute_reference, quantile_edges
from tinymlops.monitor.sketches import IncompatibleSketch, Sketch, SketchBuilder, merge_all


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(1000, 3))
    probs = rng.dirichlet(np.ones(4), size=1000)
    return compute_reference(feats, probs, ["a", "b", "c"], ["w", "x", "y", "z"], bins=10)


def test_reference_bins_are_quantiles_with_open_ends(reference) -> None:
    f = reference.features[0]
    assert len(f.inner_edges) == 9 and sum(f.counts) == 1000
    assert max(f.counts) - min(f.counts) <= 2  # quantile bins are balanced on the reference
    assert bin_counts(f.inner_edges, np.array([-1e9, 1e9, np.nan])).tolist()[0] == 1
    assert quantile_edges(np.zeros(50), 10) == [0.0]  # constant feature: one distinct edge


def build(reference, values: np.ndarray, seed: int) -> Sketch:
    rng = np.random.default_rng(seed)
    b = SketchBuilder(reference)
    for i, v in enumerate(values):
        b.add(v, rng.dirichlet(np.ones(4)), latency_ms=float(rng.uniform(1, 3)), timestamp=100.0 + i,
              energy_uj=2.0, memory_bytes=1000 + i)
    return b.flush()


def test_merge_is_exact(reference) -> None:
    vals = np.random.default_rng(1).normal(size=(300, 3))
    whole = build(reference, vals, 7)
    parts = [build(reference, vals[:100], 7), build(reference, vals[100:], 8)]
    merged = merge_all(parts)
    assert merged is not None
    assert merged.feature_counts == whole.feature_counts
    assert merged.n_inferences == 300 and merged.energy_uj_total == pytest.approx(600.0)
    assert merged.peak_memory_bytes == max(p.peak_memory_bytes for p in parts)
    assert merged.window_start == 100.0 and merged.window_end == 100.0 + 199
    assert merge_all([]) is None


def test_nonfinite_values_are_counted_not_binned(reference) -> None:
    s = build(reference, np.array([[np.nan, 0.0, np.inf]]), 0)
    assert s.nonfinite_counts == [1, 0, 1]
    assert sum(s.feature_counts[0]) == 0 and sum(s.feature_counts[1]) == 1


def test_incompatible_bins_are_refused(reference) -> None:
    other = compute_reference(np.random.default_rng(5).normal(2, 1, size=(500, 3)),
                              np.random.default_rng(5).dirichlet(np.ones(4), size=500), ["a", "b", "c"],
                              ["w", "x", "y", "z"])
    a = build(reference, np.zeros((5, 3)), 0)
    b = build(other, np.zeros((5, 3)), 0)
    with pytest.raises(IncompatibleSketch):
        a.merge(b)


def test_latency_quantiles(reference) -> None:
    s = build(reference, np.zeros((200, 3)), 3)
    p50, p95 = s.latency_quantile_ms(0.5), s.latency_quantile_ms(0.95)
    assert 1.0 <= p50 <= p95 <= s.latency_max_ms <= 3.0
    assert Sketch.empty(reference).latency_quantile_ms(0.5) is None


def test_sketch_holds_no_raw_values(reference) -> None:
    raw = np.random.default_rng(9).normal(size=(50, 3)) * 1.2345678
    payload = json.dumps(build(reference, raw, 1).model_dump())
    for v in raw.ravel()[:50]:
        assert f"{v:.6f}"[:8] not in payload
