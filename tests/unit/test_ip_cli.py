"""tinymlops ip: usage errors exit 2 with one line; nothing is looked up before the arguments make sense."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app


@pytest.mark.parametrize(("args", "message"), [
    (["ip", "verify", "x.tflite"], "--model is required"),
    (["ip", "verify", "--model", "m"], "give exactly one suspect"),
    (["ip", "verify", "x.tflite", "--model", "m", "--endpoint", "http://127.0.0.1:1/"], "give exactly one suspect"),
    (["ip", "trace", "leak.tflite"], "--model is required"),
])
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_help_teaches_the_commands() -> None:
    r = CliRunner().invoke(app, ["ip", "verify", "--help"])
    assert r.exit_code == 0 and "p-value" in r.output and "--endpoint" in r.output and "--callable" in r.output


def test_trace_of_a_missing_or_foreign_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    r = CliRunner().invoke(app, ["ip", "trace", str(tmp_path / "nope.tflite"), "--model", "m"])
    assert r.exit_code == 2 and "leaked model file not found" in r.output
    (tmp_path / "junk.tflite").write_bytes(b"\x00" * 64)
    r = CliRunner().invoke(app, ["ip", "trace", str(tmp_path / "junk.tflite"), "--model", "m"])
    assert r.exit_code == 2 and "not a TFLite flatbuffer" in r.output
