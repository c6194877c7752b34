"""``tinymlops doctor``: find MLflow runs a crashed process left RUNNING and, with --fix, end them KILLED."""

from __future__ import annotations

from typing import Annotated

import typer

from cli._common import console, handle_errors, print_json, print_table


@handle_errors
def doctor(
    fix: Annotated[bool, typer.Option("--fix", help="end runs whose process is gone KILLED; tag their versions "
                                                    "tinymlops.incomplete=crashed")] = False,
    unowned: Annotated[bool, typer.Option("--unowned", help="with --fix: also end RUNNING runs that carry no "
                                                            "owner tags (opened by other tools or old versions)")]
    = False,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
) -> None:
    """Check the MLflow store for runs left RUNNING by a crash (exit 0 healthy, 1 if problems remain).

    Every run tinymlops opens is tagged with its host and pid; runs of a live process on this host and runs of
    other hosts are never touched.
    """
    from dataclasses import asdict

    from tinymlops import hygiene, registry

    registry.connect()
    findings = hygiene.diagnose(fix=fix, unowned=unowned)
    problems = [f for f in findings if f.problem]
    incomplete = [{"model": v.name, "version": v.version, "run_id": v.run_id,
                   "incomplete": v.tags[hygiene.INCOMPLETE_TAG], "aliases": v.aliases}
                  for v in registry.incomplete_versions()]
    if json_out:
        print_json({"store": registry.tracking_uri(), "healthy": not problems, "problems": len(problems),
                    "runs": [{**asdict(f), "problem": f.problem} for f in findings],
                    "incomplete_versions": incomplete})
        if problems:
            raise typer.Exit(1)
        return
    if incomplete:  # kept for the record (an alias may point at one); not deployable as a finished version
        print_table(f"versions tagged {hygiene.INCOMPLETE_TAG} (their run was cut off)",
                    ["model", "version", "why", "aliases", "run"],
                    [[v["model"], v["version"], v["incomplete"], ", ".join(v["aliases"]), v["run_id"]]
                     for v in incomplete])
    if not findings:
        console.print(f"[green]healthy[/] {registry.tracking_uri()}: no run is left RUNNING")
    else:
        print_table(f"RUNNING runs in {registry.tracking_uri()}", ["run", "name", "owner", "owner state", "action"],
                    [[f.run_id, f.name, f.owner, f.state, f.action] for f in findings])
        verdict = f"[red]{len(problems)} stale run(s)[/]" if problems else "[green]healthy[/]"
        console.print(f"{verdict}: {len(findings) - len(problems)} of {len(findings)} RUNNING run(s) need no action")
    if problems:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("doctor")(doctor)
