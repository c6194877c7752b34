"""CLI commands of the pipeline: validate, train, run, ui."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli._common import console, err_console, handle_errors, print_json, print_table, run_flow
from cli._prefect import NoPrefectOpt, start_flow

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="pipeline YAML (see configs/pipeline.yaml)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout instead of tables")]


def _check_config(path: Path, references: bool = False) -> Any:
    from tinymlops.config import check_references, load_pipeline

    cfg = load_pipeline(path)  # fail fast with a config error (exit 2) before Prefect starts
    if references:  # boards, drift/rollout configs: fail now, not after 30 s of training
        check_references(cfg, path)
    from tinymlops import registry

    registry.connect(cfg.mlflow.tracking_uri)  # an unusable store: one line now, not errors logged by every flow
    return cfg


@handle_errors
def validate(path: Annotated[Path, typer.Argument(help="any tinymlops YAML: pipeline, target, drift or rollout")],
             json_out: JsonOpt = False) -> None:
    """Check a config file; exit 0 if valid, 2 with file, key path and reason if not."""
    from tinymlops.config import PipelineConfig, check_references, detect_kind, load, read_yaml

    kind = detect_kind(read_yaml(path), path)
    cfg = load(path, kind)
    if isinstance(cfg, PipelineConfig):
        check_references(cfg, path)
    if json_out:
        print_json({"path": str(path), "valid": True, "kind": kind})
    else:
        console.print(f"[green]ok[/] {path}: valid {kind} config")


@handle_errors
def train(config: ConfigOpt = Path("configs/pipeline.yaml"), no_prefect: NoPrefectOpt = False,
          json_out: JsonOpt = False) -> None:
    """Train, evaluate, export and register a new float model version (a Prefect flow run, "train")."""
    _check_config(config)
    if no_prefect:
        from tinymlops.train import run_train

        # in this process, still interruptible: SIGINT/SIGTERM end its runs KILLED and exit 130/143
        out = run_flow(run_train, config, progress=None if json_out else err_console.print).to_dict()
    else:
        out = start_flow("flows.train:train_flow", str(config), quiet=json_out)
    if json_out:
        print_json(out)
        return
    m = out["metrics"]
    console.print(f"[green]registered[/] {out['model_uri']}  test accuracy {m['test_accuracy']:.2%}  "
                  f"macro-F1 {m['test_macro_f1']:.3f}  ({m['train_seconds']:.1f} s training)")
    _where_to_look(out["experiment"], out["model_name"])


@handle_errors
def run(config: ConfigOpt = Path("configs/pipeline.yaml"), json_out: JsonOpt = False) -> None:
    """Run the pipeline the config describes: train → compress → profile → rollout → drift (a Prefect flow run).

    `stages:` in the config picks the stages (they always run in this order); without train the pipeline starts
    from the latest registered float32 version. Each stage is a flow run of its own, nested in the pipeline's.
    """
    cfg = _check_config(config, references=True)
    out = start_flow("flows.pipeline:pipeline_flow", str(config), quiet=json_out)
    if json_out:
        print_json(out)
        return
    print_summary(out)
    _where_to_look(cfg.mlflow.experiment, cfg.mlflow.registered_model)


def print_summary(out: dict[str, Any]) -> None:
    """Print the human summary of a pipeline run."""
    t = out["train"]
    console.rule(f"[bold]tinymlops pipeline: {out['project']}")
    console.print(f"{'started from' if t.get('skipped') else 'trained and registered'} [bold]{t['model_uri']}[/]: "
                  "test accuracy "
                  f"{t['metrics']['test_accuracy']:.2%}, macro-F1 {t['metrics']['test_macro_f1']:.3f}, "
                  f"{t['metrics']['train_seconds']:.1f} s of training")
    comp = out.get("compress")
    if comp and comp.get("variants"):
        rows = [[v.get("variant"), v.get("version"), v.get("format"), v.get("size_bytes"),
                 f"{v['accuracy']:.2%}" if v.get("accuracy") is not None else "", v.get("status")]
                for v in comp["variants"]]
        print_table("compressed variants", ["variant", "version", "format", "bytes", "accuracy", "status"], rows)
    prof = out.get("profile")
    if prof and prof.get("targets"):
        rows = [[t_name, r.get("recommended_version") or "-", r.get("variant") or "-",
                 f"{r['accuracy']:.2%}" if r.get("accuracy") is not None else "",
                 f"{r['latency_ms']:.4g}" if r.get("latency_ms") is not None else "",
                 f"{r['energy_uj']:.4g}" if r.get("energy_uj") is not None else "", r.get("peak_ram_bytes"),
                 "; ".join(r.get("reasons", [])[:2]) if not r.get("recommended_version") else ""]
                for t_name, r in prof["targets"].items()]
        columns = ["target", "version", "variant", "accuracy", "latency_ms", "energy_uj", "peak_ram_bytes",
                   "why none fits"]
        if any(r.get("firmware") for r in prof["targets"].values()):  # emulated targets: the linked firmware
            columns.insert(-1, "firmware (flash / RAM / instructions)")
            for row, r in zip(rows, prof["targets"].values(), strict=True):
                fw = r.get("firmware") or {}
                row.insert(-1, f"{fw['flash_bytes']:,} B / {fw['ram_bytes']:,} B / "
                               f"{fw['instructions_per_inference']:,}" if fw else "")
        print_table("recommended variant per target (profile)", columns, rows)
    for key in ("drift", "personalise", "rollout"):  # the drift verdicts, the personalise follow-up, the rollout
        if out.get(key, {}).get("table"):
            tbl = out[key]["table"]
            print_table(tbl["title"], tbl["columns"], tbl["rows"])


def _where_to_look(experiment: str, model_name: str) -> None:
    from tinymlops import registry

    console.print(f"MLflow store: {registry.tracking_uri()}\n"
                  f"Open it with [bold]tinymlops ui[/], then: Experiments → {experiment} (runs, datasets, metrics) "
                  f"and Models → {model_name} (versions, tags, aliases).")


@handle_errors
def ui(port: Annotated[int, typer.Option(help="port to listen on")] = 5000,
       host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1") -> None:
    """Start the MLflow UI on the project's store and print its URL (Ctrl-C or SIGTERM stop it and its server)."""
    from tinymlops import registry, settings

    uri = settings.tracking_uri()
    if not uri.startswith("sqlite:"):
        console.print(f"The store is a server: open {uri} in a browser.")
        return
    registry.connect(uri)  # a corrupt store or a missing directory: one line now, not the server's traceback
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if exe is None:
        err_console.print("error: the mlflow command is not installed in this environment")
        raise typer.Exit(1)
    console.print(f"MLflow UI for {uri}\n  → [bold]http://{host}:{port}[/]  (Ctrl-C to stop)")
    from tinymlops.registry_ui import review_links

    for name, link in review_links(registry.client(), f"http://{host}:{port}"):  # opens the runs table
        console.print(f"  {name}: {link}", soft_wrap=True)
    cmd = [exe, "server", "--backend-store-uri", uri, "--default-artifact-root",
           settings.artifact_root().as_uri(), "--host", host, "--port", str(port), "--workers", "1"]
    # the server is a child process: SIGINT/SIGTERM stop it too and exit 130/143 (see cli/_interrupts.py)
    code = run_flow(subprocess.call, cmd)
    if code:
        err_console.print(f"error: mlflow server exited with code {code} (is port {port} in use?)")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("validate")(validate)
    app.command("train")(train)
    app.command("run")(run)
    app.command("ui")(ui)
