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


#: where a command that built a fleet (the rollout demo) records its database, so later commands default to it
FLEET_POINTER = "fleet.json"


def fleet_db_choice(explicit: str | None = None) -> tuple[str, str]:
    """Return the fleet database URL every command opens by default, and why that one.

    Precedence: ``explicit`` (a ``--db`` flag), ``TINYMLOPS_FLEET_DB``, the fleet recorded in ``<home>/fleet.json``
    (written by the rollout demo; ignored when its SQLite file is gone), else ``<home>/fleet.db``.
    """
    import json

    if explicit:
        return explicit, "--db"
    if os.environ.get("TINYMLOPS_FLEET_DB"):
        return os.environ["TINYMLOPS_FLEET_DB"], "TINYMLOPS_FLEET_DB"
    pointer = home() / FLEET_POINTER
    try:
        rec = json.loads(pointer.read_text())
        url, by = str(rec["db"]), str(rec.get("recorded_by", "a previous command"))
    except (OSError, ValueError, KeyError, TypeError):
        url = ""
    if url and (not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).is_file()):
        return url, f"recorded in {pointer} by {by}"
    return f"sqlite:///{home() / 'fleet.db'}", "default"


def fleet_db_url(explicit: str | None = None) -> str:
    """Return the fleet database URL to open (see :func:`fleet_db_choice` for the precedence)."""
    return fleet_db_choice(explicit)[0]


def record_fleet_db(url: str, recorded_by: str) -> Path:
    """Record ``url`` as this project's fleet (``<home>/fleet.json``, replaced atomically); return the file."""
    import json
    import time

    pointer = home() / FLEET_POINTER
    tmp = pointer.with_name(f".{pointer.name}.tmp")
    tmp.write_text(json.dumps({"db": url, "recorded_by": recorded_by, "recorded_unix_s": time.time()}) + "\n")
    tmp.replace(pointer)
    return pointer
