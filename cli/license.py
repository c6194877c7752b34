"""CLI commands of offline licensing: ``tinymlops license issue|status|report``.

``issue`` signs a licence on this host (the registry host: the package signing key in <home>/keys) and stores
it on the fleet service, which relays it to the device; ``status`` lists licences with their reconciled usage (or,
with --state-dir, a device's own view, offline); ``report`` reconciles per customer and device and says which
devices' metering was tampered with.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli._common import console, handle_errors, print_json, print_table
from cli.fleet import DEFAULT_SERVER, DbOpt, JsonOpt, ReadServerOpt, ServerOpt, TokenOpt, _client, _read_store

license_app = typer.Typer(help="Offline pay-per-query licences: issue signed quota tokens, reconcile device usage.",
                          no_args_is_help=True)
KINDS = ("per-query", "subscription", "unlimited")


def _when(t: float | None) -> str:
    return "never" if t is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


@license_app.command("issue")
@handle_errors
def issue(device: Annotated[str, typer.Option(help="device id the licence is for")],
          model: Annotated[str, typer.Option(help="registered model name it lets the device run")],
          kind: Annotated[str, typer.Option(help="per-query (--count inferences), subscription (until "
                                                 "--days/--expires), unlimited")] = "per-query",
          count: Annotated[int | None, typer.Option(min=1, help="inferences (per-query)")] = None,
          days: Annotated[float | None, typer.Option(min=0.0, help="expires this many days from now")] = None,
          expires: Annotated[str | None, typer.Option(help="expires at this UTC time (YYYY-MM-DD[THH:MM])")] = None,
          grace: Annotated[int, typer.Option(min=0, help="inferences allowed past --count (billed as overage)")] = 0,
          grace_hours: Annotated[float, typer.Option(min=0.0, help="hours allowed past the expiry")] = 0.0,
          customer: Annotated[str, typer.Option(help="customer the usage is billed to (reports group by it)")] = "",
          key_dir: Annotated[Path | None, typer.Option(help="directory of package_signing.key "
                                                            "(default <home>/keys)")] = None,
          server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Sign a licence for one device and model and store it on the fleet service (the device fetches it online).

    The device must have been online once since enrolling (it registers its receipt key; the licence is bound
    to it). Licences for a device are numbered; the device accepts only ones above the highest it holds.
    """
    from datetime import UTC, datetime

    from tinymlops.errors import UsageError
    from tinymlops.fleet import packages
    from tinymlops.fleet.client import FleetError
    from tinymlops.licensing import tokens

    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    if (kind == "per-query") != (count is not None):
        raise UsageError("--count is required for --kind per-query and not allowed otherwise")
    if days is not None and expires is not None:
        raise UsageError("give --days or --expires, not both")
    expires_unix_s = None
    if days is not None:
        expires_unix_s = time.time() + days * 86400
    elif expires is not None:
        try:
            expires_unix_s = datetime.fromisoformat(expires).replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise UsageError(f"--expires {expires!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)") from None
    if kind == "subscription" and expires_unix_s is None:
        raise UsageError("--kind subscription needs --days or --expires")
    if kind == "unlimited" and expires_unix_s is not None:
        raise UsageError("--kind unlimited never expires: use --kind subscription for a licence that does")
    key = packages.signing_key(key_dir)
    with _client(server, token) as op:
        for attempt in range(3):  # another operator may take the next sequence meanwhile
            try:
                info = op._call("GET", f"/v1/licence-devices/{device}")
            except FleetError as exc:  # 404: no such device, or it never came online (exit 2); else the service
                if "-> 404" in str(exc):
                    raise UsageError(str(exc)) from None
                raise
            try:
                tok = tokens.issue(key, device_id=device, device_key_id=info["key_id"], model_name=model, kind=kind,
                                   sequence=info["next_sequence"], count=count, grace_count=grace,
                                   expires_unix_s=expires_unix_s, grace_s=grace_hours * 3600, customer=customer)
            except tokens.LicenceInvalid as exc:
                raise UsageError(str(exc)) from None
            try:
                lic = op._call("POST", "/v1/licences", json=tok)
                break
            except FleetError as exc:
                if "409" not in str(exc) or attempt == 2:
                    raise
    if json_out:
        print_json(lic)
        return
    amount = f"{count} inferences (+{grace} grace)" if count else kind
    console.print(f"licence {lic['licence_id']} #{lic['sequence']}: {device} may run {model}: {amount}, "
                  f"expires {_when(lic['expires_unix_s'])}" + (f", customer {customer}" if customer else ""))


def _rows(server: str | None, token: str | None, db: str | None, path: str, **params: Any) -> Any:
    """Ask the service (--server) or read the fleet database directly."""
    if server is not None:
        with _client(server, token) as op:
            return op._call("GET", path, params={k: v for k, v in params.items() if v is not None})
    from tinymlops.fleet import licences

    st = _read_store(db)
    try:
        if path == "/v1/licences":
            return licences.usage(st, params.get("device_id"), params.get("customer"), params.get("model"))
        if path == "/v1/licence-findings":
            return licences.findings(st, params.get("device_id"))
        return licences.report(st, params.get("customer"))
    finally:
        st.dispose()


