"""``tinymlops fleet personalise``: switch a cohort's on-device personalisation on or off, or list the switches.

Agents of a switched-on cohort adapt the fleet's model to their own inputs and labels (``tinymlops.personalise``:
feature calibration and/or a small head, chosen by cross-validation on the device's labelled samples) and report
only hit counts; the drift check shows fleet-model vs personalised accuracy per cohort. A drift config with
``retrain: {strategy: personalise}`` does the same for the cohorts whose verdict is retrain.
"""

from __future__ import annotations

import re
import time
from typing import Annotated

import typer

from cli._common import console, print_json, print_table
from cli.fleet import DEFAULT_SERVER, JsonOpt, ServerOpt, TokenOpt, _client

_COHORT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def personalise(cohort: Annotated[str | None, typer.Argument(help="cohort to switch (omit with --list)")] = None,
                off: Annotated[bool, typer.Option("--off", help="switch it off: the fleet's model as it is")] = False,
                reason: Annotated[str, typer.Option(help="recorded with the switch")] = "",
                list_: Annotated[bool, typer.Option("--list", help="list the cohorts' switches")] = False,
                server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Switch on-device personalisation for a cohort (deploy token); devices follow on their next poll.

    Examples: `tinymlops fleet personalise line-b`, `tinymlops fleet personalise line-b --off`,
    `tinymlops fleet personalise --list --json`.
    """
    from tinymlops.errors import UsageError

    if list_:
        with _client(server, token) as op:
            rows = op.personalise_settings()
        if json_out:
            print_json(rows)
        else:
            print_table("on-device personalisation", ["cohort", "on", "since", "reason"],
                        [[r["cohort"], "yes" if r["enabled"] else "no",
                          time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["set_unix_s"])), r["reason"]] for r in rows])
        return
    if cohort is None:
        raise UsageError("give a COHORT to switch, or --list")
    if not _COHORT.match(cohort):
        raise UsageError(f"cohort {cohort!r}: expected letters, digits, '.', '_' or '-' (at most 64)")
    with _client(server, token) as op:
        out = op.set_personalise(cohort, not off, reason)
    if json_out:
        print_json(out)
    else:
        console.print(f"cohort {cohort}: on-device personalisation {'on' if out['enabled'] else 'off'} "
                      f"({out['devices']} device(s); they follow on their next poll)")


def register(fleet_app: typer.Typer) -> None:
    """Add ``personalise`` to ``tinymlops fleet``."""
    from cli._common import handle_errors

    fleet_app.command("personalise")(handle_errors(personalise))
