"""CLI commands of the fleet area: the service, signed packages, the edge agent and the fleet simulator.

``tinymlops fleet serve`` runs the service; ``tinymlops package`` builds a signed package from a registered
version; ``tinymlops agent`` is one device; ``tinymlops fleet simulate`` enrols and runs a whole fleet.
Heavy imports stay inside the commands.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli._common import console, err_console, handle_errors, print_json, print_table

if TYPE_CHECKING:
    import uvicorn

DEFAULT_SERVER = "http://127.0.0.1:8700"
fleet_app = typer.Typer(help="Fleet service, device enrolment, deployment and the fleet simulator.",
                        no_args_is_help=True)

ServerOpt = Annotated[str, typer.Option("--server", envvar="TINYMLOPS_FLEET_URL",
                                        help="fleet service URL")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", envvar="TINYMLOPS_OPERATOR_TOKEN",
    help="operator token (default: the one `fleet serve` wrote to <home>/fleet/operator-token)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
DbOpt = Annotated[str | None, typer.Option(
    "--db", envvar="TINYMLOPS_FLEET_DB",
    help="SQLAlchemy URL of the fleet database (default: the fleet the rollout demo recorded in <home>/fleet.json, "
         "else SQLite file <home>/fleet.db; PostgreSQL works too)")]
ReadServerOpt = Annotated[str | None, typer.Option(
    "--server", envvar="TINYMLOPS_FLEET_URL",
    help="ask this fleet service (default: read the fleet database directly, see --db)")]


def _fleet_db(db: str | None) -> str:
    """Resolve the fleet database (flag, env, recorded demo fleet, default) and say on stderr which one it is."""
    from tinymlops import settings

    url, why = settings.fleet_db_choice(db)
    err_console.print(f"fleet: {url}  ({why})", highlight=False, soft_wrap=True)
    return url


def _read_store(db: str | None):  # type: ignore[no-untyped-def]
    """Open the fleet database for reading (UsageError naming it if a SQLite file does not exist)."""
    from tinymlops.errors import UsageError
    from tinymlops.fleet import store

    url = _fleet_db(db)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"no fleet database at {url}: run `tinymlops fleet serve` or the demo, or pass --db/--server")
    return store.open_store(url)


def _token_file() -> Path:
    from tinymlops import settings

    d = settings.home() / "fleet"
    d.mkdir(parents=True, exist_ok=True)
    return d / "operator-token"


def _operator_token(token: str | None) -> str:
    from tinymlops.errors import UsageError

    if token:
        return token
    f = _token_file()
    if f.is_file():
        return f.read_text().strip()
    raise UsageError("no operator token: pass --token, set TINYMLOPS_OPERATOR_TOKEN, or run `tinymlops fleet serve` "
                     f"once (it writes {f})")


def _write_token(token: str) -> Path:
    f = _token_file()
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return f


def _client(server: str, token: str | None):  # type: ignore[no-untyped-def]
    from tinymlops.fleet.client import OperatorClient

    return OperatorClient(server, _operator_token(token))


@fleet_app.command("serve")
@handle_errors
def serve(db: DbOpt = None,
          host: Annotated[str, typer.Option(help="interface to bind (0.0.0.0 to accept remote devices)")] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8700,
          poll_interval: Annotated[float, typer.Option(min=0.1, help="seconds devices wait between polls")] = 5.0,
          targets_dir: Annotated[Path | None, typer.Option(help="target catalogue; devices must enrol "
                                                                "as one of its targets")] = None,
          workers: Annotated[int, typer.Option(min=1, max=64, help="server processes (one per core)")] = 1,
          keep_alive: Annotated[int, typer.Option(min=1, max=3600, help="seconds an idle device connection "
                                                  "stays open; above the devices' poll and report interval, each "
                                                  "device reuses one connection")] = 30,
          dev: Annotated[bool, typer.Option(help="development mode: /docs open, /openapi.json without a token")]
          = False,
          tls_cert: Annotated[Path | None, typer.Option(help="serve HTTPS with this certificate (PEM)")] = None,
          tls_key: Annotated[Path | None, typer.Option(help="private key of --tls-cert (PEM)")] = None,
          tls_client_ca: Annotated[Path | None, typer.Option(help="require client certificates signed by this "
                                                                  "CA (mutual TLS); a device's certificate must "
                                                                  "name its device id (CN or SAN)")] = None,
          insecure: Annotated[bool, typer.Option(help="allow plain HTTP on a non-loopback --host")] = False,
          ) -> None:
    """Run the fleet service (FastAPI + SQLAlchemy; /openapi.json needs an operator token unless --dev).

    On first start it creates an operator token, prints it once and stores it (mode 0600) in
    <home>/fleet/operator-token, where the other `tinymlops fleet` commands find it.
    """
    import uvicorn

    from tinymlops.fleet import service, store, tls
    from tinymlops.profile.targets import catalogue as target_catalogue

    ssl_kwargs = tls.server_ssl_kwargs(tls_cert, tls_key, tls_client_ca)
    tls.require_tls_off_loopback(host, bool(ssl_kwargs), insecure, "--host")
    st = store.open_store(_fleet_db(db))
    if not service.has_operator_token(st) or not _token_file().is_file():
        token = service.create_operator_token(st, "cli")
        path = _write_token(token)
        err_console.print(f"operator token (stored in {path}): {token}", highlight=False, soft_wrap=True)
    catalogue = target_catalogue(targets_dir)
    err_console.print(f"fleet service on {'https' if ssl_kwargs else 'http'}://{host}:{port}  db={st.url}  workers={workers}  "
                      f"targets={sorted(catalogue)}", highlight=False, soft_wrap=True)
    if workers == 1:
        app = service.create_app(st=st, poll_interval_s=poll_interval, known_targets=set(catalogue) or None,
                                 dev_mode=dev, bind_client_certs=tls_client_ca is not None)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_keep_alive=keep_alive, timeout_graceful_shutdown=5, **ssl_kwargs)
        server = uvicorn.Server(config)
        code = _serve_until_signal(lambda: server.run())
    else:
        st.dispose()  # migrated once here; each worker process opens its own engine
        os.environ.update({"TINYMLOPS_FLEET_DB": st.url, "TINYMLOPS_FLEET_POLL_S": str(poll_interval),
                           "TINYMLOPS_FLEET_TARGETS": ",".join(sorted(catalogue)),
                           "TINYMLOPS_FLEET_DEV": "1" if dev else "0",
                           "TINYMLOPS_FLEET_BIND_CERTS": "1" if tls_client_ca is not None else "0"})
        config = uvicorn.Config("tinymlops.fleet.service:create_app_from_env", factory=True, workers=workers,
                                host=host, port=port, log_level="warning", access_log=False,
                                timeout_keep_alive=keep_alive,
                                # a worker starting on a busy host may not answer the supervisor's first pings
                                # within uvicorn's default 5 s, and would be killed and restarted in a loop
                                timeout_graceful_shutdown=5, timeout_worker_healthcheck=30, **ssl_kwargs)
        code = _serve_until_signal(lambda: _run_workers(config))
    if code:
        err_console.print(f"fleet service stopped by signal (exit {code}); pending telemetry committed")
        raise typer.Exit(code)


class _Stopped(BaseException):
    """Raised by our signal handler once uvicorn has shut down and re-raised the signal it caught."""


def _serve_until_signal(run: Callable[[], int | None]) -> int:
    """Run a server until it returns (0) or SIGINT/SIGTERM stops it (130/143, after its graceful shutdown).

    uvicorn catches both signals itself, shuts down (the lifespan commits pending telemetry), restores the previous
    handlers (ours) and raises the signal again, which lands here; ``run`` may also return the signal it got.
    """
    import signal

    got: list[int] = []

    def on_signal(sig: int, _frame: object) -> None:
        got.append(sig)
        raise _Stopped

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        sig = run()
        if sig:
            got.append(sig)
    except _Stopped:
        pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 128 + got[0] if got else 0


def _run_workers(config: uvicorn.Config) -> int | None:
    """Run uvicorn's multi-worker supervisor; return the signal that stopped it (None if none did)."""
    import signal

    from uvicorn.supervisors.multiprocess import Multiprocess

    stopped_by: list[int] = []

    class Supervisor(Multiprocess):
        def handle_int(self) -> None:
            stopped_by.append(signal.SIGINT)
            super().handle_int()

        def handle_term(self) -> None:
            stopped_by.append(signal.SIGTERM)
            super().handle_term()

    Supervisor(config, sockets=[config.bind_socket()]).run()
    return stopped_by[0] if stopped_by else None


