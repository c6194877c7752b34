"""CLI commands for consented field data: ``tinymlops fleet consent``, ``fleet forget``, ``fleet field-data``.

Consent and forget talk to the fleet service with an admin operator token. ``field-data export`` decrypts on this
host (the registry host holds the field key; the service stores ciphertext only), reading the fleet database
directly (``--db``) or asking the service (``--server``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli._common import console, err_console, handle_errors, print_json, print_table
from cli.fleet import DEFAULT_SERVER, DbOpt, JsonOpt, ReadServerOpt, ServerOpt, TokenOpt, _client, _read_store

field_data_app = typer.Typer(help="Consented field data: policy (signed field key, retention) and export.",
                             no_args_is_help=True)


def _duration(text: str | None, flag: str) -> float | None:
    from tinymlops.errors import UsageError
    from tinymlops.monitor.config import parse_duration_s

    if text is None:
        return None
    try:
        value = parse_duration_s(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UsageError(f"{flag} {text!r}: expected a positive duration like 3600, 45m, 12h or 30d")
    return value


def _ensure_policy(op: Any, retention_s: float | None = None, max_samples: int | None = None,
                   reservoir: int | None = None, window_s: float | None = None) -> dict[str, Any]:
    """Upload this host's signed field key (and limits) unless the service already holds the same key."""
    from tinymlops.fleet import field_seal
    from tinymlops.fleet.client import FleetError
    from tinymlops.fleet.packages import signing_key

    key = field_seal.field_key()
    key_id = field_seal.key_id_of(field_seal._raw(key.public_key()))
    limits = {"retention_s": retention_s, "max_samples_per_device": max_samples, "reservoir_size": reservoir,
              "window_s": window_s}
    try:
        current = op._call("GET", "/v1/field-policy")
    except FleetError as exc:
        if "404" not in str(exc):
            raise
        current = None
    if current is not None and current["key_id"] == key_id and all(v is None for v in limits.values()):
        return dict(current)
    body = {"key_statement": field_seal.key_statement(key, signing_key()),
            **{k: v for k, v in limits.items() if v is not None}}
    return dict(op._call("PUT", "/v1/field-policy", json=body))


