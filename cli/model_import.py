"""CLI command ``tinymlops import``: register an existing model file as a version of a registered model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli._common import console, err_console, handle_errors, print_json, run_flow

IMPORT_HELP = """Register an existing model file as a new version of MODEL, evaluated on the config's dataset.

.tflite and .onnx files are registered as they are (variant `imported`, tags source_path and source_sha256),
evaluated on the test split in their runtime (int8 TFLite also in TFLite Micro) and packaged like any version, so
`tinymlops profile MODEL`, `tinymlops compress` (what the format allows: ONNX float -> onnx-int8; TFLite -> none)
and rollout packaging work on them. A Keras file (.keras, .h5, SavedModel directory) is fine-tuned for
train.epochs epochs (0: evaluated as is) and registered as float32, exactly as `model: {file: ...}` in the config.

The dataset, pre-processing and MLflow store come from --config; the model name from --name. Runs in this process.

Examples:

  tinymlops import model.tflite --name my-classifier --config my-project/pipeline.yaml

  tinymlops import exported.onnx --name my-classifier --json
"""


@handle_errors
def import_model(
    file: Annotated[Path, typer.Argument(help="model file: .tflite, .onnx, .keras, .h5 or a SavedModel directory")],
    name: Annotated[str, typer.Option("--name", "-n", help="registered model to add the version to")],
    config: Annotated[Path, typer.Option("--config", "-c", help="pipeline YAML giving the dataset, "
                                         "pre-processing and MLflow store")] = Path("configs/pipeline.yaml"),
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
) -> None:
    """Register an existing model file as a new version (evaluated on the config's test split)."""
    from tinymlops.config import load_pipeline
    from tinymlops.errors import UsageError
    from tinymlops.models.config import ModelSection

    if not name.strip():
        raise UsageError("--name: give the registered model name to add the version to")
    cfg = load_pipeline(config)
    from pydantic import ValidationError

    try:
        section = ModelSection(file=str(file.resolve()))
    except ValidationError as exc:  # keep the validator's reason, name the argument
        raise UsageError(f"FILE: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    cfg = cfg.model_copy(update={"model": section, "mlflow": cfg.mlflow.model_copy(update={"registered_model": name})})
    say = None if json_out else err_console.print
    if section.kind in ("tflite", "onnx"):
        from tinymlops.importer import run_import

        out = run_flow(run_import, cfg, progress=say, key="FILE").to_dict()
    else:
        from tinymlops.train import run_train

        out = run_flow(run_train, cfg, progress=say).to_dict()
    if json_out:
        print_json(out)
        return
    m = out["metrics"]
    console.print(f"[green]registered[/] {out['model_uri']}  test accuracy {m['test_accuracy']:.2%}  "
                  f"macro-F1 {m['test_macro_f1']:.3f}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("import", help=IMPORT_HELP)(import_model)