def _duration_s(text: str) -> float:
    """Parse a duration: seconds, or a number with s/m/h/d (``90d``, ``12h``)."""
    from tinymlops.errors import UsageError

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    scale = units.get(t[-1:], 0) if t else 0
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        value = -1.0
    if not 0 < value < 10 * 365 * 86400:
        raise UsageError(f"--ttl {text!r}: expected a duration like 3600, 45m, 12h or 90d (under 10 years)")
    return value


@fleet_app.command("operator-token")
@handle_errors
def operator_token(db: DbOpt = None, name: Annotated[str, typer.Option(help="who the token is for")] = "operator",
                   role: Annotated[str, typer.Option(
                       help="read: GET endpoints only; deploy: also upload packages, set desired state, enrolment "
                            "tokens; admin: everything (revoke devices, key updates)")] = "admin",
                   ttl: Annotated[str | None, typer.Option(
                       help="expire after this long (3600, 45m, 12h, 90d); refused with 401 after that")] = None,
                   save: Annotated[bool, typer.Option(help="also store it as this machine's default")] = False,
                   as_json: JsonOpt = False) -> None:
    """Create a new operator token directly in the fleet database and print it (only its hash is stored)."""
    import time

    from tinymlops.errors import UsageError
    from tinymlops.fleet import auth, service, store

    if role not in auth.ROLES:
        raise UsageError(f"--role {role!r}: expected one of {', '.join(auth.ROLES)}")
    ttl_s = _duration_s(ttl) if ttl is not None else None
    token = service.create_operator_token(store.open_store(_fleet_db(db)), name, role, ttl_s)
    if save:
        _write_token(token)
    if as_json:
        print_json({"token": token, "name": name, "role": role,
                    "expires_unix_s": time.time() + ttl_s if ttl_s is not None else None})
    else:
        typer.echo(token)


