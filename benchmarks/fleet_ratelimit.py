"""How many failed authentications a guesser gets before 429, with `fleet serve --workers N` (per-worker buckets).

Starts `tinymlops fleet serve` on a fresh SQLite fleet per worker count, sends guessed device credentials on a new
connection each (so the kernel spreads them over the workers, the attacker's best case) and prints how many were
answered 403 (a guess evaluated) before every answer is 429, and the ratio to the single-worker figure.

    .venv/bin/python benchmarks/fleet_ratelimit.py [--workers 1 2 4] [--guesses 400]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tinymlops.sim.command import product_command
from tinymlops.sim.demo import free_port


def measure(workers: int, guesses: int) -> tuple[int, int, float]:
    """Return (guesses evaluated, 429 answers, seconds) for one server with ``workers`` processes."""
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        env = {**os.environ, "TINYMLOPS_HOME": d}
        proc = subprocess.Popen(product_command("fleet", "serve", "--db", f"sqlite:///{Path(d) / 'f.db'}",
                                                "--port", str(port), "--workers", str(workers)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("fleet service did not start")
                time.sleep(0.3)
            time.sleep(1.0)  # every worker up
            evaluated = limited = 0
            t0 = time.perf_counter()
            for i in range(guesses):
                r = httpx.get(f"{url}/v1/devices/d/desired-state",  # a new connection per guess
                              headers={"Authorization": f"Bearer tmo_dev_guess{i}"}, timeout=10)
                evaluated += r.status_code == 403
                limited += r.status_code == 429
            return evaluated, limited, time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--guesses", type=int, default=300)
    args = ap.parse_args()
    base = None
    for n in args.workers:
        evaluated, limited, secs = measure(n, args.guesses)
        base = base or evaluated
        print(f"workers={n}: {evaluated} guesses evaluated, {limited} answered 429 of {args.guesses} "
              f"in {secs:.1f} s ({evaluated / base:.2f}x one worker)")


if __name__ == "__main__":
    main()
