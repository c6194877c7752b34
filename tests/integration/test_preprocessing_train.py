"""Blocks through the real train stage: a custom block beside the config (found through the config's directory),
window_stats and standardize fitted on the training split, carried in the registered package, and applied on the
device path from the manifest alone, giving the features the model was evaluated on."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.integration

_BLOCKS = "def detrend(X):\n    return X - X.mean(axis=1, keepdims=True)\n"


def test_train_with_blocks_and_a_custom_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tinymlops import registry
    from tinymlops.preprocessing import FittedPreprocessing, transform
    from tinymlops.runtimes import open_runner
    from tinymlops.train import run_train

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "vib_blocks_it.py").write_text(_BLOCKS)
    cfg = {"kind": "pipeline", "project": "pp-blocks",
           "mlflow": {"experiment": "it-pp-blocks", "registered_model": "it-pp-blocks"},
           "dataset": {"name": "vibration", "seed": 3, "vibration": {"windows_per_class": 50}},
           "preprocessing": ["vib_blocks_it:detrend", {"block": "window_stats", "stats": ["std", "kurtosis", "crest"]},
                             "standardize"],
           "model": {"arch": "mlp", "params": {"hidden": [16]}},
           "train": {"epochs": 25, "early_stopping_patience": 0}, "stages": ["train"]}
    (proj / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    assert "vib_blocks_it" not in sys.modules and str(proj) not in sys.path

    res = run_train(proj / "pipeline.yaml")
    pkg = registry.download_package(res.model_name, res.version)
    manifest = registry.read_manifest(pkg)
    pp = manifest["preprocessing"]
    assert [b["block"] for b in pp["blocks"]] == ["vib_blocks_it:detrend", "window_stats", "standardize"]
    assert pp["feature_names"] == [f"ch{c}_{s}" for c in range(3) for s in ("std", "kurtosis", "crest")]
    assert manifest["input"]["shape"] == [1, 9]
    assert res.metrics["test_accuracy"] > 0.5  # 4 classes: the block features carry the signal

    # the device path: the manifest alone (the custom module gone), raw windows in
    (proj / "vib_blocks_it.py").unlink()
    sys.modules.pop("vib_blocks_it", None)
    device = FittedPreprocessing.model_validate(pp)
    raw = np.random.default_rng(5).normal(size=(7, *pp["raw_shape"])).astype(np.float32)
    feats = transform(device, raw)
    centred = raw - raw.mean(axis=1, keepdims=True)
    std = centred.std(axis=1)
    expected_std0 = (std[:, 0] - pp["blocks"][2]["mean"][0]) / pp["blocks"][2]["std"][0]
    np.testing.assert_allclose(feats[:, 0], expected_std0, rtol=1e-4, atol=1e-4)
    with open_runner(pkg / manifest["file"]) as r:
        assert r.predict(feats).shape == (7, 4)
