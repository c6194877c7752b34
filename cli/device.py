"""CLI commands of what goes onto a device: ``tinymlops package`` (a signed package) and ``tinymlops agent``.

The agent reads its sensor windows from ``--input`` (a file, stdin, a Unix or TCP socket; see docs/fleet.md), or
from the simulator's synthetic stream, and stops on SIGINT/SIGTERM with exit code 130/143.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli._common import console, handle_errors, print_json
from cli.fleet import DEFAULT_SERVER, JsonOpt, ServerOpt, TokenOpt, _client
from tinymlops.fleet import agent_main


def package(model: Annotated[str, typer.Argument(help="registered model name")],
            version: Annotated[str, typer.Argument(help="registered version")],
            target: Annotated[str, typer.Option(help="catalogue target the package is for")],
            out: Annotated[Path | None, typer.Option(help="write the package directory here")] = None,
            upload: Annotated[bool, typer.Option(help="upload it to the fleet service")] = False,
            server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
            targets_dir: Annotated[Path | None, typer.Option(help="target catalogue directory")] = None,
            encrypt: Annotated[bool, typer.Option(help="encrypt the model per device (needs --upload)")] = False,
            licensed: Annotated[bool, typer.Option(help="devices run it only under a licence (`tinymlops license "
                                                        "issue`), metered offline")] = False,
            json_out: JsonOpt = False) -> None:
    """Build a signed package (manifest + model, Ed25519) for a target from a registered MLflow version.

    The signing key lives in <home>/keys/ (generated on first use); devices trust package_signing.pub.
    --encrypt: the model is uploaded encrypted; only devices it is deployed to get its key (wrapped for each).
    --licensed: devices serve it only under a licence for the model, counted offline (docs/ip.md, Licensing).
    """
    from tinymlops.errors import UsageError
    from tinymlops.fleet import packages

    if out is None and not upload:
        raise UsageError("give --out DIR and/or --upload")
    if encrypt and not upload:
        raise UsageError("--encrypt needs --upload (the content key is kept here, the ciphertext on the server)")
    bundle = packages.build_package(model, version, target, targets=targets_dir, encrypt=encrypt, licensed=licensed)
    info = {"package_id": bundle.id, "model": model, "version": str(version), "target": target,
            "sha256": bundle.manifest["sha256"], "size_bytes": bundle.manifest["size_bytes"],
            "key_id": bundle.manifest["key_id"], "licensed": licensed}
    if out is not None:
        info["path"] = str(bundle.write(out))
    if upload:
        with _client(server, token) as op:
            op.upload(bundle)
        info["uploaded_to"] = server
    if json_out:
        print_json(info)
    else:
        console.print(f"package {bundle.id} ({info['size_bytes']} bytes, key {info['key_id']})"
                      + (f" -> {info['path']}" if out else "") + (" uploaded" if upload else ""))


INPUT_HELP = agent_main.INPUT_HELP + agent_main.SYNTHETIC_HELP
SIM = "Simulation (--input synthetic)"


def agent(server: ServerOpt = DEFAULT_SERVER,
          device_id: Annotated[str, typer.Option(help="this device's id")] = "",
          target: Annotated[str, typer.Option(help="catalogue target this device is")] = "",
          input_spec: Annotated[str, typer.Option("--input", help=INPUT_HELP)] = "synthetic",
          state_dir: Annotated[Path | None, typer.Option(help="where packages and the credential live "
                                                              "(default <home>/agents/<device-id>)")] = None,
          enrolment_token_file: Annotated[Path | None, typer.Option(
              help="file holding the one-time enrolment token (first start only; or set "
                   "TINYMLOPS_ENROLMENT_TOKEN; never on the command line, where `ps` shows it)")] = None,
          trusted_key: Annotated[Path | None, typer.Option(help="Ed25519 key the device is provisioned with: "
                                                                "root.pub after a `keys rotate` (the device then "
                                                                "follows signed key updates), else "
                                                                "<home>/keys/package_signing.pub")] = None,
          credential_max_age: Annotated[float | None, typer.Option(
              min=60.0, help="rotate the device credential when it is older than this many seconds "
                             "(the old one stops working at the new one's first use)")] = None,
          personalise: Annotated[bool, typer.Option(
              "--personalise", help="adapt the model to this device's inputs and labels on the device (also "
                                    "switched on per cohort by `tinymlops fleet personalise`)")] = False,
          report_interval: Annotated[float, typer.Option(min=0.05, help="seconds between telemetry reports")] = 10.0,
          inference_interval: Annotated[float, typer.Option(min=0.0, help="seconds between inferences")] = 0.1,
          duration: Annotated[float | None, typer.Option(help="stop after N seconds (default: run forever)")] = None,
          max_reports: Annotated[int | None, typer.Option(help="stop after N telemetry reports")] = None,
          targets_dir: Annotated[Path | None, typer.Option(help="target catalogue directory")] = None,
          runtime: Annotated[str | None, typer.Option(help="override the runtime named by the target")] = None,
          seed: Annotated[int, typer.Option(help="seed of the synthetic stream", rich_help_panel=SIM)] = 0,
          drift_gain: Annotated[float | None, typer.Option(help="drift: sensor gain", rich_help_panel=SIM)] = None,
          drift_offset: Annotated[float | None, typer.Option(help="drift: sensor offset",
                                                             rich_help_panel=SIM)] = None,
          drift_noise_std: Annotated[float | None, typer.Option(help="drift: noise std", rich_help_panel=SIM)] = None,
          drift_shaft_hz: Annotated[float | None, typer.Option(help="drift: machine speed (Hz)",
                                                               rich_help_panel=SIM)] = None,
          drift_after: Annotated[float, typer.Option(help="seconds before the drift starts",
                                                     rich_help_panel=SIM)] = 0.0,
          emulate_target_timing: Annotated[bool, typer.Option(
              help="simulated device: report the target's profiled latency/memory (with jitter), not this "
                   "host's", rich_help_panel=SIM)] = False,
          ca_cert: Annotated[Path | None, typer.Option(help="trust only this CA for an https:// server")] = None,
          client_cert: Annotated[Path | None, typer.Option(help="present this certificate (mutual TLS)")] = None,
          client_key: Annotated[Path | None, typer.Option(help="private key of --client-cert")] = None,
          insecure: Annotated[bool, typer.Option(help="allow plain HTTP to a non-loopback server")] = False,
          verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log every step")] = False) -> None:
    """Run the edge agent for one device: poll desired state, install verified packages, infer, report.

    SIGINT stops it with exit code 130, SIGTERM with 143 (after the current step; an install cut short leaves
    the previous package in place). A finite --input (a file) ends the agent after its last window.
    """
    from tinymlops.sim.agent import Simulation

    opts = agent_main.AgentOptions(
        server=server, device_id=device_id, target=target, input_spec=input_spec, state_dir=state_dir,
        enrolment_token_file=enrolment_token_file, trusted_key=trusted_key, credential_max_age=credential_max_age,
        personalise=personalise, report_interval=report_interval, inference_interval=inference_interval, duration=duration,
        max_reports=max_reports, targets_dir=targets_dir, runtime=runtime, ca_cert=ca_cert, client_cert=client_cert,
        client_key=client_key, insecure=insecure, verbose=verbose, seed=seed, drift_gain=drift_gain,
        drift_offset=drift_offset, drift_noise_std=drift_noise_std, drift_shaft_hz=drift_shaft_hz,
        drift_after=drift_after, emulate_target_timing=emulate_target_timing)
    code = agent_main.run(opts, Simulation())  # the same agent as `tinymlops-agent` (tinymlops.fleet.agent_main)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add the device commands to the main app."""
    app.command("package")(handle_errors(package))
    app.command("agent")(handle_errors(agent))
