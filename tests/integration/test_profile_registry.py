"""Profiling the MLPerf Tiny reference models and a registered model end to end (TFLM, MLflow, Prefect)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TARGETS = Path(__file__).resolve().parents[2] / "src" / "tinymlops" / "profile" / "boards"
REFERENCE = {"kws": (22_604, 2.66e6), "ad": (265_864, 0.264e6)}


@pytest.fixture(scope="module")
def ref_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Int8 KWS DS-CNN and AD autoencoder built once (random weights, PTQ with random data)."""
    from tinymlops.profile.reference_models import export_reference_models

    return export_reference_models(tmp_path_factory.mktemp("mlperf"), ["kws", "ad"])


def test_reference_counts_arena_and_calibration(ref_models: dict[str, Path]) -> None:
    from tinymlops.profile.profiler import ProfileCache, profile_model
    from tinymlops.profile.targets import resolve_target

    board = resolve_target("nucleo-l4r5zi", TARGETS).model_copy(update={"runtime": "tflm-reference"})
    published_ms = {"kws": 181.9, "ad": 10.05}  # tflm-reference on this board, MLPerf Tiny v0.5
    cache = ProfileCache()
    for name, path in ref_models.items():
        r = profile_model(path, board, cache, measure_host=False)
        params, macs = REFERENCE[name]
        assert abs(r["macs"] / macs - 1) <= 0.02 and abs(r["params"] / params - 1) <= 0.02
        m = r["measured"]
        assert abs(m["tflm_arena_estimate_bytes"] / m["tflm_arena_bytes"] - 1) <= 0.05
        assert abs(r["latency_ms"] / published_ms[name] - 1) <= 0.15
        assert r["fits"] and r["sources"]["peak_ram_bytes"].startswith("tflm-measured")


def test_tflm_abort_becomes_fits_false_with_reason(tmp_path: Path) -> None:
    """MobileNetV1 with all-zero biases makes tflite-micro's Python interpreter SIGABRT: no crash, a reason."""
    from tinymlops.profile.profiler import ProfileCache, profile_model
    from tinymlops.profile.reference_models import build_reference, to_tflite_int8
    from tinymlops.profile.targets import resolve_target

    path = tmp_path / "vww_zero_bias.tflite"
    path.write_bytes(to_tflite_int8(build_reference("vww", random_bias=False), representative_samples=2))
    cache = ProfileCache()
    r = profile_model(path, resolve_target("nucleo-l4r5zi", TARGETS), cache, measure_host=False)
    assert r["fits"] is False
    assert any("TFLite Micro aborted" in x for x in r["reasons"])
    assert "SIGABRT" in r["measured"]["tflm_error"]
    assert r["estimated"]["arena_bytes"] > 0
    # a non-TFLM runtime is not judged by the TFLM interpreter
    assert profile_model(path, resolve_target("nucleo-h7a3zi-q", TARGETS), cache)["fits"] is True


def _register(model_name: str, path: Path, variant: str, accuracy: float, work: Path) -> str:
    from tinymlops import registry

    pkg = work / variant / "package"
    pkg.mkdir(parents=True)
    shutil.copy(path, pkg / "model.tflite")
    (pkg / "manifest.json").write_text(json.dumps({"file": "model.tflite", "variant": variant, "format": "tflite",
                                                   "metrics": {"accuracy": accuracy}}))
    with registry.run("profile-test", f"compress {variant}") as r:
        registry.log_metrics(r.run_id, {"accuracy": accuracy})
        registry.log_artifact(r.run_id, pkg, "package")
    return registry.register_version(model_name, r.run_id, {"variant": variant, "format": "tflite",
                                                            "task": "test"}, f"{variant} for the profile test")


def test_profile_flow_logs_metrics_tags_aliases_and_artifacts(
        ref_models: dict[str, Path], tm_home: Path, tmp_path: Path, prefect_harness: None) -> None:
    from flows.profile import profile_flow
    from tinymlops import registry

    small = tmp_path / "small-board.yaml"  # outside the catalogue: KWS firmware (~35 KB RAM) fits, AD does not
    small.write_text("kind: target\nname: small-board\ncore: cortex-m0plus\nclock_mhz: 48\nsram_bytes: 65536\n"
                     "flash_bytes: 196608\nruntime: tflm-reference\nactive_power_mw: 5\n")
    v_kws = _register("toy", ref_models["kws"], "ptq-int8", 0.91, tmp_path)
    v_ad = _register("toy", ref_models["ad"], "big-int8", 0.95, tmp_path)
    summary = profile_flow("toy", None, ["nucleo-l4r5zi", "raspberry-pi-pico", str(small)], "toy/profile")

    t = summary["targets"]
    assert t["nucleo-l4r5zi"]["recommended_version"] == v_ad        # both fit: higher accuracy wins
    assert t["small-board"]["recommended_version"] == v_kws         # AD's 318 KB do not fit 192 KB of flash
    assert set(t["small-board"]["feasible_versions"]) == {v_kws}
    assert str(registry.get_alias("toy", "candidate-nucleo-l4r5zi").version) == v_ad
    assert str(registry.get_alias("toy", "candidate-small-board").version) == v_kws
    mv = registry.get_version("toy", v_ad)
    assert mv.tags["fits.small-board"] == "false" and mv.tags["fits.nucleo-l4r5zi"] == "true"
    metrics = registry.get_run(mv.run_id).metrics
    assert metrics["nucleo-l4r5zi.latency_ms"] > 0 and metrics["small-board.fits"] == 0.0
    run = registry.get_run(summary["profile_run_id"])
    files = {f.path for f in registry.client().list_artifacts(run.run_id, "profile")}
    assert {"profile/matrix.csv", "profile/accuracy_vs_latency.png", "profile/summary.json"} <= files
    history = registry.alias_history("toy", "candidate-")
    assert {h.alias for h in history} >= {"candidate-nucleo-l4r5zi", "candidate-small-board"}
