"""CLI command of the microcontroller area: export a registered int8 version as a C/C++ bundle (and firmware)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from cli._common import console, err_console, handle_errors, print_json, print_table


def _kb(n: int | None) -> str:
    return "" if n is None else f"{n / 1024:,.1f} KiB"


def _print_firmware(fw: dict[str, Any]) -> None:
    comps = sorted(set(fw["flash_by_component"]) | set(fw["ram_by_component"]))
    print_table(f"firmware on {fw['machine']}", ["part", "flash", "RAM"],
                [[c, _kb(fw["flash_by_component"].get(c, 0)), _kb(fw["ram_by_component"].get(c, 0))] for c in comps]
                + ([["stack high-water", "", _kb(fw["stack_high_water_bytes"])]] if "ram_bytes" in fw else [])
                + [["total (without test_io)", _kb(fw["flash_bytes"]),
                    _kb(fw.get("ram_bytes", fw["ram_static_bytes"] - fw["ram_by_component"].get("test_io", 0)))]])
    console.print(f"{fw['core']}, TFLM with {fw['kernels']} kernels; ELF {fw['elf']} (library "
                  f"{'cached' if fw['library_cached'] else 'built'}; "
                  f"link {fw['link_s']} s); arena {fw['arena_bytes']:,} B in .bss")
    if "instructions_per_inference" in fw:
        console.print(
            f"{fw['n_inputs']} test inputs on QEMU: class agreement with the TFLite interpreter "
            f"{100 * fw['class_agreement']:.1f} %, int8 outputs max diff {fw['output_max_lsb_diff']} LSB vs its "
            f"reference kernels ({fw['outputs_off_by_1_lsb']} off by 1), {fw['optimized_max_lsb_diff']} LSB vs its "
            f"optimized kernels ({fw['rounding']}-rounding TFLM; stock TFLM's interpreter on this host "
            f"{fw['tflm_host_max_lsb_diff']} LSB), device-quantised inputs max diff "
            f"{fw['input_max_lsb_diff']} LSB; accuracy {100 * fw['device_accuracy']:.1f} %\n"
            f"instructions per inference {fw['instructions_per_inference']:,} (+ pre-processing "
            f"{fw['preprocessing_instructions']:,}); arena used {fw['arena_used_bytes']:,} B; stack high-water "
            f"{fw['stack_high_water_bytes']:,} B")


@handle_errors
def export(
    model: Annotated[str, typer.Argument(help="registered model name")],
    version: Annotated[str, typer.Argument(help="registered version (an int8 .tflite variant)")],
    target: Annotated[str, typer.Option("--target", "-t", help="microcontroller board of the catalogue (or YAML)")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="c | cmake | arduino")] = "c",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="bundle directory (default: "
                                             "./export-MODEL-vVERSION-TARGET-FORMAT)")] = None,
    build: Annotated[bool, typer.Option("--build", help="also link firmware for the target's QEMU board "
                                        "(needs the Arm toolchain and a TFLM tree)")] = False,
    run: Annotated[bool, typer.Option("--run", help="build, run on test inputs under QEMU and compare with the "
                                      "TFLite interpreter")] = False,
    tflm_dir: Annotated[str | None, typer.Option("--tflm-dir", help="tflite-micro tree (default "
                                                 "$TINYMLOPS_TFLM_DIR)")] = None,
    inputs: Annotated[int, typer.Option("--inputs", "-n", min=1, max=2000, help="test inputs run on the device")
                      ] = 100,
    no_log: Annotated[bool, typer.Option("--no-log", help="do not log the bundle on the version in MLflow")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")] = False,
) -> None:
    """Export a registered int8 model as a self-contained C/C++ bundle for a microcontroller target.

    The bundle has the model as an aligned const array, an op resolver with exactly its ops, the measured arena
    (with margin), quantisation parameters, labels, the pre-processing in C99, tm_run_inference() and an example;
    it is signed (export.json + export.sig) and logged on the version as export/<target>/<format>. --build links
    firmware for QEMU's mps2 board of the core (M4 an386, M7 an500, M33 an505) with the TFLM library built once per
    core and cached; --run runs it on test inputs and reports flash, RAM and instructions per inference.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from tinymlops import registry
    from tinymlops.export.run import run_export

    registry.connect()
    res = run_export(model, version, target, fmt, out, build=build, run=run, tflm_dir=tflm_dir, n_inputs=inputs,
                     log_to_mlflow=not no_log, say=err_console.print)
    if json_out:
        print_json(res.to_dict())
        return
    console.print(f"wrote {res.format} bundle {res.out_dir} ({len(res.files)} files, signed by key {res.key_id})")
    console.print(f"ops {', '.join(res.ops)}; arena {res.arena_bytes:,} B (TFLM measured "
                  f"{res.arena_measured_bytes:,} B + margin)" + (f"; logged as {res.artifact_path}"
                                                                 if res.artifact_path else ""))
    if res.firmware:
        _print_firmware(res.firmware)


@handle_errors
def verify_export(
    bundle: Annotated[Path, typer.Argument(help="a directory written by tinymlops export")],
    public_key: Annotated[Path | None, typer.Option("--public-key", help="PEM public key (default: the project's "
                                                    "package signing key)")] = None,
) -> None:
    """Check an exported bundle's signature and that no file changed since export (exit 2 naming what differs)."""
    from tinymlops.errors import UsageError
    from tinymlops.export.bundle import EXPORT_MANIFEST, verify_bundle
    from tinymlops.fleet.packages import default_public_key_path, load_public_key

    if not (bundle / EXPORT_MANIFEST).is_file():
        raise UsageError(f"{bundle}: no {EXPORT_MANIFEST}; not a tinymlops export")
    manifest = verify_bundle(bundle, load_public_key(public_key or default_public_key_path()))
    console.print(f"{bundle}: signature OK (key {manifest['key_id']}), {len(manifest['files'])} files unchanged; "
                  f"{manifest['model_name']} v{manifest['model_version']} for {manifest['target']}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("export")(export)
    app.command("verify-export")(verify_export)
