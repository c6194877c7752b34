"""CLI commands of the store area: ``tinymlops store move`` / ``store relocate`` (a relocatable embedded store)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli._common import console, handle_errors, print_json

store_app = typer.Typer(help="The embedded MLflow store (<home>/mlflow.db + mlartifacts/): move it, or repair a "
                             "moved copy.", no_args_is_help=True)

MOVE_HELP = """Move the project home (MLflow store, artifacts, fleet DB, keys) to NEW_DIR and rewrite the artifact
locations MLflow keeps in mlflow.db, so runs' artifacts and registered versions still download.

The home is $TINYMLOPS_HOME or ./.tinymlops. Afterwards point TINYMLOPS_HOME at NEW_DIR (the command prints the
line). Stop other tinymlops/MLflow processes first. Example:

  tinymlops store move /data/tinymlops-home
"""

RELOCATE_HELP = """Repair a home that was already moved or copied by hand (mv, cp -r, rsync, a restored backup):
rewrite the locations in its mlflow.db from the old directory (found in the database, or --from) to where the
home is now. Run it with TINYMLOPS_HOME (or ./.tinymlops) naming the moved home.
"""


def _report(r: object, as_json: bool) -> None:
    from dataclasses import asdict

    from tinymlops.mlflow_store import Relocation

    assert isinstance(r, Relocation)
    if as_json:
        print_json({**asdict(r), "total": r.total})
        return
    if r.total == 0:
        console.print(f"{r.db}: locations already point at {r.new_home}; nothing to do", highlight=False)
        return
    console.print(f"{r.db}: {r.total} locations moved from {r.old_home} to {r.new_home} "
                  f"({', '.join(f'{k} {v}' for k, v in r.updated.items() if v)})", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""

    @store_app.command("move", help=MOVE_HELP)
    @handle_errors
    def move(new_dir: Annotated[Path, typer.Argument(help="new home directory (must not exist, or be empty)")],
             as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
        from tinymlops.mlflow_store import move_store

        r = move_store(new_dir)
        _report(r, as_json)
        if not as_json:
            console.print(f"now use it with:  export TINYMLOPS_HOME={r.new_home}", highlight=False, soft_wrap=True)

    @store_app.command("relocate", help=RELOCATE_HELP)
    @handle_errors
    def relocate(old: Annotated[Path | None, typer.Option("--from", help="directory the store was moved from "
                                                          "(default: found in mlflow.db)")] = None,
                 as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
        from tinymlops import mlflow_store as reloc

        _report(reloc.relocate(old_home=old), as_json)

    app.add_typer(store_app, name="store")