def consent(device: Annotated[str, typer.Argument(help="device id")],
            grant: Annotated[bool, typer.Option("--grant/--revoke",
                                                help="record the device's opt-in, or withdraw it")],
            scope: Annotated[str, typer.Option(help="what the consent covers")] = "labelled-samples",
            server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Grant or revoke a device's consent to send labelled field samples (recorded with who and when).

    Without consent only aggregate sketches leave the device. The device learns the change on its next poll; a
    revoke stops uploads at once (what was sent stays until `fleet forget` or the retention). The first grant
    uploads this host's field key, signed with the package signing key, so devices seal samples for it alone.
    """
    with _client(server, token) as op:
        if grant:
            _ensure_policy(op)
        out = op._call("PUT", f"/v1/devices/{device}/field-consent", json={"grant": grant, "scope": scope})
    if json_out:
        print_json(out)
    elif grant:
        console.print(f"{device}: field-data consent {out['consent_id']} ({out['scope']}) granted by "
                      f"{out['granted_by']}")
    elif out.get("revoked_unix_s") is None:
        console.print(f"{device}: had no active field-data consent")
    else:
        console.print(f"{device}: field-data consent {out['consent_id']} revoked by {out['revoked_by']}")


def forget(device: Annotated[str, typer.Argument(help="device id")],
           server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Delete every field sample of a device, revoke its consent and record the deletion (audit row).

    Exports and retrains made afterwards cannot include its samples. Datasets exported earlier are files on
    this host: delete them too (their manifest.json lists the devices they hold).
    """
    with _client(server, token) as op:
        out = op._call("DELETE", f"/v1/devices/{device}/field-samples")
    if json_out:
        print_json(out)
    else:
        console.print(f"{device}: forgot {out['samples_deleted']} sample(s) in {out['batches_deleted']} batch(es); "
                      f"{out['consents_revoked']} consent(s) revoked; recorded for {out['requested_by']}")


@field_data_app.command("policy")
@handle_errors
def policy(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
           retention: Annotated[str | None, typer.Option(help="delete samples older than this (e.g. 30d)")] = None,
           max_samples_per_device: Annotated[int | None, typer.Option(min=1, max=1_000_000,
                                             help="keep at most this many samples per device (oldest dropped)")] = None,
           reservoir_size: Annotated[int | None, typer.Option(min=1, max=256,
                                     help="labelled samples a device keeps per window")] = None,
           window: Annotated[str | None, typer.Option(help="reservoir window on the device (e.g. 10m)")] = None,
           json_out: JsonOpt = False) -> None:
    """Upload this host's signed field key and set retention and limits (unset ones keep their value)."""
    with _client(server, token) as op:
        out = _ensure_policy(op, _duration(retention, "--retention"), max_samples_per_device, reservoir_size,
                             _duration(window, "--window"))
    if json_out:
        print_json(out)
    else:
        console.print(f"field key {out['key_id']}; retention {out['retention_s'] / 86400:g} d; "
                      f"{out['max_samples_per_device']} samples/device; reservoir {out['reservoir_size']} per "
                      f"{out['window_s']:g} s")


@field_data_app.command("export")
@handle_errors
def export(out: Annotated[Path, typer.Option("--out", help="directory; the dataset goes to <out>/<version>/")],
           cohort: Annotated[str | None, typer.Option(help="only this cohort's samples")] = None,
           since: Annotated[str | None, typer.Option(help="only samples received within this duration (7d)")] = None,
           server: ReadServerOpt = None, token: TokenOpt = None, db: DbOpt = None,
           lineage: Annotated[bool, typer.Option("--lineage/--no-lineage",
                                                 help="log the dataset as an mlflow.data input of a run")] = True,
           experiment: Annotated[str, typer.Option(help="MLflow experiment of the lineage run")] = "tinymlops-field-data",
           json_out: JsonOpt = False) -> None:
    """Decrypt consented field samples into a versioned Parquet dataset with its lineage.

    Writes <out>/<version>/field.parquet (one row per sample: device, cohort, consent id, label, the device's
    prediction, the raw input) and manifest.json; the version is a digest of the batches it holds. Forgotten and
    expired samples are never included. With --lineage (default) an MLflow run records the dataset as an input
    tagged with source fleet, cohorts, window, devices and consent ids.
    """
    from tinymlops import registry
    from tinymlops.fleet import field_export

    since_s = _duration(since, "--since")
    since_unix = time.time() - since_s if since_s else None
    if server:
        with _client(server, token) as op:
            data = field_export.collect(server=op, cohort=cohort, since_unix_s=since_unix)
    else:
        data = field_export.collect(st=_read_store(db), cohort=cohort, since_unix_s=since_unix)
    path = field_export.write(data, out)
    result: dict[str, Any] = {"version": data.version, "path": str(path), **data.manifest()}
    if lineage:
        registry.connect()
        with registry.run(experiment, f"field data {data.version}", None,
                          {"tinymlops.stage": "field-data", "tinymlops.field.version": data.version}) as r:
            field_export.log_lineage(r.run_id, data, "field", path)
            registry.log_dict(r.run_id, result, "field_data/manifest.json")
        result["mlflow_run_id"] = r.run_id
    for s in data.skipped:
        err_console.print(f"skipped batch {s['device_id']}#{s['seq']}: {s['reason']}", highlight=False)
    if json_out:
        print_json(result)
        return
    print_table(f"field data {data.version} -> {path}", ["samples", "devices", "cohorts", "consents", "skipped"],
                [[result["samples"], len(result["devices"]), ",".join(result["cohorts"]), len(result["consent_ids"]),
                  len(data.skipped)]])


def register(fleet_app: typer.Typer) -> None:
    """Add consent, forget and field-data to ``tinymlops fleet``."""
    fleet_app.command("consent")(handle_errors(consent))
    fleet_app.command("forget")(handle_errors(forget))
    fleet_app.add_typer(field_data_app, name="field-data")
