"""CLI commands of the profile area: ``tinymlops profile`` (the stage, or one file) and ``tinymlops targets``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cli._common import handle_errors, print_json, print_table
from cli._prefect import NoPrefectOpt, start_flow

PROFILE_HELP = """Profile a registered model's versions (the profile stage), or one .tflite/.onnx file, on target boards.

With MODEL_NAME: every packaged version x every target (default: the whole catalogue) is profiled, the figures are
logged to MLflow and alias candidate-<target> moves to the recommended version (what `tinymlops rollout start`
rolls out). Runs as a Prefect flow run ("profile"); --no-prefect runs the same stage in this process.

With --model FILE: latency, energy, peak RAM, flash and fits of that file per --target; nothing is recorded.

TARGET is a catalogue name (see `tinymlops targets`) or the path of a target YAML file, so you can add your own
board. Figures are estimated by static analysis + a per-op-kind cost model, replaced by measurements where one
was made: TFLite Micro's real arena for tflm-* runtimes, onnxruntime/TFLite timing on this host for `host: true`
targets, and a target's own device runner. The JSON says which figure came from where (`sources`, `measured`).

Examples:

  tinymlops profile vibration-classifier

  tinymlops profile --model model.tflite --target nucleo-l4r5zi --json

  tinymlops profile --model model.onnx --target my-board.yaml --target host-onnxruntime
