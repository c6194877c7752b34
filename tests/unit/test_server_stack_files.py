"""Server-stack files and ``tinymlops server mlflow``: regression tests for what issue 13 found.

The old Dockerfile copied neither flows/ nor prefect.yaml (run/train/compress/schedule could not work in the
image), had no .dockerignore (the context carried .venv and .tinymlops), one image for everything, psycopg
unpinned; the compose file's MLflow server had no --allowed-hosts (403 for Host: mlflow:5000).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]


def test_allowed_hosts_cover_loopback_and_each_name_with_any_port() -> None:
    from cli.server import allowed_hosts

    hosts = allowed_hosts(["mlflow", "mlflow.example.com:443"]).split(",")
    assert {"localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", "mlflow", "mlflow:*",
            "mlflow.example.com:443"} <= set(hosts)
    assert "mlflow.example.com:443:*" not in hosts


def test_server_mlflow_prints_the_production_command(tmp_path: Path, monkeypatch) -> None:
    from cli import app

    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path))
    r = CliRunner().invoke(app, ["server", "mlflow", "--print-command", "--backend-store-uri",
                                 "postgresql+psycopg://u@db/mlflow", "--allowed-host", "mlflow"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    for part in ("mlflow server", "--backend-store-uri postgresql+psycopg://u@db/mlflow", "--serve-artifacts",
                 f"--artifacts-destination {tmp_path / 'mlartifacts'}", "mlflow:*"):
        assert part in out, part


def test_server_mlflow_bad_backend_is_a_one_line_usage_error(tmp_path: Path, monkeypatch) -> None:
    from cli import app

    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path))
    r = CliRunner().invoke(app, ["server", "mlflow", "--backend-store-uri", "not-a-url"])
    assert r.exit_code == 2 and "not-a-url" in r.output and "Traceback" not in r.output


def test_compose_mlflow_allows_its_service_name_and_uses_postgres() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    cmd = compose["services"]["mlflow"]["command"]
    assert cmd[:3] == ["tinymlops", "server", "mlflow"]
    assert cmd[cmd.index("--allowed-host") + 1] == "mlflow"
    assert cmd[cmd.index("--backend-store-uri") + 1].startswith("postgresql+psycopg://")
    assert "--artifacts-destination" in cmd
    fleet = compose["services"]["fleet"]["command"]
    assert fleet[fleet.index("--db") + 1].startswith("postgresql+psycopg://")
    assert compose["services"]["agent"]["build"]["target"] == "agent"


def test_dockerfile_copies_flows_and_prefect_yaml_and_has_two_images() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=" in text and "FROM ${BASE_IMAGE}" in text
    assert "COPY flows" in text and "COPY prefect.yaml" in text
    assert "AS server" in text and "AS agent" in text
    ignore = [ln for ln in (REPO / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ignore[0] == "*" and "!.venv" not in ignore and "!.tinymlops" not in ignore


def test_agent_extra_has_no_heavy_framework_and_psycopg_is_pinned() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    agent = " ".join(project["optional-dependencies"]["agent"]).lower()
    assert "onnxruntime" in agent and "ai-edge-litert" in agent
    for heavy in ("tensorflow", "mlflow", "prefect", "evidently", "pandas", "scikit-learn"):
        assert heavy not in agent
    pins = (REPO / "constraints.txt").read_text().splitlines()
    assert any(p.startswith("psycopg==") for p in pins) and any(p.startswith("psycopg-binary==") for p in pins)
