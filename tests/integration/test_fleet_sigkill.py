"""Crash safety: SIGKILL the agent process at random points of download/install; it always restarts valid."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tinymlops.fleet import agent, packages, service, store
from tinymlops.sim import demo_model
from tinymlops.sim.command import product_command

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TRIALS = 51
PARALLEL = 3
PAD_BYTES = 3_000_000  # large enough that download + fsync + rename take tens of milliseconds


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fleet-kill")
    (root / "targets").mkdir()
    (root / "targets" / "gw.yaml").write_text("name: gw\nruntime: onnxruntime\ncore: cortex-a72\nclock_mhz: 1500\nsram_bytes: 4000000000\nflash_bytes: 32000000000\nactive_power_mw: 3000\n")
    st = store.open_store(f"sqlite:///{root / 'fleet.db'}")
    op_token = service.create_operator_token(st)
    server = service.BackgroundServer(st, poll_interval_s=0.2).start()
    op = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {op_token}"})
    (root / "keys").mkdir()
    key = packages.signing_key(root / "keys")
    manifest = demo_model.build_demo_package(root / "pkg", model_name="kill", pad_bytes=PAD_BYTES)
    artifact = (root / "pkg" / "model.onnx").read_bytes()
    ids = []
    for v in ("1", "2"):
        b = packages.sign({**manifest, "model_version": v, "target": "gw", "runtime": "onnxruntime"}, artifact, key)
        ids.append(op.post("/v1/packages", json=b.upload_json()).json()["id"])
    yield root, server, op, key, ids
    op.close()
    server.stop()


def _agent_cmd(root: Path, url: str, device_id: str, token: str | None, max_reports: int | None = None) -> list[str]:
    cmd = [*product_command("agent"), "--server", url,
           "--device-id", device_id, "--target", "gw", "--state-dir", str(root / "dev" / device_id),
           "--trusted-key", str(root / "keys" / packages.PUBLIC_KEY_FILE), "--targets-dir", str(root / "targets"),
           "--report-interval", "0.2", "--inference-interval", "0.01", "-v"]
    if token:
        from tinymlops.sim.simulator import write_token_file

        cmd += ["--enrolment-token-file", str(write_token_file(root / "dev" / device_id, token))]
    if max_reports:
        cmd += ["--max-reports", str(max_reports)]
    return cmd


def _wait_for(proc: subprocess.Popen, needle: str, timeout_s: float = 30.0) -> float:
    """Read the agent's log until a line contains ``needle``; return when it was seen."""
    assert proc.stderr is not None
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"agent exited (code {proc.wait()}) before logging {needle!r}")
        if needle in line:
            return time.monotonic()
    raise AssertionError(f"agent did not log {needle!r} within {timeout_s}s")


def _check_valid(state_dir: Path, key, ids: list[str]) -> str:
    """Do what the agent does at start-up and require a verified model that loads and runs."""
    st = agent.InstallState(state_dir, [key.public_key()], "gw")
    installed = st.recover()
    assert installed is not None, f"{state_dir}: no valid model after the kill"
    assert installed.package_id in ids
    runner = agent.open_model(installed, "onnxruntime")
    try:
        agent.smoke_test(runner, installed.manifest)
    finally:
        runner.close()
    assert list((state_dir / "staging").iterdir()) == []
    return installed.package_id


def test_sigkill_during_download_or_install_always_leaves_a_valid_model(setup) -> None:
    root, server, op, key, ids = setup
    t0 = time.monotonic()
    devices = [f"kill-{i}" for i in range(PARALLEL)]
    tokens = op.post("/v1/enrolment-tokens", json={"cohort": "kill", "count": PARALLEL}).json()["tokens"]
    op.put("/v1/desired-state", json={"package_id": ids[0], "cohort": "kill"}).raise_for_status()

    # first start: enrol and install package 1 completely; time an install to spread the kills over it
    install_s = []
    for did, tok in zip(devices, tokens, strict=True):
        p = subprocess.Popen(_agent_cmd(root, server.url, did, tok), stderr=subprocess.PIPE, text=True,
                             stdout=subprocess.DEVNULL)
        try:
            t_dl = _wait_for(p, "downloading package")
            install_s.append(_wait_for(p, "installed package") - t_dl)
        finally:
            p.kill()
            p.wait()
        assert _check_valid(root / "dev" / did, key, ids) == ids[0]
    window_s = 1.5 * max(install_s)
    outcomes: dict[str, int] = {"old": 0, "new": 0}
    lock = threading.Lock()
    rng = random.Random(5)

    def trials(did: str, n: int) -> None:
        current = ids[0]
        for _ in range(n):
            target = ids[1] if current == ids[0] else ids[0]
            op_local = httpx.Client(base_url=server.url, headers=op.headers)
            op_local.put("/v1/desired-state", json={"package_id": target, "device_ids": [did]}).raise_for_status()
            op_local.close()
            p = subprocess.Popen(_agent_cmd(root, server.url, did, None), stderr=subprocess.PIPE, text=True,
                                 stdout=subprocess.DEVNULL)
            try:
                _wait_for(p, "downloading package")
                with lock:
                    delay = rng.uniform(0, window_s)
                time.sleep(delay)
                os.kill(p.pid, signal.SIGKILL)
            finally:
                p.wait()
            now = _check_valid(root / "dev" / did, key, ids)
            with lock:
                outcomes["new" if now == target else "old"] += 1
            current = now

    per = -(-TRIALS // PARALLEL)
    with ThreadPoolExecutor(PARALLEL) as pool:
        for f in [pool.submit(trials, d, per) for d in devices]:
            f.result()
    assert outcomes["old"] + outcomes["new"] >= 50
    assert outcomes["old"] > 0  # kills landed before the commit point too, not only after it

    # a normal restart after all that: the agent runs its model and reports
    did = devices[0]
    p = subprocess.run(_agent_cmd(root, server.url, did, None, max_reports=1), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    dev_row = op.get(f"/v1/devices/{did}").json()
    assert dev_row["current_package_id"] in ids
    print(f"SIGKILL trials: {outcomes}, install window {window_s * 1000:.0f} ms, "
          f"{time.monotonic() - t0:.0f} s")
