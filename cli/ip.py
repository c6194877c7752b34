"""CLI commands of the model-IP area: ``tinymlops ip verify | trace | fingerprint`` (see docs/ip.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli._common import console, handle_errors, print_json
from tinymlops.errors import UsageError

ip_app = typer.Typer(help="Model IP: verify the owner watermark, trace a leaked package to its device, "
                          "fingerprint a cohort's packages per device.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")]


@handle_errors
def verify(
    suspect: Annotated[str | None, typer.Argument(help="suspect model: .tflite, .onnx, .h5/.keras or a package "
                                                 "directory (white-box); omit with --endpoint/--callable")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="registered model whose watermark to look for")] = "",
    version: Annotated[str | None, typer.Option(help="registered version (default: the latest float32)")] = None,
    endpoint: Annotated[str | None, typer.Option(help="black-box: POST {'inputs': [...]} to this URL; it answers "
                                                 "{'labels': [...]} or {'outputs': [[...]]}")] = None,
    callable_: Annotated[str | None, typer.Option("--callable", help="black-box: module:function taking a batch "
                                                  "of model inputs, returning labels or scores")] = None,
    alpha: Annotated[float, typer.Option(min=1e-300, max=0.5, help="claim ownership below this false-claim "
                                         "probability")] = 1e-6,
    json_out: JsonOpt = False,
) -> None:
    """Check a suspect model for the owner watermark; print matches on the secret trigger set and the p-value.

    The p-value is the probability that a model trained independently of ours matches the secret labels that
    often (binomial, chance 1/classes). Exit 0 whatever the verdict; 2 for bad input.
    Example: tinymlops ip verify stolen.tflite --model digits-classifier --json
    """
    from tinymlops import registry
    from tinymlops.ip import watermark

    if not model:
        raise UsageError("--model is required (the registered model whose watermark to check)")
    given = [x for x in (suspect, endpoint, callable_) if x]
    if len(given) != 1:
        raise UsageError("give exactly one suspect: a SUSPECT_FILE, --endpoint URL or --callable module:function")
    registry.connect()
    wm = watermark.load(model, version)
    if suspect:
        v = watermark.verdict(wm, watermark.predict_file(suspect, wm.inputs), "white-box", suspect, alpha)
    elif endpoint:
        v = watermark.verdict(wm, watermark.query_endpoint(endpoint, wm.inputs), "black-box", endpoint, alpha)
    else:
        fn = watermark.load_callable(str(callable_))
        try:
            answers = fn(wm.inputs)
        except Exception as exc:  # the suspect's code failing is bad input, not our crash
            raise UsageError(f"--callable {callable_}: raised {type(exc).__name__}: {exc}") from None
        v = watermark.verdict(wm, answers, "black-box", str(callable_), alpha)
    if json_out:
        print_json(v.to_dict())
        return
    colour = "green" if v.verified else "yellow"
    console.print(f"[{colour}]{'watermark found' if v.verified else 'no watermark found'}[/] in {v.suspect} "
                  f"({v.mode}): {v.matches}/{v.triggers} trigger labels match (chance {1 / v.n_classes:.0%}); "
                  f"false-claim p-value {v.p_value:.3g} (claim below {v.alpha:g})")


@handle_errors
def trace(
    leaked: Annotated[Path, typer.Argument(help="leaked .tflite file or package directory")],
    model: Annotated[str, typer.Option("--model", "-m", help="registered model the leak is a copy of")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Name the device a leaked fingerprinted package came from (exit 0 whether or not one is named).

    Example: tinymlops ip trace leaked/model.tflite --model digits-classifier
    """
    from tinymlops import registry
    from tinymlops.ip import fingerprint

    if not model:
        raise UsageError("--model is required (the registered model the leak is a copy of)")
    registry.connect()
    t = fingerprint.trace(leaked, model)
    if json_out:
        print_json(t.to_dict())
        return
    if t.device_id:
        console.print(f"[green]{t.device_id}[/]: {t.score:.0%} of its fingerprint is in {leaked} "
                      f"({model} v{t.version} for {t.target}; next best {t.runner_up} {t.runner_up_score:.0%}, "
                      f"{t.devices_checked} devices checked)")
    else:
        console.print(f"[yellow]no device named[/]: {t.reason} (best {t.score:.0%}, {t.devices_checked} checked)")


@handle_errors
def fingerprint_cmd(
    model: Annotated[str, typer.Argument(help="registered model name")],
    version: Annotated[str, typer.Argument(help="registered int8 .tflite version")],
    target: Annotated[str, typer.Option("--target", "-t", help="target board of the cohort's devices")],
    cohort: Annotated[str, typer.Option("--cohort", "-c", help="cohort whose devices each get their own package")],
    weights: Annotated[int, typer.Option(min=8, max=4096, help="int8 weights nudged by one LSB per device")] = 48,
    fleet_db: Annotated[str | None, typer.Option(help="fleet store URL (default: the recorded fleet)")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Publish a signed, device-fingerprinted package per device of a cohort and set it as each one's desired.

    Example: tinymlops ip fingerprint digits-classifier 3 --target nucleo-l4r5zi --cohort line-a
    """
    from tinymlops import registry, settings
    from tinymlops.fleet.store import open_store
    from tinymlops.ip import fingerprint

    registry.connect()
    st = open_store(settings.fleet_db_url(fleet_db))
    published = fingerprint.publish_fingerprinted(st, model, version, target, cohort, weights)
    if json_out:
        print_json({"model": model, "version": version, "target": target, "cohort": cohort, "packages": published})
        return
    console.print(f"{len(published)} devices of cohort {cohort} each got their own fingerprinted package of "
                  f"{model} v{version} ({weights} weights per device)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    ip_app.command("verify")(verify)
    ip_app.command("trace")(trace)
    ip_app.command("fingerprint")(fingerprint_cmd)
    app.add_typer(ip_app, name="ip")