"""

TARGETS_DIR_HELP = ("target catalogue directory (default: $TINYMLOPS_TARGETS_DIR, else the project's catalogue "
                    "if the working directory has one, else the boards shipped with tinymlops)")


def _row(r: dict[str, Any]) -> list[Any]:
    return [r["target"], r["runtime"], f"{r['latency_ms']:.4g}", r["sources"].get("latency_ms", ""),
            f"{r['energy_uj']:.4g}", f"{r['peak_ram_bytes']:,}", f"{r['flash_bytes']:,}",
            "yes" if r["fits"] else "no", "; ".join(r["reasons"])]


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""

    @app.command("profile", help=PROFILE_HELP)
    @handle_errors
    def profile(
        name: str | None = typer.Argument(None, metavar="[MODEL_NAME]",
                                          help="registered model: profile its packaged versions (the stage)"),
        model: Path | None = typer.Option(None, "--model", "-m", help="model file (.tflite or .onnx)"),
        target: list[str] | None = typer.Option(None, "--target", "-t", help="target name or YAML path; repeat "
                                                "for several; 'all' = catalogue (default for MODEL_NAME)"),
        targets_dir: Path | None = typer.Option(None, "--targets-dir", help=TARGETS_DIR_HELP),
        as_json: bool = typer.Option(False, "--json", help="print JSON (one object for one target, else a list)"),
        measure: bool = typer.Option(True, "--measure/--no-measure",
                                     help="run TFLite Micro, host timing and device runners (else static only)"),
        layers: bool = typer.Option(False, "--layers", help="include the per-layer breakdown in the JSON"),
        dask: str | None = typer.Option(None, "--dask", metavar="local|tcp://HOST:PORT",
                                        help="run the version x target cells as tasks on Dask: 'local' starts a "
                                             "LocalCluster here, an address uses an existing scheduler"),
        no_prefect: NoPrefectOpt = False,
    ) -> None:
        from tinymlops.errors import UsageError

        if (name is None) == (model is None):
            raise UsageError("give a registered MODEL_NAME (the profile stage) or --model FILE (one file), not "
                             + ("both" if name else "neither"))
        if name is not None:
            _profile_stage(name, target or ["all"], targets_dir, no_prefect, as_json, dask)
            return
        if dask:
            raise UsageError("--dask fans out the profile stage of a registered MODEL_NAME, not one --model file")
        if not target:
            raise UsageError("--model needs at least one --target (a catalogue name, a YAML path or 'all')")
        assert model is not None
        _profile_file(model, target, targets_dir, measure, layers, as_json)

    @app.command("targets", help="List the target catalogue (boards the profiler knows).")
    @handle_errors
    def targets(
        targets_dir: Path | None = typer.Option(None, "--targets-dir", help=TARGETS_DIR_HELP),
        as_json: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        from tinymlops.profile.targets import catalogue
        from tinymlops.profile.targets import targets_dir as resolve_dir

        cat = catalogue(targets_dir)
        if as_json:
            print_json([t.model_dump(mode="json") for t in cat.values()])
            return
        print_table(f"targets in {resolve_dir(targets_dir)}", ["name", "core", "MHz", "SRAM B", "flash B", "runtime", "mW",
                                                  "SLO ms"],
                    [[t.name, t.core, f"{t.clock_mhz:g}", f"{t.sram_bytes:,}", f"{t.flash_bytes:,}", t.runtime,
                      f"{t.active_power_mw:g}", t.latency_slo_ms or ""] for t in cat.values()])


def _profile_stage(name: str, target: list[str], targets_dir: Path | None, no_prefect: bool, as_json: bool,
                   dask: str | None = None) -> None:
    """Run the profile stage on a registered model: its flow, or with ``no_prefect`` the library entry point."""
    from tinymlops import registry
    from tinymlops.config import validate_data
    from tinymlops.errors import UsageError
    from tinymlops.execution import ExecutionSection
    from tinymlops.profile.targets import resolve_targets

    execution = None
    if dask:
        if no_prefect:
            raise UsageError("--dask runs the cells as Prefect tasks on Dask: drop --no-prefect")
        execution = validate_data({"task_runner": "dask", **({} if dask == "local" else {"address": dask})},
                                  ExecutionSection, "--dask").model_dump()

    targets: list[str] | str = "all" if target == ["all"] else target
    dir_arg = str(targets_dir) if targets_dir else None
    resolve_targets(targets, targets_dir)  # an unknown target exits 2 before Prefect starts
    registry.connect()
    if no_prefect:
        from tinymlops.profile.matrix import run_profile

        out = run_profile(name, dir_arg, targets).to_dict(rows=False)
    else:
        out = start_flow("flows.profile:profile_flow", name, dir_arg, targets, quiet=as_json, execution=execution)
    if as_json:
        print_json(out)
        return
    print_table(f"{name}: recommended version per target ({len(out['versions'])} versions profiled)",
                ["target", "version", "variant", "accuracy", "latency ms", "energy uJ", "peak RAM B", "why none"],
                [[t, r["recommended_version"] or "-", r["variant"] or "-",
                  "" if r["accuracy"] is None else f"{r['accuracy']:.2%}",
                  "" if r["latency_ms"] is None else f"{r['latency_ms']:.4g}",
                  "" if r["energy_uj"] is None else f"{r['energy_uj']:.4g}", r["peak_ram_bytes"] or "",
                  "" if r["recommended_version"] else "; ".join(r["reasons"][:2])]
                 for t, r in out["targets"].items()])


def _profile_file(model: Path, target: list[str], targets_dir: Path | None, measure: bool, layers: bool,
                  as_json: bool) -> None:
    """Profile one model file on targets (a tool: no registry, no MLflow records, no flow run)."""
    from tinymlops.profile.profiler import ProfileCache, profile_model
    from tinymlops.profile.targets import resolve_targets

    targets = resolve_targets(target if target != ["all"] else "all", targets_dir)
    cache = ProfileCache()
    results = [profile_model(model, t, cache, measure_tflm=measure, measure_host=measure,
                             run_device=measure, layers=layers) for t in targets]
    if as_json:
        print_json(results[0] if len(results) == 1 else results)
        return
    st = results[0]["static"]
    print_table(f"{model.name}: {st['macs']:,} MACs, {st['params']:,} params, {st['model_bytes']:,} B "
                f"({st['format']})",
                ["target", "runtime", "latency ms", "latency from", "energy uJ", "peak RAM B", "flash B",
                 "fits", "reasons"], [_row(r) for r in results])
    for r in results:
        m = r.get("measured", {})
        if "tflm_arena_bytes" in m:
            print(f"{r['target']}: TFLM arena measured {m['tflm_arena_bytes']:,} B, static estimate "
                  f"{m['tflm_arena_estimate_bytes']:,} B ({m['tflm_arena_error_pct']:+.1f} %)")
            break
