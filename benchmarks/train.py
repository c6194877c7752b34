"""Train both demo tasks and print accuracy and training time against the quality bars.

Bars (issue "Foundation"): digits >= 97 % test accuracy, vibration >= 95 %, each <= 60 s of training on 2 cores.
Usage: python benchmarks/train.py   (uses a throw-away MLflow store)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BARS = {"vibration": 0.95, "digits": 0.97}
MAX_TRAIN_S = 60.0


def main() -> int:
    os.environ["TINYMLOPS_HOME"] = tempfile.mkdtemp(prefix="tinymlops-bench-train-")
    from tinymlops.config import load_pipeline
    from tinymlops.train import run_train

    ok = True
    print(f"{'task':<10} {'accuracy':>9} {'macro_f1':>9} {'bar':>6} {'train_s':>8} {'stage_s':>8}  result")
    for name in ("pipeline.yaml", "digits.yaml"):
        cfg = load_pipeline(REPO / "configs" / name)
        res = run_train(cfg)
        acc, f1, fit_s = res.metrics["test_accuracy"], res.metrics["test_macro_f1"], res.metrics["train_seconds"]
        bar = BARS[cfg.dataset.name]
        passed = acc >= bar and fit_s <= MAX_TRAIN_S
        ok &= passed
        print(f"{cfg.dataset.name:<10} {acc:>9.2%} {f1:>9.3f} {bar:>6.0%} {fit_s:>8.1f} {res.duration_s:>8.1f}  "
              f"{'PASS' if passed else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