def _state(row: dict[str, Any], now: float) -> str:
    ends = row["expires_unix_s"] + row["grace_s"] if row["expires_unix_s"] is not None else None
    if ends is not None and ends <= now:
        return "expired"
    if row["count"] is not None and row["used"] >= row["count"] + row["grace_count"]:
        return "used up"
    if row["count"] is not None and row["used"] >= row["count"]:
        return "grace"
    return "active" if row.get("accepted", True) else "not fetched yet"


@license_app.command("status")
@handle_errors
def status(server: ReadServerOpt = None, token: TokenOpt = None, db: DbOpt = None,
           device: Annotated[str | None, typer.Option(help="only this device")] = None,
           model: Annotated[str | None, typer.Option(help="only this model")] = None,
           customer: Annotated[str | None, typer.Option(help="only this customer")] = None,
           state_dir: Annotated[Path | None, typer.Option(help="show a device's own view from its agent state "
                                                              "directory (on the device, offline)")] = None,
           trusted_key: Annotated[Path | None, typer.Option(help="with --state-dir: the key licences are signed "
                                                                 "with (default <home>/keys/package_signing.pub)")]
           = None, json_out: JsonOpt = False) -> None:
    """List licences with what the service reconciled: used (an unsettled block counted in full), remaining."""
    now = time.time()
    if state_dir is not None:
        rows, extra = _device_view(state_dir, trusted_key)
    else:
        rows, extra = _rows(server, token, db, "/v1/licences", device_id=device, customer=customer, model=model), {}
        for r in rows:
            r["state"] = _state(r, now)
    if json_out:
        print_json({**extra, "licences": rows} if extra else rows)
        return
    print_table(f"{len(rows)} licences" + (f" on device {extra['device_id']}" if extra else ""),
                ["licence", "#", "device", "customer", "model", "kind", "used", "count+grace", "remaining", "expires",
                 "state"],
                [[r["licence_id"][:12], r["sequence"], r["device_id"], r["customer"], r["model_name"], r["kind"],
                  r["used"], "-" if r["count"] is None else f"{r['count']}+{r['grace_count']}", r["remaining"],
                  _when(r["expires_unix_s"]), r["state"]] for r in rows])
    if extra:
        console.print(f"chain at receipt {extra['chain_seq']}, service acknowledged {extra['acked_seq']}, "
                      f"{extra['pending_receipts']} receipt(s) to upload"
                      + ("; the clock was set back" if extra["clock_rolled_back"] else ""))


def _device_view(state_dir: Path, trusted_key: Path | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from tinymlops.errors import UsageError
    from tinymlops.fleet import packages
    from tinymlops.licensing.chain import ChainDamaged
    from tinymlops.licensing.meter import Meter

    directory = state_dir / "licence"
    if not (directory / "chain.jsonl").is_file():
        raise UsageError(f"{state_dir}: no licence state (the agent has not used licensing there)")
    device_id = state_dir.name
    cred = state_dir / "credential.json"
    if cred.is_file():
        import json

        device_id = str(json.loads(cred.read_text()).get("device_id") or device_id)
    key = packages.load_public_key(trusted_key or packages.default_public_key_path())
    try:
        meter = Meter(directory, device_id, [key])
    except ChainDamaged as exc:
        raise UsageError(f"{directory}: licence state damaged: {exc}") from None
    try:
        view = meter.status()
    finally:
        meter.chain.close()
    rows = view.pop("licences")
    for r in rows:
        r["remaining"] = r["remaining"] if r["remaining"] is not None else "-"
    return rows, view


@license_app.command("report")
@handle_errors
def report(server: ReadServerOpt = None, token: TokenOpt = None, db: DbOpt = None,
           customer: Annotated[str | None, typer.Option(help="only this customer")] = None,
           json_out: JsonOpt = False) -> None:
    """Reconcile per customer and device: inferences used, overage, and tampering found in the devices' receipts
    (a restored old counter state, forged or replayed receipts, deleted receipts, clock set back)."""
    rep = _rows(server, token, db, "/v1/licence-report", customer=customer)
    tampered = [d["device_id"] for c in rep["customers"] for d in c["devices"] if d["tampered"]]
    found = [f for did in tampered for f in _rows(server, token, db, "/v1/licence-findings", device_id=did)[:20]]
    if json_out:
        print_json({**rep, "tampered_devices": tampered, "findings": found})
        return
    rows = []
    for c in rep["customers"]:
        for d in c["devices"]:
            used = sum(x["used"] for x in d["licences"])
            overage = sum(x["overage"] for x in d["licences"])
            rows.append([c["customer"] or "-", d["device_id"], len(d["licences"]), used, overage,
                         "TAMPERED" if d["tampered"] else "ok",
                         ", ".join(f"{k} x{n}" for k, n in sorted(d["findings"].items())) or "-"])
    print_table("licence reconciliation", ["customer", "device", "licences", "used", "overage", "metering",
                                           "findings"], rows)
    for f in found:
        console.print(f"[red]{f['device_id']}[/] {f['kind']} (receipt {f['seq']}): {f['detail']}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``license`` commands to the main app."""
    app.add_typer(license_app, name="license")
