"""The ``tinymlops`` command: parses, loads config, calls flows or the library; no logic lives here.

Every area registers its commands from its own module; all of them keep heavy imports inside the commands.
"""

from __future__ import annotations

import typer

from cli import (
    compress,
    doctor,
    drift,
    export,
    federate,
    fleet,
    init,
    ip,
    keys,
    license,
    model_import,
    pipeline,
    profile,
    rollout,
    server,
    store,
)

app = typer.Typer(
    name="tinymlops",
    help="MLOps for tiny devices: train, compress, profile per target, monitor drift privately, roll out in stages.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

for _module in (init, pipeline, model_import, compress, profile, export, federate, fleet, keys, license, ip, drift,
                rollout, doctor, store, server):
    _module.register(app)


def main() -> None:
    """Entry point of the console script."""
    app()
