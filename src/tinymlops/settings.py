"""Where things live: the project-local home, the MLflow store and Prefect's home.

Embedded defaults keep everything under ``.tinymlops/`` in the working directory; environment variables switch
to servers (``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL``) or move the home (``TINYMLOPS_HOME``).
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Return the project-local state directory, creating it if needed."""
    path = Path(os.environ.get("TINYMLOPS_HOME", ".tinymlops")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def tracking_uri(configured: str | None = None) -> str:
    """Resolve the MLflow tracking URI: environment, then config, then the embedded SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    return f"sqlite:///{home() / 'mlflow.db'}"


def artifact_root() -> Path:
    """Return the local artifact root used with the embedded store."""
    path = home() / "mlartifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_environment() -> None:
    """Set process-wide defaults before TensorFlow or Prefect are imported (idempotent)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    os.environ.setdefault("PREFECT_HOME", str(home() / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # the temporary server's first-start analytics insert races its migrations on SQLite ("database is locked")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
