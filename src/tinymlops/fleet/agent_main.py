"""``tinymlops-agent`` (``python -m tinymlops.fleet.agent_main``): the edge agent's own command, what a device runs.

It starts only what a serving agent uses, so that it fits a small device's memory: argparse instead of
typer/rich/click, no FastAPI/SQLAlchemy/MLflow/Prefect/TensorFlow, and of the model runtimes only the one the
installed package's target names (onnxruntime or LiteRT, imported when the first package is opened).
``tinymlops agent`` (the full CLI) is the same agent with the same options: it parses with typer and calls
:func:`run` here. A simulated device (``--input synthetic``, ``--drift-*``, ``--emulate-target-timing``) needs the
simulator, which production code never imports: ``tinymlops agent`` or ``python -m tinymlops.sim.agent`` pass
it in as a :class:`Simulation`.

Exit codes: 0 when the run ends (--duration, --max-reports, end of a finite --input), 2 for usage and
configuration errors (one line naming the option, file or value), 3 when the server refuses the device for good
(enrolment or telemetry refused), 130/143 when stopped by SIGINT/SIGTERM (after the current step; an install cut
short leaves the previous package in place).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tinymlops.fleet.agent import Agent, AgentConfig
    from tinymlops.fleet.inputs import InputSource
    from tinymlops.fleet.install import Installed

PROG = "tinymlops-agent"
DEFAULT_SERVER = "http://127.0.0.1:8700"
INPUT_HELP = ("where sensor windows come from: a .npy file (windows x samples x channels), a JSON-lines file or - "
              "(stdin), unix:PATH or tcp:HOST:PORT (a sensor process writing JSON lines)")
SYNTHETIC_HELP = (", or synthetic (the simulator's vibration stream; --seed and --drift-* apply to it only)")
EPILOG = """examples:
  # first start: enrol with a one-time token (from `tinymlops fleet enrol-token`), then serve a sensor on stdin
  TINYMLOPS_ENROLMENT_TOKEN=... sensor-reader | tinymlops-agent --server https://fleet.example:8700 \\
      --ca-cert fleet-ca.pem --device-id pump-0042 --target raspberry-pi-zero-2-w --trusted-key root.pub --input -
  # a sensor process writing JSON lines on a Unix socket; state (credential, packages) under /data/device
  tinymlops-agent --server http://127.0.0.1:8700 --device-id dev-1 --target host-onnxruntime \\
      --input unix:/run/sensor.sock --state-dir /data/device

exit codes: 0 run ended (--duration, --max-reports, end of a finite --input); 2 usage or configuration error;
3 the server refused this device (enrolment or telemetry); 130/143 stopped by SIGINT/SIGTERM.
Full manual: docs/fleet.md (inputs, enrolment, keys) and docs/deploy.md (the agent image)."""


@dataclass
class AgentOptions:
    """The agent command's options (``tinymlops-agent`` and ``tinymlops agent`` share them)."""

    server: str = DEFAULT_SERVER
    device_id: str = ""
    target: str = ""
    input_spec: str | None = None
    state_dir: Path | None = None
    enrolment_token_file: Path | None = None
    trusted_key: Path | None = None
    credential_max_age: float | None = None
    personalise: bool = False
    report_interval: float = 10.0
    inference_interval: float = 0.1
    duration: float | None = None
    max_reports: int | None = None
    targets_dir: Path | None = None
    runtime: str | None = None
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    insecure: bool = False
    verbose: bool = False
    # simulation (a Simulation must be given to run() for these)
    seed: int = 0
    drift_gain: float | None = None
    drift_offset: float | None = None
    drift_noise_std: float | None = None
    drift_shaft_hz: float | None = None
    drift_after: float = 0.0
    emulate_target_timing: bool = False

    def simulated(self) -> list[str]:
        """Return the simulation options this run sets (flag names)."""
        used = [f"--drift-{k.removeprefix('drift_').replace('_', '-')}" for k in
                ("drift_gain", "drift_offset", "drift_noise_std", "drift_shaft_hz") if getattr(self, k) is not None]
        used += ["--drift-after"] * bool(self.drift_after) + ["--emulate-target-timing"] * self.emulate_target_timing
        return used


class Simulation(Protocol):
    """What a simulated device adds to the agent (provided by ``tinymlops.sim``, never imported here)."""

    def open_input(self, opts: AgentOptions) -> InputSource:
        """Open the synthetic input stream (``--input synthetic``) with the options' seed and drift."""
        ...

    def runner_factory(self, opts: AgentOptions) -> Callable[[Installed, str], Any] | None:
        """Return the runner factory of ``--emulate-target-timing`` (None: the real runtime's timing)."""
        ...


