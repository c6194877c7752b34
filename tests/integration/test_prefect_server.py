"""Prefect server mode, as an operator runs it: `prefect server start`, a process work pool, `prefect deploy --all`
from prefect.yaml, a worker, both deployments run to completion with their artifacts.

The deployments' parameters name the MLflow store and the fleet database (resolved from the environment at deploy
time): the worker below has neither in its environment, so the runs can only find them through the parameters.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")
MODEL = "it-prefect-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "TINYMLOPS_"))}
    env.update(PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PREFECT_LOGGING_LEVEL="WARNING", TF_USE_LEGACY_KERAS="1",
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A real Prefect server on loopback (its own SQLite database; the scheduler off: runs start on demand)."""
    tmp = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = _base_env(tmp)
    server_env = {**env, "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("prefect server did not start:\n" + (tmp / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    env["PREFECT_API_URL"] = api
    try:
        yield tmp, env
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


def _run(cmd: list[str], env: dict[str, str], cwd: Path = REPO, timeout: float = 300) -> str:
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} -> {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _project(tmp: Path) -> tuple[Path, Path]:
    """A small pipeline config (train + compress) and a drift config for the same model."""
    pipeline = {
        "kind": "pipeline", "project": "prefect-server-test",
        "mlflow": {"experiment": "it-prefect-server", "registered_model": MODEL},
        "dataset": {"name": "vibration", "seed": 5, "vibration": {"windows_per_class": 40}},
        "preprocessing": {"features": "spectral", "bands": 8},
        "model": {"arch": "mlp", "params": {"hidden": [16]}},
        "train": {"epochs": 3, "early_stopping_patience": 0},
        "compress": {"variants": [{"technique": "ptq-int8", "representative_samples": 50}]},
        "stages": ["train", "compress"],
    }
    drift = yaml.safe_load((REPO / "configs" / "drift.yaml").read_text())
    drift["experiment"] = "it-prefect-server-drift"
    drift["retrain"] = {"enabled": False}
    (tmp / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    (tmp / "drift.yaml").write_text(yaml.safe_dump(drift))
    return tmp / "pipeline.yaml", tmp / "drift.yaml"


def _flow_runs(api: str, deployment_name: str) -> list[dict]:
    deps = httpx.post(f"{api}/deployments/filter", json={"deployments": {"name": {"any_": [deployment_name]}}},
                      timeout=30).json()
    assert len(deps) == 1, deps
    return httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [deps[0]["id"]]}}},
                      timeout=30).json()


def test_deploy_all_and_a_worker_run_both_deployments(server: tuple[Path, dict[str, str]]) -> None:
    tmp, env = server
    api = env["PREFECT_API_URL"]
    pipeline_cfg, drift_cfg = _project(tmp)
    mlflow_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    fleet_db = f"sqlite:///{tmp / 'fleet.db'}"

    _run([PREFECT, "work-pool", "create", "tinymlops", "--type", "process"], env)
    # deploy as an operator would, from the repository, with the stores named in the environment
    deploy_env = {**env, "MLFLOW_TRACKING_URI": mlflow_uri, "TINYMLOPS_FLEET_DB": fleet_db}
    _run([PREFECT, "--no-prompt", "deploy", "--all"], deploy_env)
    deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
    by_name = {d["name"]: d for d in deps}
    assert set(by_name) == {"drift-hourly", "pipeline-weekly"}
    assert by_name["drift-hourly"]["parameters"]["tracking_uri"] == mlflow_uri
    assert by_name["drift-hourly"]["parameters"]["store_url"] == fleet_db
    assert by_name["pipeline-weekly"]["parameters"]["tracking_uri"] == mlflow_uri

    # the worker knows neither store: TINYMLOPS_HOME points at an empty directory
    worker_env = {**env, "TINYMLOPS_PROJECT_DIR": str(REPO), "TINYMLOPS_HOME": str(tmp / "worker-home")}
    _run([PREFECT, "deployment", "run", "pipeline/pipeline-weekly", "--param", f"config_path={pipeline_cfg}"], env)
    _run([PREFECT, "worker", "start", "--pool", "tinymlops", "--run-once"], worker_env, timeout=600)
    _run([PREFECT, "deployment", "run", "drift/drift-hourly", "--param", f"model={MODEL}",
          "--param", f"config_path={drift_cfg}"], env)
    _run([PREFECT, "worker", "start", "--pool", "tinymlops", "--run-once"], worker_env, timeout=600)

    for name in ("pipeline-weekly", "drift-hourly"):
        runs = _flow_runs(api, name)
        assert [r["state_type"] for r in runs] == ["COMPLETED"], (name, [(r["name"], r["state"]) for r in runs])
    artifacts = httpx.post(f"{api}/artifacts/filter", json={}, timeout=30).json()
    keys = {a["key"] for a in artifacts if a.get("key")}
    assert "pipeline-summary" in keys, keys
    assert f"drift-{MODEL}" in keys and f"drift-{MODEL}-report" in keys, keys

    # the runs used the stores the parameters named: the model and its drift checks are in that MLflow store
    check = subprocess.run([sys.executable, "-c", (
        "import json, mlflow\n"
        f"c = mlflow.MlflowClient({mlflow_uri!r})\n"
        f"vs = c.search_model_versions(\"name='{MODEL}'\")\n"
        "exps = [e.name for e in c.search_experiments()]\n"
        "print(json.dumps({'versions': len(vs), 'experiments': exps}))")],
        env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
    found = json.loads(check.stdout.strip().splitlines()[-1])
    assert found["versions"] >= 2  # float32 + ptq-int8
    assert {"it-prefect-server", "it-prefect-server-drift"} <= set(found["experiments"])
    assert not (tmp / "worker-home" / "mlflow.db").exists()  # nothing fell back to the worker's own store
    assert (tmp / "fleet.db").exists()  # the drift check opened the fleet database it was given
    shutil.rmtree(tmp / "prefect-home" / "storage", ignore_errors=True)
