"""Fan-out on Dask (issue 13): speed-up of the compress and profile stages on a LocalCluster, per-task overhead.

1. Per-task overhead: N trivial mapped tasks in a flow on Prefect's thread pool vs a DaskTaskRunner (LocalCluster,
   2 worker processes): (wall time) / N, after one warm-up flow each.
2. The vibration demo's compress stage (configs/pipeline.yaml's variants) on the thread pool vs on Dask, and its
   profile stage (every version x every catalogue board) sequential vs on Dask, in a fresh store.

On 2 cores the ceiling is 2x and TensorFlow already uses both cores inside one variant, so expect little: Dask pays
off when the cluster has more cores than one machine (``execution: {task_runner: dask, address: tcp://...}``).

    .venv/bin/python benchmarks/fanout.py [--tasks 50] [--config configs/pipeline.yaml] [--overhead-only]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DASK = {"task_runner": "dask", "workers": 2}


def overhead(n: int) -> dict[str, float]:
    """Return seconds per trivial task on the thread pool and on Dask (LocalCluster, 2 processes)."""
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.runners import dask_runner

    @task
    def noop(i: int) -> int:
        return i

    @flow
    def fan(k: int) -> int:
        return sum(f.result() for f in noop.map(list(range(k))))

    out = {}
    for name, runner in (("threads", ThreadPoolTaskRunner(max_workers=2)), ("dask", dask_runner(DASK))):
        f = fan.with_options(task_runner=runner)
        f(2)  # warm-up: API, cluster start
        t0 = time.perf_counter()
        f(n)
        out[name] = (time.perf_counter() - t0) / n
    return out


def stages(config: Path, home: Path) -> dict[str, float]:
    """Return wall seconds of compress and profile on threads/sequential vs Dask for the demo config."""
    import yaml

    from flows.compress import compress_flow
    from flows.profile import profile_flow
    from flows.train import train_flow
    from tinymlops.config import load_pipeline
    from tinymlops.profile.matrix import run_profile

    raw = yaml.safe_load(config.read_text())
    raw["stages"] = ["train", "compress", "profile"]
    base, on_dask = home / "pipeline.yaml", home / "pipeline-dask.yaml"
    base.write_text(yaml.safe_dump(raw))
    on_dask.write_text(yaml.safe_dump({**raw, "execution": DASK}))
    cfg = load_pipeline(base)
    out = train_flow(str(base))
    times = {}
    t0 = time.perf_counter()
    compress_flow(str(base), out["version"])
    times["compress_threads_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    compress_flow(str(on_dask), out["version"])
    times["compress_dask_s"] = time.perf_counter() - t0
    model, targets = cfg.mlflow.registered_model, cfg.profile.targets
    t0 = time.perf_counter()
    seq = run_profile(model, targets=targets)
    times["profile_sequential_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    profile_flow(model, None, targets, execution=DASK)
    times["profile_dask_s"] = time.perf_counter() - t0
    times["profile_cells"] = float(len(seq.rows))
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "pipeline.yaml")
    ap.add_argument("--overhead-only", action="store_true", help="measure the per-task overhead only (~1 min)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tinymlops-fanout-") as tmp:
        os.environ["TINYMLOPS_HOME"] = tmp
        os.environ.setdefault("PREFECT_HOME", str(Path(tmp) / "prefect"))
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            per_task = overhead(args.tasks)
            print(f"per-task overhead ({args.tasks} trivial tasks): thread pool {1e3 * per_task['threads']:.1f} ms, "
                  f"Dask LocalCluster (2 processes) {1e3 * per_task['dask']:.1f} ms")
            if args.overhead_only:
                return 0
            t: dict[str, Any] = stages(args.config, Path(tmp))
    print(f"compress stage: thread pool {t['compress_threads_s']:.1f} s, Dask {t['compress_dask_s']:.1f} s "
          f"(speed-up {t['compress_threads_s'] / t['compress_dask_s']:.2f}x)")
    print(f"profile stage ({t['profile_cells']:.0f} version x board cells): sequential {t['profile_sequential_s']:.1f} s,"
          f" Dask {t['profile_dask_s']:.1f} s (speed-up {t['profile_sequential_s'] / t['profile_dask_s']:.2f}x)")
    print(f"cores: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
