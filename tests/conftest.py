"""Shared fixtures: an isolated project home (MLflow store, fleet DB, keys) and one Prefect test harness."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TINYMLOPS_HOME (and so the embedded MLflow store) at a fresh directory for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("TINYMLOPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tinymlops import registry

    registry.connect()
    return home


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project home shared by a whole test session (for expensive stores built once)."""
    home = tmp_path_factory.mktemp("session-home")
    old = os.environ.get("TINYMLOPS_HOME")
    os.environ["TINYMLOPS_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("TINYMLOPS_HOME", None)
    else:
        os.environ["TINYMLOPS_HOME"] = old


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run flows against one temporary Prefect server for the whole session."""
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    """Close every matplotlib figure a test left open (pyplot keeps them: 20+ open is a warning, an error here)."""
    yield
    import sys

    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")
