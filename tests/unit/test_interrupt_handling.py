"""The CLI's signal handling on a small real process: stubborn children are killed, a second Ctrl-C exits at once.

No TensorFlow or Prefect here (tests/integration/test_interrupts.py signals the real commands): the process runs
``cli._interrupts.interruptible()`` around a busy main thread and a child that ignores SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = textwrap.dedent("""
    import subprocess, sys, time
    from cli._interrupts import interruptible
    with interruptible():
        child = subprocess.Popen(["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"])
        print(child.pid, flush=True)
        while True:
            sum(range(10000))  # a busy main thread
""")


def _start(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "TINYMLOPS_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    time.sleep(0.5)
    return proc, child


def _gone(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_stubborn_children_and_exits(tmp_path: Path, sig: int, code: int) -> None:
    proc, child = _start(tmp_path)
    t0 = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    elapsed = time.monotonic() - t0
    assert proc.returncode == code, err
    assert 1.5 < elapsed < 8, elapsed  # waited for the child to obey SIGTERM, then SIGKILLed it
    assert _gone(child)
    name = signal.Signals(sig).name
    lines = err.strip().splitlines()  # the shell and, unless between two loop iterations, its sleep
    assert len(lines) == 1 and re.fullmatch(rf"interrupted \({name}\): stopped [12] child process\(es\)", lines[0]), err


def test_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    proc, child = _start(tmp_path)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    # the first cleanup waits 2 s for the stubborn child before it ends with "interrupted (SIGINT): stopped ...":
    # the second Ctrl-C ended the process before that (a wall-clock bound would only measure the machine's load)
    assert err.strip().splitlines()[-1:] == ["interrupted again: exiting now"], err
    assert "interrupted (SIGINT)" not in err
    assert time.monotonic() - t0 < 8
    time.sleep(0.2)
    assert _gone(child)
