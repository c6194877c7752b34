"""Fan-out on Dask: compression variants and version x board profiling as mapped tasks on a DaskTaskRunner
(a LocalCluster of worker processes here) give the same results as the thread pool / the sequential profile.

Boards are microcontrollers only: their figures are estimates and TFLM-measured arenas, deterministic; host-timed
boards would differ by timing noise, not by where the task ran.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

MODEL = "it-fanout"
BOARDS = ["nucleo-l4r5zi", "arduino-nano-33-ble-sense"]
DASK = {"task_runner": "dask", "workers": 2}


def _config(tmp: Path, execution: dict[str, Any] | None) -> str:
    cfg: dict[str, Any] = {
        "kind": "pipeline", "project": "fanout-test",
        "mlflow": {"experiment": "it-fanout", "registered_model": MODEL},
        "dataset": {"name": "vibration", "seed": 4, "vibration": {"windows_per_class": 40}},
        "preprocessing": {"features": "spectral", "bands": 8},
        "model": {"arch": "mlp", "params": {"hidden": [16]}},
        "train": {"epochs": 3, "early_stopping_patience": 0},
        "compress": {"variants": [{"technique": "ptq-int8", "representative_samples": 50}, {"technique": "fp16"}]},
        "profile": {"targets": BOARDS},
        "stages": ["train", "compress", "profile"],
    }
    if execution:
        cfg["execution"] = execution
    path = tmp / ("pipeline-dask.yaml" if execution else "pipeline.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> tuple[Path, dict[str, Any]]:
    home = tmp_path_factory.mktemp("fanout-home")
    os.environ["TINYMLOPS_HOME"] = str(home)
    from flows.train import train_flow

    return home, train_flow(_config(home, None))


def _variants(summary: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {v["variant"]: (v["status"], v["accuracy"], v["size_bytes"], v["format"]) for v in summary["variants"]}


def test_compress_on_dask_matches_the_thread_pool(trained: tuple[Path, dict[str, Any]]) -> None:
    from flows.compress import compress_flow

    home, out = trained
    threads = compress_flow(_config(home, None), out["version"])
    dask = compress_flow(_config(home, DASK), out["version"])
    assert _variants(dask) == _variants(threads)
    assert {v["status"] for v in dask["variants"]} == {"registered"}
    assert {v["version"] for v in dask["variants"]}.isdisjoint({v["version"] for v in threads["variants"]})


def test_profile_cells_on_dask_match_the_sequential_profile(trained: tuple[Path, dict[str, Any]]) -> None:
    from flows.profile import profile_flow
    from tinymlops.profile.matrix import run_profile

    sequential = run_profile(MODEL, targets=BOARDS, experiment="it-fanout")
    on_dask = profile_flow(MODEL, None, BOARDS, "it-fanout", execution=DASK)
    assert on_dask["versions"] == sequential.versions and len(on_dask["versions"]) >= 3

    for board in BOARDS:
        a, b = on_dask["targets"][board], sequential.targets[board]
        for k in ("recommended_version", "variant", "accuracy", "latency_ms", "energy_uj", "peak_ram_bytes",
                  "flash_bytes", "pareto_versions", "feasible_versions"):
            assert a[k] == b[k], (board, k, a[k], b[k])