@fleet_app.command("operator-token-revoke")
@handle_errors
def operator_token_revoke(db: DbOpt = None,
                          name: Annotated[str | None, typer.Option(help="revoke every token of this name")] = None,
                          token_file: Annotated[Path | None, typer.Option(help="revoke the token in this file")] = None,
                          ) -> None:
    """Revoke operator tokens (by name, or the one in a file); every server worker refuses them within 1 s."""
    from tinymlops.errors import UsageError
    from tinymlops.fleet import revocation, store

    if (name is None) == (token_file is None):
        raise UsageError("give --name or --token-file")
    if token_file is not None and not token_file.is_file():
        raise UsageError(f"{token_file}: token file not found")
    token = token_file.read_text().strip() if token_file is not None else None
    n = revocation.revoke_operator_tokens(store.open_store(_fleet_db(db)), name, token)
    console.print(f"revoked {n} operator token(s)")


@fleet_app.command("enrol-token")
@handle_errors
def enrol_token(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                cohort: Annotated[str, typer.Option(help="cohort the devices join")] = "default",
                count: Annotated[int, typer.Option(min=1, max=10000, help="how many one-time tokens")] = 1,
                samples: Annotated[bool, typer.Option(help="devices may send a bounded input sample")] = False,
                feedback: Annotated[bool, typer.Option(help="devices may send labelled feedback")] = False,
                ttl: Annotated[float, typer.Option(min=1, help="seconds until the tokens expire")] = 86400.0,
                json_out: JsonOpt = False) -> None:
    """Create one-time enrolment tokens (each enrols exactly one device)."""
    with _client(server, token) as op:
        tokens = op.enrolment_tokens(cohort, count, samples, feedback, ttl)
    if json_out:
        print_json({"cohort": cohort, "tokens": tokens})
    else:
        for t in tokens:
            typer.echo(t)


