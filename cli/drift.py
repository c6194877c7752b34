"""CLI commands of the drift area: ``tinymlops drift`` (one check) and ``tinymlops schedule`` (serve deployments)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli._common import console, handle_errors, print_json, print_table
from tinymlops.errors import UsageError

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout instead of tables")]
_COLOURS = {"ok": "green", "warn": "yellow", "retrain": "red", "insufficient data": "blue",
            "incompatible sketch": "magenta"}


@handle_errors
def drift(
    model: Annotated[str, typer.Argument(help="registered model name, e.g. vibration-classifier")],
    config: Annotated[Path, typer.Option("--config", "-c", help="drift YAML: thresholds, window, retrain"
                                         )] = Path("configs/drift.yaml"),
    version: Annotated[str | None, typer.Option(help="version to check (default: the config's alias, else every "
                                                     "version that reported in the window)")] = None,
    target: Annotated[str | None, typer.Option(help="only devices of this target")] = None,
    cohort: Annotated[str | None, typer.Option(help="only devices of this cohort")] = None,
    window: Annotated[str | None, typer.Option(help="telemetry window ending now, e.g. 30m, 1h, 7d (default: "
                                                    "the config's)")] = None,
    until: Annotated[float | None, typer.Option(help="window end as unix seconds (default: now)")] = None,
    fleet_db: Annotated[str | None, typer.Option(help="fleet store URL (default: .tinymlops/fleet.db)")] = None,
    log: Annotated[bool, typer.Option("--log/--no-log", help="log verdicts, figures and Evidently HTML to "
                                                             "MLflow")] = True,
    retrain: Annotated[bool, typer.Option("--retrain/--no-retrain", help="let a retrain verdict start the "
                                                                         "pipeline (if enabled in the config; "
                                                                         "cooldown applies)")] = True,
    json_out: JsonOpt = False,
) -> None:
    """Check drift of a model version per target x cohort over a window and print the verdicts.

    Merges the devices' sketches on the model's reference bins, measures PSI / Jensen-Shannon / Wasserstein per
    feature and the prediction/confidence shift, compares device latency/memory/energy with the target's
    profile, runs Evidently where devices shared samples or labels, and decides ok / warn / retrain (exit 0
    whatever the verdict; bad input exits 2, an unknown model 1). Example:
    tinymlops drift vibration-classifier --window 1h --json
    """
    from tinymlops import registry
    from tinymlops.config import load
    from tinymlops.monitor.check import run_check
    from tinymlops.monitor.config import DriftConfig, parse_duration_s

    cfg = load(config, "drift")
    assert isinstance(cfg, DriftConfig)
    try:
        window_s = parse_duration_s(window) if window else None
    except ValueError as exc:
        raise UsageError(f"--window: {exc}") from None
    if window_s is not None and window_s <= 0:
        raise UsageError("--window must be positive")
    registry.connect()
    result = run_check(model, cfg, version=version, target=target, cohort=cohort, until=until, window_s=window_s,
                       store_url=fleet_db, log=log)
    out: dict[str, Any] = result.as_dict()
    if result.level == "retrain" and retrain and cfg.retrain.enabled:
        from tinymlops.settings import prepare_environment

        prepare_environment()
        from flows.drift import retrain_task

        details = {"version": result.version, "source": "cli"}
        out["retrain"] = retrain_task.fn(model, "retrain", str(config), details)
    if json_out:
        print_json(out)
        return
    rows = [[g.verdict.version, g.target or "-", g.cohort or "-",
             f"[{_COLOURS.get(g.verdict.level, 'white')}]{g.verdict.level}[/]", g.verdict.n_inferences,
             g.verdict.n_devices, len(g.verdict.drifted_features)] for g in result.groups]
    print_table(f"drift of {model} over {result.until_unix_s - result.since_unix_s:.0f} s",
                ["version", "target", "cohort", "verdict", "inferences", "devices", "drifted features"], rows)
    for g in result.groups:
        console.print(f"[bold]v{g.verdict.version} {g.target or '-'}/{g.cohort or '-'}[/]: "
                      + "; ".join(g.verdict.reasons[:4]), highlight=False)
    if "retrain" in out:
        console.print(f"retrain: {out['retrain']['decision']['reason']}"
                      + (f" -> started {out['retrain']['started']}" if "started" in out["retrain"] else ""))
    if log:
        console.print(f"logged to MLflow experiment [bold]{cfg.experiment}[/] (verdict JSON, figures, Evidently "
                      "HTML)")


@handle_errors
def schedule(
    prefect_file: Annotated[Path, typer.Option(help="deployments to serve")] = Path("prefect.yaml"),
    model: Annotated[str | None, typer.Option(help="model the hourly drift check watches (default: "
                                                   "prefect.yaml's)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="load and list the deployments, then exit")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Serve prefect.yaml's deployments locally (drift hourly, pipeline weekly) until Ctrl-C.

    No work pool needed: this process runs the scheduled flow runs itself. For a Prefect server with a work pool
    use `prefect deploy --all` instead (see prefect.yaml). A retrain verdict then runs pipeline/pipeline-weekly.
    """
    if not prefect_file.is_file():
        raise UsageError(f"{prefect_file}: not found (run from the repository root or pass --prefect-file)")
    import os

    from tinymlops.settings import prepare_environment

    prepare_environment()
    # no phoning home from a local scheduler (and its heartbeat races SQLite at start-up: "database is locked")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.drift import build_deployments, read_prefect_deployments

    entries = read_prefect_deployments(prefect_file)
    overrides = {e["name"]: {"model": model} for e in entries
                 if model and "model" in (e.get("parameters") or {})}
    deployments = build_deployments(prefect_file, overrides)
    listing = [{"deployment": f"{d.flow_name}/{d.name}", "parameters": d.parameters,
                "schedules": [str(getattr(s.schedule, "cron", None) or getattr(s.schedule, "interval", ""))
                              for s in (d.schedules or [])]} for d in deployments]
    if dry_run:
        if json_out:
            print_json({"deployments": listing})
        else:
            print_table("deployments", ["deployment", "schedules", "parameters"],
                        [[x["deployment"], ", ".join(x["schedules"]), x["parameters"]] for x in listing])
        return
    from flows.drift import serve_deployments

    console.print("serving " + ", ".join(x["deployment"] for x in listing) + " (Ctrl-C to stop)")
    serve_deployments(deployments)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("drift")(drift)
    app.command("schedule")(schedule)
