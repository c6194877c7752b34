"""CLI commands of the compression area: compress, variants, lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli._common import console, err_console, handle_errors, print_json, print_table, run_flow
from cli._prefect import NoPrefectOpt, start_flow

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout instead of tables")]


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def _pts(v: float | None) -> str:
    return "" if v is None else f"{100 * v:+.2f}"


@handle_errors
def compress(
    config: Annotated[Path, typer.Option("--config", "-c", help="pipeline YAML whose compress.variants to build")
                      ] = Path("configs/pipeline.yaml"),
    version: Annotated[str, typer.Option("--version", "-v", help="registered float32 (or imported) version to compress "
                                         "(see `tinymlops variants MODEL`)")] = "",
    no_prefect: NoPrefectOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Build every configured variant of a float version, evaluate each in its runtime and register it.

    Each variant becomes a new version of the same registered model (tags: variant, technique, format,
    parent_version, train_run_id, dataset_digest and its parameters) from its own MLflow run nested under the
    compress run. A variant that fails is recorded as a FAILED run and the others go on. Exit code 1 if any failed.
    An imported parent gets what its format allows (ONNX float: onnx-int8; TFLite: nothing): the other techniques
    are skipped with one line saying why (also as tags skipped.<variant> on the compress run).
    Runs as a Prefect flow run ("compress", variants in parallel tasks); --no-prefect builds them one after the
    other in this process.
    """
    from tinymlops.config import load_pipeline
    from tinymlops.errors import UsageError

    cfg = load_pipeline(config)
    if not version:
        raise UsageError("give the float version to compress with --version (see `tinymlops variants "
                         f"{cfg.mlflow.registered_model}`)")
    if not cfg.compress.variants:
        raise UsageError(f"{config}: compress.variants is empty; nothing to build")
    from tinymlops import registry
    from tinymlops.compress.stage import check_parent, run_compress

    registry.connect(cfg.mlflow.tracking_uri)
    check_parent(cfg.mlflow.registered_model, version)  # fail fast, before Prefect starts
    if no_prefect:
        # in this process, still interruptible: SIGINT/SIGTERM end its runs KILLED and exit 130/143
        out = run_flow(run_compress, cfg, version, progress=None if json_out else err_console.print).to_dict()
    else:
        out = start_flow("flows.compress:compress_flow", str(config), version, quiet=json_out)
    if json_out:
        print_json(out)
    else:
        rows = [[v["variant"], v.get("version") or "", v.get("format") or "", v.get("size_bytes") or "",
                 v.get("gzip_bytes") or "", _pct(v.get("accuracy")), _pts(v.get("accuracy_delta")),
                 {"registered": "ok", "skipped": "skipped"}.get(v["status"], "FAILED")] for v in out["variants"]]
        print_table(f"variants of {out['model_name']}/{version} (float accuracy {_pct(out['float_accuracy'])})",
                    ["variant", "ver", "fmt", "bytes", "gzip", "acc", "Δ pts", "status"], rows)
        for v in out["variants"]:
            if v["status"] == "skipped":  # the technique does not apply to the parent's format (an imported file)
                console.print(f"[yellow]{v['variant']}:[/] {v['reason']}", highlight=False)
            elif v["status"] != "registered":
                console.print(f"[red]{v['variant']} failed:[/] {v['error']}", highlight=False)
    if out["failed"]:
        raise typer.Exit(1)


@handle_errors
def variants(model: Annotated[str, typer.Argument(help="registered model name, e.g. vibration-classifier")],
             json_out: JsonOpt = False) -> None:
    """List a registered model's versions: variant, format, size, gzip size, accuracy and delta vs float parent."""
    from tinymlops import registry
    from tinymlops.compress.lineage import variants as list_variants

    registry.connect()
    rows = list_variants(model)
    if json_out:
        print_json({"model": model, "versions": rows})
        return
    with_aliases = any(r["aliases"] for r in rows)
    print_table(f"{model}: registered versions",
                ["ver", "variant", "fmt", "parent", "bytes", "gzip", "acc", "Δ pts"] + (["aliases"] * with_aliases),
                [[r["version"], r["variant"], r["format"], r["parent_version"] or "", r["size_bytes"], r["gzip_bytes"],
                  _pct(r["accuracy"]), _pts(r["accuracy_delta"])] + ([",".join(r["aliases"])] * with_aliases)
                 for r in rows])


def _fmt_figures(figs: dict[str, Any]) -> str:
    parts = []
    for k, v in figs.items():
        if v is None:
            continue
        if k in ("accuracy", "macro_f1", "test_accuracy", "test_macro_f1", "agreement_with_float",
                 "tflm_tflite_agreement", "tflm_accuracy", "sparsity"):
            parts.append(f"{k} {100 * v:.2f}%")
        elif k == "accuracy_delta":
            parts.append(f"{k} {100 * v:+.2f} pts")
        elif isinstance(v, float) and not v.is_integer():
            parts.append(f"{k} {v:.3g}")
        else:
            parts.append(f"{k} {int(v)}")
    return ", ".join(parts)


@handle_errors
def lineage(model: Annotated[str, typer.Argument(help="registered model name")],
            version: Annotated[str, typer.Argument(help="version number")],
            json_out: JsonOpt = False) -> None:
    """Show where a version came from: dataset → train run → parent version → variant, with figures per step."""
    from tinymlops import registry
    from tinymlops.compress.lineage import lineage as get_lineage

    registry.connect()
    info = get_lineage(model, version)
    if json_out:
        print_json(info)
        return
    console.rule(f"[bold]lineage of {info['model_uri']}")
    for i, step in enumerate(info["chain"]):
        arrow = "  " if i == 0 else "→ "
        if step["step"] == "dataset":
            rows = ", ".join(f"{k} {v}" for k, v in step["rows"].items() if v is not None)
            extra = "".join(f"; {k} {step[k]}" for k in ("split", "schema") if step.get(k))
            console.print(f"{arrow}[bold]dataset[/] {step['name']} (train digest {step['digest']}; {rows}{extra}; "
                          f"source {step['source']})", highlight=False)
        elif step["step"] == "train_run":
            console.print(f"{arrow}[bold]train run[/] {step['run_id']} [{step['status']}] config "
                          f"{step['config_hash']} git {step['git_commit']}: {_fmt_figures(step['figures'])}",
                          highlight=False)
        else:
            label = {"parent_version": "parent version", "variant": "variant", "version": "version"}[step["step"]]
            params = ", ".join(f"{k}={v}" for k, v in step["params"].items())
            console.print(f"{arrow}[bold]{label}[/] {step['version']} {step['variant']} ({step['technique']}, "
                          f"{step['format']}{'; ' + params if params else ''}): {_fmt_figures(step['figures'])}",
                          highlight=False)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("compress")(compress)
    app.command("variants")(variants)
    app.command("lineage")(lineage)