@fleet_app.command("devices")
@handle_errors
def devices(server: ReadServerOpt = None, token: TokenOpt = None, db: DbOpt = None,
            cohort: Annotated[str | None, typer.Option(help="only this cohort")] = None,
            target: Annotated[str | None, typer.Option(help="only this target")] = None,
            json_out: JsonOpt = False) -> None:
    """List devices: target, cohort, current/previous/desired version, last seen."""
    import time

    if server is None:
        from tinymlops.fleet import api, store

        st = _read_store(db)
        rows = [api.DeviceOut(**d.as_dict()).model_dump() for d in store.list_devices(st, cohort, target)]
        st.dispose()
    else:
        with _client(server, token) as op:
            rows = op.devices(cohort, target)
    if json_out:
        print_json(rows)
        return
    now = time.time()
    print_table(f"{len(rows)} devices", ["id", "target", "cohort", "current", "previous", "desired", "seen_s_ago"],
                [[d["id"], d["target"], d["cohort"], d["current_package_id"], d["previous_package_id"],
                  d["desired_package_id"],
                  f"{now - d['last_seen_unix_s']:.0f}" if d["last_seen_unix_s"] else None] for d in rows])


@fleet_app.command("deploy")
@handle_errors
def deploy(package_id: Annotated[str, typer.Argument(help="package id (see `tinymlops fleet packages`)")],
           server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
           cohort: Annotated[str | None, typer.Option(help="set the desired package of this cohort")] = None,
           device: Annotated[list[str] | None, typer.Option(help="set it for this device (repeatable)")] = None,
           reason: Annotated[str, typer.Option(help="recorded with the desired state")] = "",
           json_out: JsonOpt = False) -> None:
    """Set the desired package of a cohort and/or devices; agents install it on their next poll."""
    from tinymlops.errors import UsageError

    if not cohort and not device:
        raise UsageError("give --cohort or --device")
    with _client(server, token) as op:
        updated = op.set_desired(package_id, device, cohort, reason)
    if json_out:
        print_json({"package_id": package_id, "updated": updated})
    else:
        console.print(f"{package_id}: desired on {len(updated)} device(s)")


@fleet_app.command("grant")
@handle_errors
def grant(package_id: Annotated[str, typer.Argument(help="an encrypted package built on this host")],
          server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
          cohort: Annotated[str | None, typer.Option(help="every device of this cohort running it or told to")] = None,
          device: Annotated[list[str] | None, typer.Option(help="this device (repeatable)")] = None) -> None:
    """Wrap an encrypted package's key for devices assigned it (e.g. devices that enrolled into a cohort later)."""
    from tinymlops.errors import UsageError

    if not cohort and not device:
        raise UsageError("give --cohort or --device")
    with _client(server, token) as op:
        ids = list(device or [])
        if cohort:
            ids += [d["id"] for d in op.devices(cohort=cohort)
                    if package_id in (d["desired_package_id"], d["current_package_id"])]
        n = op.grant(package_id, sorted(set(ids)))
    console.print(f"{package_id}: content key wrapped for {n} device(s)")


@fleet_app.command("packages")
@handle_errors
def list_packages(server: ReadServerOpt = None, token: TokenOpt = None, db: DbOpt = None,
                  json_out: JsonOpt = False) -> None:
    """List packages stored in the fleet."""
    if server is None:
        from tinymlops.fleet import api, store

        st = _read_store(db)
        rows = [api.PackageInfo(**r).model_dump() for r in store.list_package_rows(st)]
        st.dispose()
    else:
        with _client(server, token) as op:
            rows = op.packages()
    if json_out:
        print_json(rows)
        return
    print_table("packages", ["id", "model", "version", "variant", "format", "target", "bytes"],
                [[p["id"], p["model_name"], p["model_version"], p["variant"], p["format"], p["target"],
                  p["size_bytes"]] for p in rows])


