"""Shared set-up of fleet integration tests: product processes with their stderr collected, and a project home
with a real fleet service and the registered demo model."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
_ENV_KEYS = ("TINYMLOPS_HOME", "MLFLOW_TRACKING_URI", "TINYMLOPS_TARGETS_DIR")


def until(what: Callable[[], T], timeout_s: float = 60.0) -> T:
    """Poll ``what`` every 0.2 s until it returns something truthy; return that, or fail after ``timeout_s``."""
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        got = what()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout_s}s")


#: a Linux gateway target (onnxruntime) for services that need one in their --targets-dir
GW_TARGET = ("name: gw\nruntime: onnxruntime\ncore: cortex-a72\nclock_mhz: 1500\nsram_bytes: 4000000000\n"
             "flash_bytes: 32000000000\nactive_power_mw: 3000\n")


def write_gw_target(targets: Path) -> Path:
    """Write ``gw.yaml`` (:data:`GW_TARGET`) into ``targets`` (created); return the directory."""
    targets.mkdir(parents=True, exist_ok=True)
    (targets / "gw.yaml").write_text(GW_TARGET)
    return targets


class Proc:
    """A product process whose stderr is collected by a thread (so waiting on a log line never blocks it)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.lines.append(line)

    def wait_for(self, needle: str, timeout_s: float = 60.0) -> str:
        """Return the first log line containing ``needle`` (AssertionError with the log if none comes in time)."""
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            hit = next((x for x in self.lines if needle in x), None)
            if hit:
                return hit
            assert self.p.poll() is None, f"exited {self.p.returncode} before {needle!r}:\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} within {timeout_s}s:\n{self.log()}")

    def stop(self) -> str:
        """SIGTERM the process (if still running), wait for it and return the end of its log."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=30)
        time.sleep(0.1)
        return self.log()

    def log(self) -> str:
        return "".join(self.lines)[-6000:]


def serve_fleet(db: str, env: dict[str, str], *args: str, port: int | None = None,
                timeout_s: float = 90.0) -> tuple[Proc, str, str]:
    """Start ``tinymlops fleet serve --db DB`` on loopback (a free port unless given) with ``env`` (its
    TINYMLOPS_HOME gets the operator token) and extra ``args``; wait until it answers /healthz.

    Returns (process, base URL, operator token); the caller stops the process (``Proc.stop``).
    """
    import httpx

    from tinymlops.sim.command import product_command
    from tinymlops.sim.demo import free_port

    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc([*product_command("fleet", "serve"), "--db", db, "--port", str(port), *args], env)
    token_file = Path(env["TINYMLOPS_HOME"]) / "fleet" / "operator-token"

    def healthy() -> bool:
        assert proc.p.poll() is None, f"fleet serve exited {proc.p.returncode}:\n{proc.log()}"
        try:
            return token_file.is_file() and httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        until(healthy, timeout_s)
    except BaseException:
        proc.stop()
        raise
    return proc, url, token_file.read_text().strip()


def demo_fleet(root: Path, model: str) -> Iterator[dict[str, Any]]:
    """Yield a project home under ``root`` with a fleet service (in-process) and ``model`` registered (demo model).

    The dict holds root, st (the store), url (its SQLite URL), token (operator), srv and version. The process
    environment (home, tracking URI, target catalogue) is restored afterwards.
    """
    from tinymlops import registry
    from tinymlops.fleet import service, store
    from tinymlops.sim import demo_model

    old = {k: os.environ.get(k) for k in _ENV_KEYS}
    os.environ["TINYMLOPS_HOME"] = str(root / "home")
    os.environ["TINYMLOPS_TARGETS_DIR"] = str(REPO / "src" / "tinymlops" / "profile" / "boards")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        registry.connect()
        url = f"sqlite:///{root / 'fleet.db'}"
        st = store.open_store(url)
        token = service.create_operator_token(st)
        srv = service.BackgroundServer(st, poll_interval_s=0.3).start()
        try:
            yield {"root": root, "st": st, "url": url, "token": token, "srv": srv,
                   "version": demo_model.register_demo_model(model)}
        finally:
            srv.stop()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
