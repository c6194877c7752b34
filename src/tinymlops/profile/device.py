"""Real-device runners: a target may name a command that measures a model on the board itself.

Contract (documented in the README): the target YAML declares

    runner:
      kind: command
      command: "python tools/flash_and_time.py --port /dev/ttyACM0 {model}"   # {model}, {target} substituted
      timeout_s: 300

The command is run without a shell; it must exit 0 and print ONE JSON object on stdout (other lines are
ignored only if they come before it):

    {"latency_ms": 12.3,            # required: median latency of one inference on the device
     "latency_p95_ms": 12.9,        # optional
     "energy_uj": 410.0,            # optional: measured energy per inference
     "peak_ram_bytes": 51200,       # optional: measured RAM (e.g. arena used + stack high-water mark)
     "arena_bytes": 48000,          # optional: TFLM arena actually used
     "flash_bytes": 180000,         # optional: firmware + model size
     "samples": 100,                # optional
     "device": "serial or board id"}  # optional

Measured figures replace the estimates and are labelled ``device-measured``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

from tinymlops.errors import RuntimeCrash
from tinymlops.profile.targets import CommandRunner

NUMERIC_FIELDS = ("latency_ms", "latency_p95_ms", "energy_uj", "peak_ram_bytes", "arena_bytes", "flash_bytes",
                  "samples")


def parse_output(stdout: str, where: str) -> dict[str, Any]:
    """Parse and validate a runner's stdout against the contract (RuntimeCrash if it does not follow it)."""
    obj = None
    for line in reversed([ln.strip() for ln in stdout.splitlines() if ln.strip()]):
        try:
            obj = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if obj is None:
        try:
            obj = json.loads(stdout)
        except json.JSONDecodeError:
            raise RuntimeCrash(f"{where}: output is not a JSON object: {stdout.strip()[:200]!r}") from None
    if not isinstance(obj, dict):
        raise RuntimeCrash(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "latency_ms" not in obj:
        raise RuntimeCrash(f"{where}: JSON output lacks the required 'latency_ms'")
    out: dict[str, Any] = {}
    for k in NUMERIC_FIELDS:
        if k in obj and obj[k] is not None:
            v = obj[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise RuntimeCrash(f"{where}: {k!r} must be a non-negative number, got {v!r}")
            out[k] = float(v) if k.endswith(("_ms", "_uj")) else int(v)
    if "device" in obj:
        out["device"] = str(obj["device"])
    return out


def run_command(runner: CommandRunner, model: str | Path, target: str) -> dict[str, Any]:
    """Run a target's device command on a model and return the measured figures."""
    argv = [a.replace("{model}", str(model)).replace("{target}", target) for a in shlex.split(runner.command)]
    where = f"device runner of target {target!r} ({argv[0]})"
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=runner.timeout_s, text=True,
                              env={**os.environ, **runner.env})
    except FileNotFoundError:
        raise RuntimeCrash(f"{where}: command not found") from None
    except subprocess.TimeoutExpired:
        raise RuntimeCrash(f"{where}: timed out after {runner.timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeCrash(f"{where}: exit code {proc.returncode}: {tail[0][:300]}")
    return parse_output(proc.stdout, where)
