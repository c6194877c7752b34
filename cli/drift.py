"""CLI commands of the drift area: ``tinymlops drift`` (one check) and ``tinymlops schedule`` (serve deployments)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli._common import console, err_console, handle_errors, print_json, print_table, run_flow
from cli._prefect import NoPrefectOpt, start_flow
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
    fleet_db: Annotated[str | None, typer.Option(help="fleet store URL (default: the fleet the demo recorded in "
                                                      "<home>/fleet.json, else <home>/fleet.db)")] = None,
    log: Annotated[bool, typer.Option("--log/--no-log", help="log verdicts, figures and Evidently HTML to "
                                                             "MLflow")] = True,
    retrain: Annotated[bool, typer.Option("--retrain/--no-retrain", help="let a retrain verdict start the "
                                                                         "pipeline (if enabled in the config; "
                                                                         "cooldown applies)")] = True,
    no_prefect: NoPrefectOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Check drift of a model version per target x cohort over a window and print the verdicts.

    Merges the devices' sketches on the model's reference bins, measures PSI / Jensen-Shannon / Wasserstein per
    feature and the prediction/confidence shift, compares device latency/memory/energy with the target's
    profile, runs Evidently where devices shared samples or labels, and decides ok / warn / retrain (exit 0
    whatever the verdict; bad input exits 2, an unknown model 1). Runs as a Prefect flow run ("drift");
    --no-prefect runs the same check in this process and never starts a retrain (the pipeline is a flow).
    Example: tinymlops drift vibration-classifier --window 1h --json
    """
    from tinymlops.monitor.check import load_drift_config
    from tinymlops.monitor.config import parse_duration_s

    cfg = load_drift_config(config)  # a config error exits 2 before Prefect starts
    try:
        window_s = parse_duration_s(window) if window else None
    except ValueError as exc:
        raise UsageError(f"--window: {exc}") from None
    if window_s is not None and window_s <= 0:
        raise UsageError("--window must be positive")
    from tinymlops import settings

    fleet_db, why = settings.fleet_db_choice(fleet_db)  # say which fleet: the demo's recorded one is the default
    err_console.print(f"fleet: {fleet_db}  ({why})", highlight=False, soft_wrap=True)
    if no_prefect:
        from tinymlops import registry
        from tinymlops.monitor.check import run_drift_check

        registry.connect()
        out = run_drift_check(model, cfg, version=version, target=target, cohort=cohort, until=until,
                              window_s=window_s, store_url=fleet_db, log=log).to_dict()
        if out["level"] == "retrain" and retrain and cfg.retrain.enabled:
            out["retrain"] = {"decision": {"start": False, "reason": "not started: --no-prefect (the pipeline "
                                                                     "it would start is a Prefect flow)"}}
    else:
        out = start_flow("flows.drift:drift_flow", model, str(config), version=version, target=target,
                         cohort=cohort, window=window, until=until, store_url=fleet_db, log=log,
                         allow_retrain=retrain and cfg.retrain.enabled, quiet=json_out)
    if json_out:
        print_json(out)
        return
    _print_verdicts(out)
    if log:
        console.print(f"logged to MLflow experiment [bold]{cfg.experiment}[/] (verdict JSON, figures, Evidently "
                      "HTML)")


def _print_verdicts(out: dict[str, Any]) -> None:
    """Print the verdict table of a drift check result (``CheckResult.to_dict()``) and its retrain decision."""
    from tinymlops.monitor.verdict import accuracy_line

    rows = [[g["version"], g["target"] or "-", g["cohort"] or "-",
             f"[{_COLOURS.get(g['level'], 'white')}]{g['level']}[/]", g["summary"].get("n_inferences"),
             g["summary"].get("n_devices"), len(g["drifted_features"]),
             accuracy_line(g["summary"], short=True) or "-"] for g in out["groups"]]
    print_table(f"drift of {out['model']} over {out['until_unix_s'] - out['since_unix_s']:.0f} s",
                ["version", "target", "cohort", "verdict", "inferences", "devices", "drifted features",
                 "accuracy (estimated / feedback)"], rows)
    for g in out["groups"]:
        console.print(f"[bold]v{g['version']} {g['target'] or '-'}/{g['cohort'] or '-'}[/]: "
                      + "; ".join(g["reasons"][:4]), highlight=False)
    if "retrain" in out:
        console.print(f"retrain: {out['retrain']['decision']['reason']}"
                      + (f" -> started {out['retrain']['started']}" if "started" in out["retrain"] else ""))


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
    from cli._prefect import prepare

    prepare(quiet=True)
    from flows.deployments import build_deployments, read_prefect_deployments

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
    from flows.deployments import serve_deployments

    console.print("serving " + ", ".join(x["deployment"] for x in listing) + " (Ctrl-C to stop)")
    run_flow(serve_deployments, deployments)  # Ctrl-C/SIGTERM: stop the server and children, exit 130/143


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("drift")(drift)
    app.command("schedule")(schedule)
