"""Real processes, real signals and real inputs: `tinymlops fleet serve` and `tinymlops agent`.

* SIGINT/SIGTERM stop the service and the agent within 10 s with exit 130/143, no traceback, and leave the fleet
  database and the device's install state consistent (a signal during an install keeps a verified package);
* a real agent process infers on windows fed through its input source (a .npy file, stdin JSON lines, a Unix
  socket) and reports exactly those windows.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tinymlops.data import vibration
from tinymlops.data.config import VibrationParams
from tinymlops.fleet import agent, packages, service, store
from tinymlops.sim import demo_model
from tinymlops.sim.command import product_command

pytestmark = pytest.mark.integration
TARGET_YAML = ("name: gw\nruntime: onnxruntime\ncore: cortex-a72\nclock_mhz: 1500\nsram_bytes: 4000000000\n"
               "flash_bytes: 32000000000\nactive_power_mw: 3000\n")
LABEL = 2  # every window fed to the agents here is of this class


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("fleet-signals")
    (root / "targets").mkdir()
    (root / "targets" / "gw.yaml").write_text(TARGET_YAML)
    st = store.open_store(f"sqlite:///{root / 'fleet.db'}")
    op_token = service.create_operator_token(st)
    server = service.BackgroundServer(st, poll_interval_s=0.2).start()
    op = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {op_token}"})
    (root / "keys").mkdir()
    key = packages.signing_key(root / "keys")
    manifest = demo_model.build_demo_package(root / "pkg", model_name="sig", pad_bytes=2_000_000)
    artifact = (root / "pkg" / "model.onnx").read_bytes()
    ids = []
    for v in ("1", "2"):
        b = packages.sign({**manifest, "model_version": v, "target": "gw", "runtime": "onnxruntime"}, artifact, key)
        ids.append(op.post("/v1/packages", json=b.upload_json()).json()["id"])
    yield {"root": root, "st": st, "server": server, "op": op, "key": key, "ids": ids, "manifest": manifest}
    op.close()
    server.stop()


def _enrol(fleet: Any, cohort: str, package_id: str, feedback: bool = False) -> str:
    tok = fleet["op"].post("/v1/enrolment-tokens", json={"cohort": cohort, "feedback_opt_in": feedback}).json()
    fleet["op"].put("/v1/desired-state", json={"package_id": package_id, "cohort": cohort}).raise_for_status()
    return str(tok["tokens"][0])


def _agent(fleet: Any, device_id: str, token: str | None, *extra: str) -> list[str]:
    root = fleet["root"]
    cmd = [*product_command("agent"), "--server", fleet["server"].url, "--device-id", device_id, "--target", "gw",
           "--state-dir", str(root / "dev" / device_id), "--targets-dir", str(root / "targets"),
           "--trusted-key", str(root / "keys" / packages.PUBLIC_KEY_FILE), "--report-interval", "0.3",
           "--inference-interval", "0.005", "-v", *extra]
    from tinymlops.sim.simulator import write_token_file

    return cmd + (["--enrolment-token-file", str(write_token_file(root / "dev" / device_id, token))]
                  if token else [])


def _windows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([vibration.window(VibrationParams(), LABEL, rng) for _ in range(n)])


def _stop(p: subprocess.Popen, sig: int) -> tuple[int, float, str]:
    t0 = time.monotonic()
    p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return p.returncode, time.monotonic() - t0, err or ""


def _wait_line(p: subprocess.Popen, needle: str, timeout_s: float = 60) -> None:
    assert p.stderr is not None
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        line = p.stderr.readline()
        if not line:
            raise AssertionError(f"process exited ({p.wait()}) before logging {needle!r}")
        if needle in line:
            return
    raise AssertionError(f"no {needle!r} within {timeout_s} s")


def _reports(fleet: Any, device_id: str) -> list[store.TelemetryRecord]:
    return store.telemetry_window(fleet["st"], "sig", device_id=device_id)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_fleet_serve_stops_on_signal_with_its_exit_code(fleet: Any, tmp_path: Path, sig: int, code: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "serve.db"
    env = {**os.environ, "TINYMLOPS_HOME": str(tmp_path / "home")}
    p = subprocess.Popen([*product_command("fleet", "serve"), "--db", f"sqlite:///{db}", "--port", str(port),
                          "--targets-dir", str(fleet["root"] / "targets")], env=env, stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True)
    url = f"http://127.0.0.1:{port}"
    t_end = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert p.poll() is None and time.monotonic() < t_end, "service did not start"
        time.sleep(0.2)
    token = (tmp_path / "home" / "fleet" / "operator-token").read_text().strip()
    created = httpx.post(f"{url}/v1/enrolment-tokens", json={"cohort": "x", "count": 3},
                         headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert created.status_code == 201
    returncode, took_s, err = _stop(p, sig)
    assert returncode == code and took_s < 10, err
    assert "Traceback" not in err and f"exit {code}" in err
    reopened = store.open_store(f"sqlite:///{db}")  # consistent: opens, at head, holds what was committed
    with reopened.session() as s:
        assert s.query(store.EnrolmentToken).filter_by(cohort="x").count() == 3
    reopened.dispose()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_agent_stops_on_signal_mid_install_and_keeps_a_valid_model(fleet: Any, sig: int, code: int) -> None:
    did = f"sig-{code}"
    ids = fleet["ids"]
    token = _enrol(fleet, did, ids[0])
    p = subprocess.Popen(_agent(fleet, did, token, "--input", "synthetic"), stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True)
    _wait_line(p, "installed package")
    fleet["op"].put("/v1/desired-state", json={"package_id": ids[1], "device_ids": [did]}).raise_for_status()
    _wait_line(p, "downloading package")  # the signal lands during the download/install of package 2
    returncode, took_s, err = _stop(p, sig)
    assert returncode == code and took_s < 10, err
    assert "Traceback" not in err and f"exit {code}" in err
    state = agent.InstallState(fleet["root"] / "dev" / did, [fleet["key"].public_key()], "gw")
    installed = state.recover()
    assert installed is not None and installed.package_id in ids  # old or new, never a half-written one
    assert json.loads((state.root / "current.json").read_text())["current"] == installed.package_id


def test_agent_process_infers_on_a_npy_file_and_ends_with_it(fleet: Any) -> None:
    n = 40
    f = fleet["root"] / "windows.npy"
    np.save(f, _windows(n))
    token = _enrol(fleet, "npy-1", fleet["ids"][0], feedback=False)
    p = subprocess.run(_agent(fleet, "npy-1", token, "--input", str(f)), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    recs = _reports(fleet, "npy-1")
    assert sum(r.sketch.n_inferences for r in recs) == n  # every window once, then the agent stopped


def test_agent_process_reads_json_lines_on_stdin_with_labels(fleet: Any) -> None:
    n = 30
    token = _enrol(fleet, "stdin-1", fleet["ids"][0], feedback=True)
    lines = "".join(json.dumps({"values": w.tolist(), "label": LABEL}) + "\n" for w in _windows(n, seed=1))
    p = subprocess.run(_agent(fleet, "stdin-1", token, "--input", "-"), input=lines + "garbage\n",
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    recs = _reports(fleet, "stdin-1")
    assert sum(r.sketch.n_inferences for r in recs) == n and "is not a window" in p.stderr
    labels = [fb["label"] for r in recs for fb in (r.feedback or [])]
    assert labels and set(labels) == {LABEL}  # feedback labels are the ones the sensor sent


def test_agent_process_reads_a_unix_socket_sensor(fleet: Any, tmp_path: Path) -> None:
    n = 20
    path = str(tmp_path / "sensor.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def sensor() -> None:
        conn, _ = srv.accept()
        with conn:
            for w in _windows(n, seed=2):
                conn.sendall((json.dumps(w.tolist()) + "\n").encode())

    threading.Thread(target=sensor, daemon=True).start()
    token = _enrol(fleet, "sock-1", fleet["ids"][0])
    p = subprocess.run(_agent(fleet, "sock-1", token, "--input", f"unix:{path}"), capture_output=True, text=True,
                       timeout=120)
    srv.close()
    assert p.returncode == 0, p.stderr[-2000:]
    assert sum(r.sketch.n_inferences for r in _reports(fleet, "sock-1")) == n


def test_bad_input_is_a_one_line_usage_error(fleet: Any) -> None:
    p = subprocess.run(_agent(fleet, "bad-1", None, "--input", "/no/such/file.jsonl"), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "/no/such/file.jsonl" in p.stderr and "Traceback" not in p.stderr
