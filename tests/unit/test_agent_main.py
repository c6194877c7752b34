"""``tinymlops-agent``: a real agent process serves a signed package from a real fleet service and loads none of
the CLI's or the server's frameworks; usage errors exit 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.fleet import packages, service, store

#: what a serving agent must never load: the CLI (typer/rich/click, and pygments through rich), the server side
#: (FastAPI, SQLAlchemy, MLflow, Prefect), the ML frameworks, and the simulator
FORBIDDEN = {"typer", "rich", "click", "pygments", "cli", "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic",
             "mlflow", "prefect", "tensorflow", "tf_keras", "evidently", "pandas", "sklearn", "tinymlops.sim",
             "tinymlops.registry", "tinymlops.fleet.service", "tinymlops.fleet.store"}
#: runs the command's entry point like its console script; at exit writes the loaded modules as one JSON line
PROBE = ("import atexit, json, sys\n"
         "atexit.register(lambda: sys.stderr.write('MODULES ' + json.dumps(sorted(sys.modules)) + '\\n'))\n"
         "from tinymlops.fleet.agent_main import main\n"
         "sys.argv[0] = 'tinymlops-agent'\n"
         "sys.exit(main())\n")
TARGET = "host-onnxruntime"


def _agent(args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _modules(stderr: str) -> set[str]:
    line = next(ln for ln in stderr.splitlines() if ln.startswith("MODULES "))
    return set(json.loads(line.removeprefix("MODULES ")))


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fleet service on SQLite with a signed ONNX package of the demo model deployed to cohort `edge`."""
    from tinymlops.sim.demo_model import build_demo_package

    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path / "home"))
    src = build_demo_package(tmp_path / "pkg", n_train=200)
    key = Ed25519PrivateKey.generate()
    manifest = {k: src[k] for k in ("schema", "model_name", "variant", "format", "file", "class_names",
                                     "preprocessing", "input", "output", "reference", "metrics")}
    bundle = packages.sign({**manifest, "model_version": "1", "target": TARGET, "runtime": "onnxruntime"},
                           (tmp_path / "pkg" / src["file"]).read_bytes(), key)
    (tmp_path / "trusted.pub").write_bytes(packages.public_key_pem(key.public_key()))
    st = store.open_store(f"sqlite:///{tmp_path / 'fleet.db'}")
    srv = service.BackgroundServer(st, poll_interval_s=0.2).start()
    try:
        with httpx.Client(base_url=srv.url, headers={
                "Authorization": f"Bearer {service.create_operator_token(st)}"}) as op:
            pid = op.post("/v1/packages", json=bundle.upload_json()).raise_for_status().json()["id"]
            token = op.post("/v1/enrolment-tokens", json={"cohort": "edge"}).raise_for_status().json()["tokens"][0]
            op.put("/v1/desired-state", json={"package_id": pid, "cohort": "edge"}).raise_for_status()
            yield srv.url, pid, token, tmp_path
    finally:
        srv.stop()


#: what the agent image's ENV sets (docker/Dockerfile): the agent path must not depend on docstrings or asserts
OPTIMIZED = {"PYTHONOPTIMIZE": "2", "PYTHONNODEBUGRANGES": "1"}


@pytest.mark.parametrize("flags", [{}, OPTIMIZED], ids=["default", "optimized-as-in-the-image"])
def test_agent_serves_a_package_loading_only_what_it_needs(fleet: Any, flags: dict[str, str]) -> None:
    from tinymlops.data.config import VibrationParams
    from tinymlops.data.vibration import stream

    url, pid, token, tmp = fleet
    windows = tmp / "sensor.jsonl"
    it = stream(VibrationParams(), seed=3)
    windows.write_text("".join(json.dumps({"values": next(it)[0].tolist()}) + "\n" for _ in range(20)))
    out = _agent(["--server", url, "--device-id", "dev-1", "--target", TARGET, "--input", str(windows),
                  "--trusted-key", str(tmp / "trusted.pub"), "--state-dir", str(tmp / "device"),
                  "--report-interval", "0.2", "--inference-interval", "0.01"],
                 env={"TINYMLOPS_ENROLMENT_TOKEN": token, **flags})
    assert out.returncode == 0, out.stderr[-3000:]
    # the whole finite input was served by the installed package, and the agent said so in one line
    assert "dev-1: " in out.stderr and "20 inferences" in out.stderr and f"running {pid}" in out.stderr
    loaded = _modules(out.stderr)
    tops = {m.split(".")[0] for m in loaded} | {m for m in loaded if m.startswith("tinymlops.")}
    assert FORBIDDEN & tops == set()
    # of the runtimes, only the one the target names
    assert "onnxruntime" in tops and "ai_edge_litert" not in tops and "tflite_micro" not in tops


@pytest.mark.parametrize(("args", "message"), [
    (["--device-id", "d"], "the following arguments are required: --target, --input"),
    (["--device-id", "d", "--target", TARGET, "--input", "synthetic"], "--input synthetic is the simulator's"),
    (["--device-id", "d", "--target", TARGET, "--input", "-", "--report-interval", "0.01"],
     "--report-interval: 0.01 is below the minimum 0.05"),
    (["--device-id", "d", "--target", TARGET, "--input", "-", "--max-reports", "x"], "'x' is not an integer"),
    (["--device-id", "d", "--target", "no-such-board", "--input", "-"], "unknown target 'no-such-board'"),
    (["--device-id", "d", "--target", TARGET, "--input", "-", "--trusted-key", "/nonexistent.pub"],
     "/nonexistent.pub: public key file not found"),
    (["--device-id", "d", "--target", TARGET, "--input", "-", "--enrolment-token-file", "/nonexistent"],
     "/nonexistent: enrolment token file not found"),
])
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    out = _agent(args, env={"TINYMLOPS_HOME": str(tmp_path)})
    assert out.returncode == 2, out.stderr
    errors = [ln for ln in out.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in out.stderr


def test_help_teaches_inputs_exit_codes_and_examples() -> None:
    out = _agent(["--help"])
    assert out.returncode == 0
    for text in ("--input", "unix:PATH", "tcp:HOST:PORT", "TINYMLOPS_ENROLMENT_TOKEN", "exit codes:", "130/143",
                 "examples:", "--ca-cert"):
        assert text in out.stdout
    assert "--drift-gain" not in out.stdout  # the simulator's options belong to python -m tinymlops.sim.agent