def _positive(minimum: float, kind: type = float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is below the minimum {minimum:g}")
        return value

    return parse


def build_parser(simulated: bool = False) -> argparse.ArgumentParser:
    """Return the command's parser (``simulated``: with the simulator's options, ``--input`` defaults to synthetic)."""
    p = argparse.ArgumentParser(
        prog=PROG if not simulated else "python -m tinymlops.sim.agent", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the edge agent for one device: enrol once, poll the fleet service's desired state, "
                    "install packages whose signature verifies against the trusted key, run inference on the "
                    "sensor input and report telemetry sketches (raw inputs stay on the device).")
    p.add_argument("--server", default=os.environ.get("TINYMLOPS_FLEET_URL", DEFAULT_SERVER),
                   help="fleet service URL (env TINYMLOPS_FLEET_URL; default %(default)s)")
    p.add_argument("--device-id", required=True, help="this device's id")
    p.add_argument("--target", required=True, help="catalogue target this device is (e.g. host-onnxruntime)")
    p.add_argument("--input", dest="input_spec", required=not simulated, default="synthetic" if simulated else None,
                   metavar="SOURCE", help=INPUT_HELP + (SYNTHETIC_HELP if simulated else ""))
    p.add_argument("--state-dir", type=Path, help="where packages and the credential live "
                                                  "(default <home>/agents/<device-id>; <home> is $TINYMLOPS_HOME)")
    p.add_argument("--enrolment-token-file", type=Path, metavar="FILE",
                   help="file holding the one-time enrolment token (first start only; or set "
                        "TINYMLOPS_ENROLMENT_TOKEN; never on the command line, where `ps` shows it)")
    p.add_argument("--trusted-key", type=Path, metavar="PEM",
                   help="Ed25519 key the device is provisioned with: root.pub after a `keys rotate` (the device then "
                        "follows signed key updates), else <home>/keys/package_signing.pub")
    p.add_argument("--credential-max-age", type=_positive(60.0), metavar="SECONDS",
                   help="rotate the device credential when it is older than this (>= 60; the old one stops "
                        "working at the new one's first use)")
    p.add_argument("--personalise", action="store_true",
                   help="adapt the model to this device's inputs and labels on the device (also switched on per "
                        "cohort by `tinymlops fleet personalise`); only hit counts are reported")
    p.add_argument("--report-interval", type=_positive(0.05), default=10.0, metavar="SECONDS",
                   help="seconds between telemetry reports (>= 0.05; default %(default)s)")
    p.add_argument("--inference-interval", type=_positive(0.0), default=0.1, metavar="SECONDS",
                   help="seconds between inferences (default %(default)s)")
    p.add_argument("--duration", type=_positive(0.0), metavar="SECONDS", help="stop after N seconds "
                                                                             "(default: run forever)")
    p.add_argument("--max-reports", type=_positive(1, int), metavar="N", help="stop after N telemetry reports")
    p.add_argument("--targets-dir", type=Path, metavar="DIR", help="target catalogue directory")
    p.add_argument("--runtime", help="override the runtime named by the target (onnxruntime, tflite, tflm-...)")
    tls = p.add_argument_group("TLS")
    tls.add_argument("--ca-cert", type=Path, metavar="PEM", help="trust only this CA for an https:// server")
    tls.add_argument("--client-cert", type=Path, metavar="PEM", help="present this certificate (mutual TLS)")
    tls.add_argument("--client-key", type=Path, metavar="PEM", help="private key of --client-cert")
    tls.add_argument("--insecure", action="store_true", help="allow plain HTTP to a non-loopback server")
    p.add_argument("-v", "--verbose", action="store_true", help="log every step")
    if simulated:
        sim = p.add_argument_group("simulation (--input synthetic)")
        sim.add_argument("--seed", type=int, default=0, help="seed of the synthetic stream")
        for name, what in (("gain", "sensor gain"), ("offset", "sensor offset"), ("noise-std", "noise std"),
                           ("shaft-hz", "machine speed (Hz)")):
            sim.add_argument(f"--drift-{name}", type=float, help=f"drift: {what}")
        sim.add_argument("--drift-after", type=_positive(0.0), default=0.0, metavar="SECONDS",
                         help="seconds before the drift starts")
        sim.add_argument("--emulate-target-timing", action="store_true",
                         help="report the target's profiled latency/memory (with jitter), not this host's")
    return p


def build_config(opts: AgentOptions) -> AgentConfig:
    """Turn the options into the agent's configuration (UsageError/ConfigError naming the option or file)."""
    from tinymlops import settings
    from tinymlops.errors import UsageError
    from tinymlops.fleet import packages
    from tinymlops.fleet.agent import AgentConfig
    from tinymlops.fleet.tls import client_verify
    from tinymlops.profile.targets import get_target

    if not opts.device_id or not opts.target:
        raise UsageError("--device-id and --target are required")
    token = os.environ.get("TINYMLOPS_ENROLMENT_TOKEN") or None
    if opts.enrolment_token_file is not None:
        if not opts.enrolment_token_file.is_file():
            raise UsageError(f"{opts.enrolment_token_file}: enrolment token file not found")
        token = opts.enrolment_token_file.read_text().strip() or None
    tgt = get_target(opts.target, opts.targets_dir)
    return AgentConfig(
        server=opts.server, device_id=opts.device_id, target=opts.target, runtime=opts.runtime or tgt.runtime,
        state_dir=opts.state_dir or settings.home() / "agents" / opts.device_id,
        trusted_keys=[packages.load_public_key(opts.trusted_key or packages.default_public_key_path())],
        enrolment_token=token, report_interval_s=opts.report_interval, inference_interval_s=opts.inference_interval,
        energy_mw=tgt.active_power_mw, duration_s=opts.duration, max_reports=opts.max_reports,
        verify=client_verify(opts.server, opts.ca_cert, opts.client_cert, opts.client_key, opts.insecure),
        credential_max_age_s=opts.credential_max_age, personalise=opts.personalise)


def open_source(opts: AgentOptions, simulation: Simulation | None) -> InputSource:
    """Open the agent's input: a real source (:mod:`tinymlops.fleet.inputs`) or the simulation's stream."""
    from tinymlops.errors import UsageError
    from tinymlops.fleet.inputs import open_input

    spec = opts.input_spec or "synthetic"
    if spec == "synthetic":
        if simulation is None:
            raise UsageError("--input synthetic is the simulator's stream, not a device's: give --input (a file, "
                             "-, unix:PATH or tcp:HOST:PORT), or run `python -m tinymlops.sim.agent`")
        return simulation.open_input(opts)
    if [f for f in opts.simulated() if f.startswith("--drift")]:
        raise UsageError(f"--drift-* apply to --input synthetic only, not --input {spec}")
    return open_input(spec)


def run_until_signal(a: Agent) -> int:
    """Run the agent until it ends (0) or SIGINT/SIGTERM cancels it (130/143); AgentStopped propagates."""
    import asyncio
    import signal

    got: list[int] = []

    async def main() -> None:
        task = asyncio.ensure_future(a.run())
        loop = asyncio.get_running_loop()

        def stop(sig: int) -> None:  # stop after the current step; installs are atomic
            got.append(sig)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig)
        try:
            await task
        except asyncio.CancelledError:
            if not got:
                raise

    asyncio.run(main())
    return 128 + got[0] if got else 0


