"""CLI commands of the rollout area: ``tinymlops rollout start|status|abort|demo`` and ``tinymlops history``.

The controller keeps its state in the fleet database (``--db``, the same one ``tinymlops fleet serve`` uses), so
a rollout started here survives a crash: run the same ``start`` again and it resumes where it was.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli._common import console, err_console, handle_errors, print_json, print_table
from cli._prefect import NoPrefectOpt, start_flow

rollout_app = typer.Typer(help="Staged rollouts: canary stages per target with metric gates and automatic rollback.",
                          no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
DbOpt = Annotated[str | None, typer.Option(
    "--db", envvar="TINYMLOPS_FLEET_DB",
    help="SQLAlchemy URL of the fleet database the rollout state lives in (default: <home>/fleet.db)")]
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="rollout plan (kind: rollout)")]
TargetsDirOpt = Annotated[Path | None, typer.Option(help="target catalogue directory (default: see `tinymlops targets`)")]


def _store(db: str | None) -> Any:
    from tinymlops import settings
    from tinymlops.fleet.store import open_store

    url, why = settings.fleet_db_choice(db)  # say which fleet: the demo's recorded one is the default
    err_console.print(f"fleet: {url}  ({why})", highlight=False, soft_wrap=True)
    return open_store(url)


def _ago(t: float | None) -> str:
    if t is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _candidate_targets(model: str, targets_dir: Path | None) -> list[str]:
    from tinymlops import registry
    from tinymlops.profile.targets import catalogue

    return [t for t in catalogue(targets_dir) if registry.get_alias(model, f"candidate-{t}") is not None]


@rollout_app.command("start")
@handle_errors
def start(model: Annotated[str, typer.Argument(help="registered model name")],
          target: Annotated[list[str] | None, typer.Option(
              "--target", "-t", help="target to roll out to (repeat; default: every target with a candidate-<target> "
                                     "alias from `tinymlops profile`)")] = None,
          config: ConfigOpt = Path("configs/rollout.yaml"),
          version: Annotated[str | None, typer.Option(help="version to roll out (default: candidate-<target>); "
                                                           "only with a single --target")] = None,
          override: Annotated[bool, typer.Option(help="roll out a version that was rolled back on the target "
                                                      "before")] = False,
          wait: Annotated[bool, typer.Option(help="drive the rollout to its end here (--no-wait: only create "
                                                  "it; run start again later to drive it)")] = True,
          server: Annotated[str | None, typer.Option(
              "--server", envvar="TINYMLOPS_FLEET_URL",
              help="fleet service to upload packages to (default: write them to --db directly)")] = None,
          token: Annotated[str | None, typer.Option("--token", envvar="TINYMLOPS_OPERATOR_TOKEN",
                                                    help="operator token for --server")] = None,
          db: DbOpt = None, targets_dir: TargetsDirOpt = None, no_prefect: NoPrefectOpt = False,
          json_out: JsonOpt = False) -> None:
    """Start (or resume) a staged rollout per target and, by default, drive it until promoted or rolled back.

    Each target's devices receive that target's candidate in the plan's stages (e.g. 5% → 25% → 50% → 100%);
    a failed gate rolls every touched device back to its previous version; an inconclusive gate holds.
    Running start again for a rollout that is still active resumes it (e.g. after a crash). Runs as a Prefect
    flow run ("rollout", one task per target); --no-prefect drives the same rollouts in this process.
    """
    import os

    from tinymlops import registry
    from tinymlops.errors import UsageError
    from tinymlops.rollout.run import load_config

    load_config(config)  # a config error exits 2 before Prefect starts
    registry.connect()
    targets = list(target or []) or _candidate_targets(model, targets_dir)
    if not targets:
        raise UsageError(f"{model} has no candidate-<target> alias: run `tinymlops profile {model}` or pass --target")
    if version and len(targets) != 1:
        raise UsageError("--version needs exactly one --target (each target has its own candidate)")
    if server:
        from cli.fleet import _operator_token

        # handed on in the environment, never as a flow parameter (Prefect records those)
        os.environ["TINYMLOPS_OPERATOR_TOKEN"] = _operator_token(token)
    if not json_out:
        console.print(f"rolling {model} out to {', '.join(targets)}" + (" (creating only)" if not wait else ""))
    args = (model, targets, str(config))
    kwargs: dict[str, Any] = {"fleet_url": server, "db_url": db, "override": override, "wait": wait,
                              "versions": {targets[0]: version} if version else None,
                              "targets_dir": str(targets_dir) if targets_dir else None}
    if no_prefect:
        from tinymlops.rollout.run import run_rollout

        out = run_rollout(*args, on_tick=None if json_out else _show_tick, **kwargs).to_dict()
    else:
        out = start_flow("flows.rollout:rollout_flow", *args, quiet=json_out, **kwargs)
    if json_out:
        print_json(out)
        return
    for r in out["rollouts"]:
        console.print(f"rollout [bold]{r['id']}[/] of {model} on {r['target']}: {r['status']}")
    tbl = out["table"]
    print_table(tbl["title"], tbl["columns"], tbl["rows"])


def _show_tick(res: Any) -> None:
    """Print a controller step that changed something (a stage advanced, completed, rolled back or stopped)."""
    if res.action in ("hold", "none", "not-owner"):
        return
    reasons = "; ".join(res.decision.reasons[:2]) if res.decision else ""
    err_console.print(f"{res.rollout_id}: {res.action} (stage {res.stage_index + 1}) {reasons}",
                      highlight=False, soft_wrap=True)


@rollout_app.command("status")
@handle_errors
def status(model: Annotated[str | None, typer.Argument(help="registered model name (default: all)")] = None,
           target: Annotated[str | None, typer.Option("--target", "-t", help="only this target")] = None,
           active: Annotated[bool, typer.Option(help="only rollouts still running or rolling back")] = False,
           db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Show rollouts (newest first): status, stage, devices touched and the last gate decision."""
    from tinymlops.rollout.controller import list_rollouts, stages_reached

    rows = list_rollouts(_store(db), model, target, active)
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("no rollouts" + (f" of {model}" if model else ""))
        return
    print_table("rollouts", ["id", "version", "status", "stages reached", "devices", "started", "last decision"],
                [[r["id"], r["version"], r["status"], stages_reached(r), r["devices_touched"],
                  _ago(r["created_unix_s"]), _brief(r["last_decision"])] for r in rows])


