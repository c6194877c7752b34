"""Honest errors: one line naming the file or the store, exit 2 for missing files, 1 for store failures, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from cli._common import handle_errors
from tinymlops import registry

REPO = Path(__file__).resolve().parents[2]
EXE = shutil.which("tinymlops", path=str(Path(sys.executable).parent)) or "tinymlops"


def _cli(*args: str, home: Path, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env.update(TINYMLOPS_HOME=str(home), **env_extra)
    return subprocess.run([EXE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


def _app(fn: typer.models.CommandFunctionType) -> typer.Typer:
    app = typer.Typer()
    app.command()(handle_errors(fn))
    app.command("noop")(lambda: None)  # two commands: the test calls the first by name
    return app


def test_profile_missing_model_exits_2_naming_the_path(tmp_path: Path) -> None:
    res = _cli("profile", "--model", "nope.tflite", "--target", "host", home=tmp_path / "h")
    assert res.returncode == 2
    assert "nope.tflite" in res.stderr and "Traceback" not in res.stderr


def test_missing_file_anywhere_exits_2_with_the_path() -> None:
    def cmd() -> None:
        Path("/no/such/dir/model.onnx").read_bytes()

    res = CliRunner().invoke(_app(cmd), ["cmd"])
    assert res.exit_code == 2
    assert "/no/such/dir/model.onnx: file not found" in res.output
    assert "Traceback" not in res.output


def test_corrupt_store_is_one_line_before_prefect_starts(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "mlflow.db").write_bytes(b"this is not a database" * 100)
    res = _cli("train", "-c", str(REPO / "configs" / "digits.yaml"), home=home)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert str(home / "mlflow.db") in lines[0]
    assert not (home / "prefect").exists()  # refused before Prefect's temporary server started


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    res = _cli("variants", "some-model", home=tmp_path / "h", MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "http://127.0.0.1:9" in lines[0], res.stderr
    assert "Retry" not in res.stderr and "Traceback" not in res.stderr


def test_store_failure_mid_command_names_the_store_and_fails_the_run(tm_home: Path) -> None:
    from mlflow.exceptions import MlflowException

    opened: dict[str, str] = {}

    def cmd() -> None:
        opened["run"] = registry.start_run("exp-errors", "stage").run_id
        raise MlflowException("API request to endpoint /api/2.0/mlflow/runs/log-batch failed: connection refused\n"
                              "urllib3 details that nobody needs")

    res = CliRunner().invoke(_app(cmd), ["cmd"])
    assert res.exit_code == 1
    assert f"MLflow store {registry.tracking_uri()}: MlflowException: API request" in res.output
    assert "urllib3 details" not in res.output and "Traceback" not in res.output
    assert registry.get_run(opened["run"]).status == "FAILED"  # not left RUNNING


def test_prefect_failure_names_the_api() -> None:
    import httpx

    def cmd() -> None:
        raise httpx.ConnectError("All connection attempts failed")

    res = CliRunner().invoke(_app(cmd), ["cmd"], env={"PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    assert res.exit_code == 1
    assert "Prefect API (http://127.0.0.1:4200/api): ConnectError: All connection attempts failed" in res.output
