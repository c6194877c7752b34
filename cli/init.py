"""``tinymlops init``: scaffold a runnable project from a template (config, builder, sample data, README)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli._common import console, handle_errors, print_json
from tinymlops.templates import TEMPLATES

_TEMPLATE_HELP = "one of: " + "; ".join(f"{k}: {v}" for k, v in TEMPLATES.items())


@handle_errors
def init(directory: Annotated[Path, typer.Argument(help="project directory (created; must be empty unless --force)")],
         template: Annotated[str, typer.Option("--template", "-t", help=_TEMPLATE_HELP)],
         name: Annotated[str | None, typer.Option(
             help="project name: MLflow experiment and registered model <name>-classifier (default: from DIR)")] = None,
         force: Annotated[bool, typer.Option(
             "--force", help="write into a non-empty DIR, overwriting the template's files (others are kept)")] = False,
         seed: Annotated[int, typer.Option(help="seed of the generated sample dataset")] = 0,
         json_out: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False) -> None:
    """Create a project that runs at once: configs/pipeline.yaml, configs/models.py, sample data, README.

    The sample data is generated here (seeded, offline) in the template's real format: a CSV with a label column
    (tabular), a sensor log CSV cut into windows per session (timeseries), WAV folders per class (audio), PNG
    folders per class (image). Then `cd DIR && tinymlops run` trains, compresses and profiles it with the
    project's own store in DIR/.tinymlops/.
    """
    from tinymlops.templates import scaffold

    out = scaffold(directory, template, name=name, force=force, seed=seed)
    if json_out:
        print_json(out.to_dict())
        return
    data = out.data
    what = ", ".join(f"{k} {v}" for k, v in data.items() if k not in ("path", "classes"))
    console.print(f"[green]created[/] project [bold]{out.project}[/] in {out.directory} (template {out.template})")
    for rel in out.files:
        console.print(f"  {rel}" + (f"  ({what}; classes {', '.join(map(str, data['classes']))})"
                                    if rel == data["path"] else ""), highlight=False)
    console.print("next:\n" + "\n".join(f"  {step}" for step in out.next_steps), highlight=False)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("init")(init)
