"""MLflow server mode: ``tinymlops server mlflow`` on a PostgreSQL backend store with proxied artifacts.

The pipeline's train and compress stages run as CLI processes against the server over HTTP
(``MLFLOW_TRACKING_URI=http://...``); ``variants`` and ``lineage`` read the versions back; the artifacts sit in
``--artifacts-destination`` (clients only see ``mlflow-artifacts:/`` URIs); the Host header a compose service
uses (``mlflow:PORT``) is accepted and an unknown one refused.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _postgres  # noqa: E402

pytestmark = _postgres.marks()
MODEL = "it-server"
CONFIG = {
    "kind": "pipeline",
    "project": "vibration-server-test",
    "mlflow": {"experiment": "it-server", "registered_model": MODEL},
    "dataset": {"name": "vibration", "seed": 3, "vibration": {"windows_per_class": 60}},
    "preprocessing": {"features": "spectral", "bands": 8},
    "model": {"arch": "mlp", "params": {"hidden": [16]}},
    "train": {"epochs": 4, "early_stopping_patience": 0},
    "stages": ["train", "compress"],
    "compress": {"variants": [{"technique": "ptq-int8", "representative_samples": 50}]},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """PostgreSQL + `tinymlops server mlflow` on it; yields the URL, the artifact dir and a client env."""
    import httpx

    from tinymlops.sim.command import product_command

    tmp = tmp_path_factory.mktemp("mlflow-server")
    artifacts = tmp / "artifacts"
    with _postgres.postgres_server() as pg:
        backend = _postgres.create_database(pg, "mlflow")
        port = _free_port()
        env = {**os.environ, "TINYMLOPS_HOME": str(tmp / "server-home")}
        env.pop("MLFLOW_TRACKING_URI", None)
        proc = subprocess.Popen([*product_command("server", "mlflow"), "--backend-store-uri", backend,
                                 "--artifacts-destination", str(artifacts), "--port", str(port),
                                 "--allowed-host", "mlflow", "--workers", "1"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(900):
                assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()[-3000:]
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            client_env = {**os.environ, "MLFLOW_TRACKING_URI": url, "TINYMLOPS_HOME": str(tmp / "client-home")}
            yield {"url": url, "port": port, "artifacts": artifacts, "env": client_env, "tmp": tmp}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    from tinymlops.sim.command import product_command

    return subprocess.run([*product_command(*args)], env=env, capture_output=True, text=True, timeout=timeout)


def test_allowed_hosts_accept_the_compose_name_and_refuse_others(server: dict[str, Any]) -> None:
    import httpx

    api = f"{server['url']}/api/2.0/mlflow/experiments/search"
    ok = httpx.post(api, json={"max_results": 1}, headers={"Host": f"mlflow:{server['port']}"})
    assert ok.status_code == 200, ok.text
    assert httpx.post(api, json={"max_results": 1}, headers={"Host": "127.0.0.1"}).status_code == 200
    bad = httpx.post(api, json={"max_results": 1}, headers={"Host": "attacker.example:80"})
    assert bad.status_code == 403


def test_train_and_compress_over_http_then_read_versions_and_lineage(server: dict[str, Any]) -> None:
    env, tmp = server["env"], server["tmp"]
    cfg = tmp / "pipeline.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    r = _cli(env, "train", "-c", str(cfg), "--no-prefect", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli(env, "compress", "-c", str(cfg), "--version", "1", "--no-prefect", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli(env, "variants", MODEL, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout)["versions"]
    assert {str(v["variant"]) for v in rows} >= {"float32", "ptq-int8"}, rows
    int8 = next(v for v in rows if v["variant"] == "ptq-int8")
    r = _cli(env, "lineage", MODEL, str(int8["version"]), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    chain = json.loads(r.stdout)["chain"]
    assert [step["step"] for step in chain] == ["dataset", "train_run", "parent_version", "variant"]
    assert chain[2]["version"] == "1" and chain[3]["variant"] == "ptq-int8"
    # proxied artifacts: the files are in the server's destination, the client home holds no artifact store
    stored = [p for p in server["artifacts"].rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in stored), stored[:20]
    assert not (Path(env["TINYMLOPS_HOME"]) / "mlartifacts").exists() or not any(
        (Path(env["TINYMLOPS_HOME"]) / "mlartifacts").rglob("*.json"))
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server["url"])
    exp = client.get_experiment_by_name("it-server")
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:/")
