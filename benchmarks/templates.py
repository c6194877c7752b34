"""Each `tinymlops init` template's project runs train -> compress -> profile in <= 4 min on 2 cores.

For every template: scaffold a fresh project in a temporary directory, then run `tinymlops run --json` in it as a
user would (its own `.tinymlops/` store and Prefect home, the template's own config and epochs, no environment
overrides) and print the wall-clock time per stage (train, compress, profile, as each stage measures itself) and
the rest (process start-up, Prefect's temporary server, MLflow bookkeeping), the total against the bar, and the
float / int8 test accuracy. ``cpu_s`` (CPU seconds of the run) and ``load`` (1-minute load average at its end)
tell a slow host from a slow run: on a shared machine the wall clock includes waiting for the CPU.

Usage: python benchmarks/templates.py [TEMPLATE ...]   (default: all four)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BAR_S = 240.0


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of the finished child processes: what the run cost, however busy the host."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_template(template: str, work: Path) -> dict[str, float | str]:
    """Scaffold ``template`` under ``work`` and time `tinymlops run` in it."""
    from tinymlops.templates import scaffold

    proj = work / template
    t0 = time.perf_counter()
    scaffold(proj, template)
    init_s = time.perf_counter() - t0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYMLOPS_", "MLFLOW_", "PREFECT_"))}
    exe = Path(sys.executable).with_name("tinymlops")
    cpu0 = _children_cpu_s()
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), "run", "--json"], cwd=proj, env=env, capture_output=True, text=True)
    total_s = time.perf_counter() - t0
    cpu_s = _children_cpu_s() - cpu0
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"template": template, "error": f"exit {res.returncode}: {tail[0][:200]}", "total_s": total_s}
    out = json.loads(res.stdout)
    train_s = float(out["train"]["duration_s"])
    compress_s = float(out["compress"]["seconds"])
    profile_s = float(out["profile"]["seconds"])
    int8 = [v for v in out["compress"]["variants"] if v.get("variant") == "ptq-int8"]
    if not (proj / ".tinymlops" / "mlflow.db").is_file():
        return {"template": template, "error": "the run did not use the project's own .tinymlops/ store",
                "total_s": total_s}
    return {"template": template, "init_s": init_s, "train_s": train_s, "compress_s": compress_s,
            "profile_s": profile_s, "other_s": total_s - train_s - compress_s - profile_s, "total_s": total_s,
            "cpu_s": cpu_s, "load": os.getloadavg()[0],
            "accuracy": float(out["train"]["metrics"]["test_accuracy"]),
            "int8_accuracy": float(int8[0]["accuracy"]) if int8 and int8[0].get("accuracy") is not None else -1.0}


def main(argv: list[str]) -> int:
    from tinymlops.templates import TEMPLATES

    templates = argv or list(TEMPLATES)
    unknown = [t for t in templates if t not in TEMPLATES]
    if unknown:
        print(f"unknown template(s) {', '.join(unknown)}; expected {', '.join(TEMPLATES)}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tinymlops-bench-templates-"))
    print(f"{os.cpu_count()} CPUs; projects under {work}; bar: train -> compress -> profile <= {BAR_S:.0f} s")
    print(f"{'template':<11} {'init_s':>6} {'train_s':>7} {'compress_s':>10} {'profile_s':>9} {'other_s':>7} "
          f"{'total_s':>7} {'of bar':>6} {'cpu_s':>6} {'load':>5} {'acc':>6} {'int8':>6}  result")
    ok = True
    try:
        for template in templates:
            r = run_template(template, work)
            if "error" in r:
                ok = False
                print(f"{template:<11} FAIL after {r['total_s']:.1f} s: {r['error']}")
                continue
            passed = float(r["total_s"]) <= BAR_S
            ok &= passed
            print(f"{template:<11} {r['init_s']:>6.1f} {r['train_s']:>7.1f} {r['compress_s']:>10.1f} "
                  f"{r['profile_s']:>9.1f} {r['other_s']:>7.1f} {r['total_s']:>7.1f} "
                  f"{float(r['total_s']) / BAR_S:>6.0%} {r['cpu_s']:>6.1f} {r['load']:>5.1f} {r['accuracy']:>6.1%} "
                  f"{r['int8_accuracy']:>6.1%}  "
                  f"{'PASS' if passed else 'FAIL'}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