@fleet_app.command("events")
@handle_errors
def events(server: ReadServerOpt = None, token: TokenOpt = None, db: DbOpt = None,
           device: Annotated[str | None, typer.Option(help="only this device")] = None,
           json_out: JsonOpt = False) -> None:
    """List deployment events: installs, rejections (with reason), rollbacks."""
    if server is None:
        from tinymlops.fleet import api, store

        st = _read_store(db)
        rows = [api.EventOut(**e).model_dump() for e in store.deployment_events(st, device_id=device)]
        st.dispose()
    else:
        with _client(server, token) as op:
            rows = op.events(device_id=device)
    if json_out:
        print_json(rows)
        return
    print_table("deployment events", ["device", "kind", "package", "reason"],
                [[e["device_id"], e["kind"], e["package_id"], e["reason"]] for e in rows])


@fleet_app.command("telemetry")
@handle_errors
def telemetry(model: Annotated[str, typer.Argument(help="registered model name")],
              server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
              version: Annotated[str | None, typer.Option(help="one version (bins differ between versions)")] = None,
              cohort: Annotated[str | None, typer.Option(help="only this cohort")] = None,
              target: Annotated[str | None, typer.Option(help="only this target")] = None,
              json_out: JsonOpt = False) -> None:
    """Show the exact merge of the fleet's telemetry sketches (no raw inputs involved)."""
    with _client(server, token) as op:
        m = op.merged(model, version=version, cohort=cohort, target=target)
    if json_out:
        print_json(m)
        return
    sk = m["sketch"] or {}
    print_table(f"telemetry of {model}" + (f" v{version}" if version else ""), ["figure", "value"], [
        ["reports", m["reports"]], ["devices", m["devices"]], ["inferences", sk.get("n_inferences", 0)],
        ["prediction counts", sk.get("prediction_counts")], ["latency p50 ms", m["latency_p50_ms"]],
        ["latency p95 ms", m["latency_p95_ms"]], ["latency max ms", sk.get("latency_max_ms")],
        ["peak memory bytes", sk.get("peak_memory_bytes")], ["energy uJ", sk.get("energy_uj_total")],
        ["errors", sk.get("errors")], ["rejections", sk.get("rejections")]])


