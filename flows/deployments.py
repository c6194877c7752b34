"""Deployments of prefect.yaml (drift hourly, pipeline weekly) as runner deployments ``tinymlops schedule`` serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def read_prefect_deployments(prefect_file: str | Path = REPO / "prefect.yaml") -> list[dict[str, Any]]:
    """Return the deployment entries of prefect.yaml (name, entrypoint, parameters, schedules)."""
    import yaml

    data = yaml.safe_load(Path(prefect_file).read_text(encoding="utf-8")) or {}
    return list(data.get("deployments") or [])


def resolve_env_placeholders(parameters: dict[str, Any]) -> dict[str, Any]:
    """Fill ``{{ $VAR }}`` placeholders from the environment as ``prefect deploy`` does (unset -> empty -> None)."""
    from prefect.utilities.templating import apply_values

    resolved = apply_values(parameters, {}, remove_notset=True, warn_on_notset=False)
    return {k: (None if v == "" else v) for k, v in resolved.items()}


def build_deployments(prefect_file: str | Path = REPO / "prefect.yaml",
                      overrides: dict[str, dict[str, Any]] | None = None) -> list[Any]:
    """Turn prefect.yaml's deployments into runner deployments that ``prefect.serve`` can run locally."""
    from prefect.flows import load_flow_from_entrypoint

    out = []
    for d in read_prefect_deployments(prefect_file):
        fl: Any = load_flow_from_entrypoint(str(REPO / d["entrypoint"]))
        params = {**resolve_env_placeholders(d.get("parameters") or {}),
                  **((overrides or {}).get(d["name"]) or {})}
        crons = [s["cron"] for s in d.get("schedules") or [] if "cron" in s]
        intervals = [s["interval"] for s in d.get("schedules") or [] if "interval" in s]
        out.append(fl.to_deployment(name=d["name"], parameters=params, cron=crons or None,
                                    interval=intervals or None, tags=d.get("tags"),
                                    description=d.get("description")))
    return out


def serve_deployments(deployments: list[Any]) -> None:
    """Serve runner deployments from this process until interrupted (schedules fire here; no work pool)."""
    from prefect import serve

    serve(*deployments, print_starting_message=False)

