"""Load + validate + split + digest a 1,000,000-row x 20-feature table from CSV and Parquet against the quality bars.

Bars (issue 11): CSV <= 30 s and <= 2 GB peak RSS on 2 cores; the same table as Parquet <= 10 s.
The data (20 float features, a 5-class string label, a session column for the group split) is generated into a
temporary directory; each measurement runs in a fresh Python process so that its peak RSS is the load's alone
(the import-only peak is printed too).
Usage: python benchmarks/data.py [--rows N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARS_S = {"csv": 30.0, "parquet": 10.0}
MAX_RSS_BYTES = 2 * 1024**3
N_FEATURES = 20


def generate(directory: Path, rows: int) -> dict[str, Path]:
    """Write the same seeded table as CSV and Parquet; return their paths."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, rows)
    cols = {f"f{j:02d}": (rng.standard_normal(rows) + 0.3 * label * (j % 3)).astype(np.float64)
            for j in range(N_FEATURES)}
    cols["session"] = rng.integers(0, 500, rows)
    cols["label"] = np.array(["idle", "cut", "drill", "mill", "fault"])[label]
    table = pa.table(cols)
    paths = {"csv": directory / "table.csv", "parquet": directory / "table.parquet"}
    pcsv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    return paths


def peak_rss_bytes() -> int:
    """Return this process's peak RSS (VmHWM: unlike ru_maxrss it does not inherit the parent's peak at fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(fmt: str, path: str, strategy: str) -> dict[str, float]:
    """Load, validate, split and digest in this process; return seconds and peak RSS (call in a fresh process)."""
    from tinymlops.data import load_splits
    from tinymlops.data.config import DatasetSection

    def cpu_s() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process (pyarrow reads in parallel)
        return ru.ru_utime + ru.ru_stime

    before = peak_rss_bytes()
    section = DatasetSection.model_validate({
        "name": "bench", "source": fmt, "path": path, "label": "label",
        "features": [f"f{j:02d}" for j in range(N_FEATURES)],
        "split": {"strategy": strategy, **({"by": "session"} if strategy == "group" else {})}})
    t0, c0 = time.perf_counter(), cpu_s()
    splits = load_splits(section)
    digests = {k: v.digest() for k, v in splits.items()}
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cpu_seconds": cpu_s() - c0, "peak_rss_bytes": peak_rss_bytes(),
            "import_rss_bytes": before, "rows": sum(len(v.y) for v in splits.values()), "digests": len(digests)}


def _child(fmt: str, path: Path, strategy: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--measure", fmt, str(path), strategy],
                         capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--measure", nargs=3, metavar=("FMT", "PATH", "STRATEGY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0
    ok = True
    with tempfile.TemporaryDirectory(prefix="tinymlops-bench-data-") as tmp:
        t0 = time.perf_counter()
        paths = generate(Path(tmp), args.rows)
        sizes = {k: p.stat().st_size for k, p in paths.items()}
        print(f"generated {args.rows:,} rows x {N_FEATURES} features (+ label, session) in "
              f"{time.perf_counter() - t0:.1f} s: csv {sizes['csv'] / 1e6:.0f} MB, parquet {sizes['parquet'] / 1e6:.0f} MB")
        print(f"load average before measuring: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} "
              "cores (wall seconds grow with other load; CPU seconds much less)")
        print(f"{'format':<8} {'split':<11} {'seconds':>8} {'cpu_s':>6} {'bar_s':>6} {'time/bar':>9} {'peak_rss_MB':>12} "
              f"{'import_MB':>10} {'rss/bar':>8}  result")
        for fmt in ("csv", "parquet"):
            for strategy in ("stratified", "group"):
                r = _child(fmt, paths[fmt], strategy)
                passed = r["seconds"] <= BARS_S[fmt] and r["peak_rss_bytes"] <= MAX_RSS_BYTES
                assert r["rows"] == args.rows, r
                ok &= passed
                print(f"{fmt:<8} {strategy:<11} {r['seconds']:>8.2f} {r['cpu_seconds']:>6.2f} {BARS_S[fmt]:>6.0f} "
                      f"{r['seconds'] / BARS_S[fmt]:>9.2f} {r['peak_rss_bytes'] / 2**20:>12.0f} "
                      f"{r['import_rss_bytes'] / 2**20:>10.0f} {r['peak_rss_bytes'] / MAX_RSS_BYTES:>8.2f}  "
                      f"{'PASS' if passed else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