@fleet_app.command("simulate")
@handle_errors
def simulate(devices: Annotated[int, typer.Option("--devices", "-n", min=1, max=100000,
                                                  help="devices, spread over the targets")] = 20,
             server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
             model: Annotated[str, typer.Option(help="registered model to deploy")] = "fleet-demo",
             version: Annotated[list[str] | None, typer.Option(
                 help="version(s) to package (repeatable; default: all); per target the newest that fits")] = None,
             target: Annotated[list[str] | None, typer.Option(
                 help="target(s) to simulate (repeatable; default: every catalogue target a version runs on)")] = None,
             spec: Annotated[Path | None, typer.Option(
                 help="YAML with cohorts (target, drift, faults, opt-ins) and intervals; overrides -n/--target")] = None,
             duration: Annotated[float, typer.Option(min=1, help="seconds to run")] = 30.0,
             report_interval: Annotated[float, typer.Option(min=0.1, help="seconds between telemetry reports")] = 5.0,
             inference_interval: Annotated[float, typer.Option(min=0.001, help="seconds between inferences")] = 0.1,
             mode: Annotated[str, typer.Option(
                 help="processes | async | auto (processes up to 8 devices; slow or corrupt faults need async)")
             ] = "auto",
             drift_cohort: Annotated[bool, typer.Option(
                 help="make the last cohort drift (gain 1.5, offset 0.3) halfway through")] = True,
             targets_dir: Annotated[Path | None, typer.Option(help="target catalogue directory")] = None,
             json_out: JsonOpt = False) -> None:
    """Enrol a simulated fleet, deploy a signed package per target and run the agents against the service.

    Without --spec: one cohort per target, devices spread evenly. If --model is the default `fleet-demo` and it
    is not registered yet, a small softmax-regression demo model is trained and registered first.
    """
    from tinymlops import registry
    from tinymlops.config import read_yaml, validate_data
    from tinymlops.errors import RegistryError, UsageError
    from tinymlops.fleet import packages
    from tinymlops.profile.targets import catalogue as target_catalogue
    from tinymlops.profile.targets import targets_dir as resolve_targets_dir
    from tinymlops.sim import demo_model, simulator

    op_token = _operator_token(token)
    catalogue = target_catalogue(targets_dir)
    if not catalogue:
        raise UsageError(f"the target catalogue {resolve_targets_dir(targets_dir)} is empty")
    sim_spec = validate_data(read_yaml(spec), simulator.SimulationSpec, spec) if spec is not None else None
    with _client(server, op_token) as op:
        op.health()  # fail fast, before any training or packaging, if the service is not there
    try:
        versions = [v.version for v in registry.list_versions(model)]
    except RegistryError:
        if model != "fleet-demo":
            raise
        err_console.print("registering the fleet demo model (softmax regression on vibration features; "
                          "ONNX and TFLite versions)")
        versions = [demo_model.register_demo_model(model, fmt=f) for f in ("onnx", "tflite")]
    versions = [str(v) for v in (version or versions)]
    formats = {registry.get_version(model, v).tags.get("format", "") for v in versions}
    if sim_spec is not None:
        cohorts = sim_spec.cohorts
        duration, report_interval = sim_spec.duration_s, sim_spec.report_interval_s
        inference_interval = sim_spec.inference_interval_s
    else:
        names = target or [t for t, d in catalogue.items() if any(packages.format_fits(f, d.runtime)
                                                                   for f in formats)]
        if not names:
            raise UsageError(f"no catalogue target runs {model} ({sorted(formats)})")
        names = names[:devices]
        share = [devices // len(names) + (i < devices % len(names)) for i in range(len(names))]
        cohorts = [simulator.CohortSpec(name=f"sim-{t}", devices=n, target=t) for t, n in zip(names, share,
                                                                                               strict=True)]
        if drift_cohort and len(cohorts) > 1:
            cohorts[-1] = cohorts[-1].model_copy(update={
                "drift": simulator.DriftSpec(gain=1.5, offset=0.3), "drift_after_s": duration / 2})
    ids = simulator.publish(server, op_token, model, versions, [c.target for c in cohorts],
                            {c.name: c.target for c in cohorts}, reason="fleet simulate", targets_dir=targets_dir)
    err_console.print(f"deployed {ids}; running {sum(c.devices for c in cohorts)} devices for {duration:.0f}s",
                      highlight=False, soft_wrap=True)
    result = simulator.run_simulation(server, op_token, cohorts, duration_s=duration, mode=mode,
                                      report_interval_s=report_interval, inference_interval_s=inference_interval,
                                      targets_dir=targets_dir)
    summary = result.summary()
    if json_out:
        print_json({**summary, "packages": ids})
        return
    print_table(f"simulation ({summary['mode']}, {summary['duration_s']} s)",
                ["cohort", "target", "devices", "installed", "reports", "inferences", "restarts", "stopped"],
                [[k, c["target"], c["devices"], c["installed"], c["reports"], c["inferences"], c["restarts"],
                  c["stopped"]] for k, c in summary["cohorts"].items()])


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app (``package`` and ``agent`` live in ``cli/device.py``)."""
    from cli import device, field, personalise

    field.register(fleet_app)  # consent, forget, field-data
    personalise.register(fleet_app)  # on-device personalisation per cohort
    app.add_typer(fleet_app, name="fleet")
    device.register(app)