def _brief(decision: dict[str, Any] | None) -> str:
    """Return a one-line summary of a decision: its outcome and the first reason."""
    if not decision:
        return ""
    reasons = decision["reasons"]
    if decision["outcome"] == "pass":  # every check passed: show the evidence rather than the first check
        keep = ("coverage", "latency", "prediction_shift", "accuracy")
        first = "; ".join(r.split(": ", 1)[1] for r in reasons if r.split(":", 1)[0] in keep)
    else:
        first = reasons[0] if reasons else ""
    return f"{decision['outcome']}: {first}"[:160]


@rollout_app.command("abort")
@handle_errors
def abort(rollout_id: Annotated[str, typer.Argument(help="rollout id (see `tinymlops rollout status`)")],
          reason: Annotated[str, typer.Option(help="why (recorded in the history)")] = "aborted by operator",
          db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Abort a rollout: every device it touched goes back to its previous version; the canary alias is removed."""
    from tinymlops import registry
    from tinymlops.rollout.controller import Controller

    registry.connect()
    res = Controller(_store(db)).abort(rollout_id, reason)
    if json_out:
        print_json({"id": res.rollout_id, "status": res.status})
        return
    console.print(f"rollout {res.rollout_id}: {res.status}")


@rollout_app.command("demo")
@handle_errors
def demo(model: Annotated[str, typer.Argument(help="registered model name")],
         healthy: Annotated[str, typer.Option(help="target whose candidate is healthy")] = "raspberry-pi-4",
         faulty: Annotated[str, typer.Option(help="target whose candidate gets an injected fault")]
         = "raspberry-pi-zero-2-w",
         fault: Annotated[str, typer.Option(help="latency, crash or corrupt")] = "latency",
         devices: Annotated[int, typer.Option(min=2, max=500, help="simulated devices per target")] = 20,
         config: ConfigOpt = Path("configs/rollout.yaml"), targets_dir: TargetsDirOpt = None,
         json_out: JsonOpt = False) -> None:
    """Run a staged rollout over a fresh simulated fleet: one healthy candidate, one with an injected fault."""
    from tinymlops.sim.demo import run_demo

    out = run_demo(model, healthy, faulty, config, devices, fault, targets_dir)
    if json_out:
        print_json(out)
        return
    tbl = out["table"]
    print_table(tbl["title"], tbl["columns"], tbl["rows"])
    console.print(f"fleet DB: {out['fleet_db']}  (tinymlops history {model} --db {out['fleet_db']})")


@handle_errors
def history(model: Annotated[str, typer.Argument(help="registered model name")],
            db: DbOpt = None,
            holds: Annotated[bool, typer.Option(help="also list gate evaluations that only held")] = False,
            json_out: JsonOpt = False) -> None:
    """Show which version was candidate/canary/production on which target, when and why, and the gate decisions.

    Alias moves come from MLflow (every move is recorded with its reason and figures); gate decisions from the
    fleet database the rollouts ran on.
    """
    from tinymlops import registry
    from tinymlops.rollout.history import model_history

    registry.connect()
    registry.list_versions(model)  # a clear error for an unknown model
    st = None
    from tinymlops.fleet.store import default_url

    url = db or default_url()
    if not url.startswith("sqlite:///") or Path(url.split("///", 1)[1]).is_file():
        st = _store(db)  # the same fleet as url; says which one and why
    out = model_history(model, st, include_holds=holds)
    if json_out:
        print_json(out)
        return
    moves = out["alias_moves"]
    if not moves:
        console.print(f"no alias moves recorded for {model}")
    else:
        print_table(f"{model}: alias moves (what ran where, when, why)",
                    ["time", "target", "alias", "version", "previous", "reason"],
                    [[_ago(m["time_unix_s"]), m["target"], m["alias"], m["version"] or "(removed)",
                      m["previous_version"], m["reason"][:200]] for m in moves])
    if out["decisions"]:
        print_table(f"{model}: gate decisions", ["time", "target", "version", "stage", "outcome", "action", "reasons"],
                    [[_ago(d["time_unix_s"]), d["target"], d["version"], d["stage"], d["outcome"], d["action"],
                      _brief(d)[len(d["outcome"]) + 2:]] for d in out["decisions"]])


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.add_typer(rollout_app, name="rollout")
    app.command("history")(history)

