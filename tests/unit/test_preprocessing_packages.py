"""A registered version whose pre-processing has a custom block, through the real MLflow registry and fleet
packaging: packaged for a Linux-class target with its source (the agent runs it without the module installed);
refused for a microcontroller target, naming the block, before anything is signed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tinymlops.errors import UsageError
from tinymlops.preprocessing import FittedPreprocessing, PreprocessingSection, fit, transform

_BLOCK = "import numpy as np\n\ndef rms_per_axis(X, floor=0.0):\n    return np.sqrt((X ** 2).mean(axis=1)) + floor\n"


def _register(tmp_path: Path, spec: FittedPreprocessing, features: np.ndarray) -> str:
    from tinymlops import registry
    from tinymlops.compress.export import write_package
    from tinymlops.monitor.reference import compute_reference

    probs = np.tile([0.7, 0.3], (len(features), 1))
    reference = compute_reference(features, probs, spec.feature_names, ["a", "b"]).model_dump(mode="json")
    preprocessing = spec.model_dump(mode="json")

    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3-not-run-by-packaging")
    manifest = {"preprocessing": preprocessing, "class_names": ["a", "b"], "variant": "ptq-int8", "format": "tflite",
                "input": {"shape": [1, 3], "dtype": "float32"}, "output": {"shape": [1, 2], "dtype": "float32"},
                "reference": reference}
    with registry.run("unit-pp", "ptq-int8") as ref:
        registry.log_artifact(ref.run_id, write_package(tmp_path / "package", model, manifest), "package")
    return registry.register_version("ppm", ref.run_id, {"variant": "ptq-int8", "train_run_id": ref.run_id}, "t")


def test_custom_block_travels_to_linux_and_is_refused_for_an_mcu(tmp_path: Path, tm_home: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymlops.fleet import packages
    from tinymlops.fleet.answers import checked_specs

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pp_unit_blocks.py").write_text(_BLOCK)
    X = np.random.default_rng(0).normal(size=(12, 64, 3))
    spec = fit(PreprocessingSection(blocks=[{"block": "pp_unit_blocks:rms_per_axis", "params": {"floor": 0.5}},
                                            "standardize"]), X, project_dir=proj)
    version = _register(tmp_path, spec, transform(spec, X))

    bundle = packages.build_package("ppm", version, "raspberry-pi-4")
    manifest = packages.verify_package(bundle, [packages.signing_key().public_key()], "raspberry-pi-4")
    assert [b["block"] for b in manifest["preprocessing"]["blocks"]] == ["pp_unit_blocks:rms_per_axis", "standardize"]
    (proj / "pp_unit_blocks.py").unlink()
    sys.modules.pop("pp_unit_blocks", None)
    device_spec, _ = checked_specs(manifest)  # what the agent does before installing
    assert np.array_equal(transform(device_spec, X), transform(spec, X))

    with pytest.raises(UsageError, match="package for nucleo-l4r5zi: pre-processing block "
                                         "'pp_unit_blocks:rms_per_axis' runs only on Linux-class targets"):
        packages.build_package("ppm", version, "nucleo-l4r5zi")
