"""Architecture boundaries: the library never imports Prefect; light modules never import heavy frameworks."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "tinymlops"
HEAVY = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "tf2onnx", "evidently", "prefect")

#: modules that must import fast: config, gates, sketches, fleet API models, registry, CLI start-up
LIGHT = [
    "tinymlops.config", "tinymlops.cli", "tinymlops.registry", "tinymlops.preprocessing", "tinymlops.data",
    "tinymlops.monitor.reference", "tinymlops.monitor.sketches", "tinymlops.runtimes", "tinymlops.metrics",
    "tinymlops.fleet.api", "tinymlops.fleet.store", "tinymlops.fleet.agent", "tinymlops.rollout.gates",
    "tinymlops.rollout.config", "tinymlops.monitor.verdict", "tinymlops.monitor.config", "tinymlops.monitor.drift",
    "tinymlops.profile.targets",
]


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # parent package not there
        return False


def test_library_never_imports_prefect() -> None:
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if re.search(r"^\s*(import prefect|from prefect)", p.read_text(), re.M)]
    assert offenders == []


def test_light_modules_do_not_import_heavy_frameworks() -> None:
    present = [m for m in LIGHT if _exists(m)]
    assert "tinymlops.cli" in present and "tinymlops.config" in present
    code = (f"import sys\nfor m in {present!r}:\n    __import__(m)\n"
            f"print([h for h in {HEAVY!r} if h in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