def run(opts: AgentOptions, simulation: Simulation | None = None) -> int:
    """Run the agent with these options and return the exit code (errors raise, see :func:`main`).

    Prints one summary line on stderr at the end (reports sent, inferences, the package it runs).
    """
    import logging

    from tinymlops.errors import UsageError
    from tinymlops.fleet.agent import Agent, AgentStopped

    if opts.emulate_target_timing and simulation is None:
        raise UsageError("--emulate-target-timing needs the simulator (`python -m tinymlops.sim.agent`)")
    logging.basicConfig(level=logging.INFO if opts.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    cfg = build_config(opts)
    source = open_source(opts, simulation)
    try:
        factory = simulation.runner_factory(opts) if simulation is not None else None
        a = Agent(cfg, source, runner_factory=factory)
        try:
            code = run_until_signal(a)
        except AgentStopped as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 3
    finally:
        source.close()
    print(f"{cfg.device_id}: {a.reports_sent} reports, {a.inferences} inferences, running "
          f"{a.installed.package_id if a.installed else 'nothing'}"
          + (f"; stopped by signal (exit {code})" if code else ""), file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None, simulation: Simulation | None = None) -> int:
    """Parse the command line, run the agent, and turn expected failures into one line and an exit code."""
    # httpx imports its own command-line client (click, rich, pygments: ~8 MB resident) whenever those are
    # installed; the agent never uses it. A None entry makes that optional import fail, as on a device without them.
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from tinymlops.errors import TinyMLOpsError

    parser = build_parser(simulated=simulation is not None)
    ns = parser.parse_args(argv)  # usage errors: argparse prints the usage line and exits 2
    opts = AgentOptions(**{f.name: getattr(ns, f.name) for f in fields(AgentOptions) if hasattr(ns, f.name)})
    try:
        return run(opts, simulation)
    except TinyMLOpsError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except FileNotFoundError as exc:
        print(f"{parser.prog}: error: {exc.filename or exc}: file not found", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the agent's loop installed its handlers
        return 130


if __name__ == "__main__":
    sys.exit(main())
