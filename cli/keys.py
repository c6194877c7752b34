"""``tinymlops keys``: package-signing keys with ids and roles; rotate and revoke them, devices follow.

The registry host keeps the keys (``<home>/keys``) and the chain of signed key-set updates; each command signs
the next update with the root key, publishes it to the fleet service (devices fetch and verify it at their next
poll) and only then records it locally, so a service that cannot be reached leaves nothing half-done.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli._common import console, err_console, handle_errors, print_json, print_table
from cli.fleet import DEFAULT_SERVER, JsonOpt, TokenOpt, _client

keys_app = typer.Typer(help="Package-signing keys: list, rotate, revoke (devices follow signed key updates).",
                       no_args_is_help=True)

PublishServerOpt = Annotated[str, typer.Option(
    "--server", envvar="TINYMLOPS_FLEET_URL", help="fleet service that relays the update to devices")]
LocalOpt = Annotated[bool, typer.Option(
    "--local-only", help="record the update here without publishing it (publish later with `keys publish`)")]


def _rows(local: Any) -> list[dict[str, Any]]:
    cur, active = local.current(), local.active_id()
    ids = sorted(set(cur.root) | set(cur.signing) | set(cur.revoked))
    return [{"key_id": k,
             "roles": [r for r, keys in (("root", cur.root), ("signing", cur.signing)) if k in keys],
             "status": "revoked" if k in cur.revoked else "active" if k == active
             else "trusted" if k in cur.signing else "root only"} for k in ids]


def _publish(plan: Any, server: str, token: str | None, local_only: bool) -> None:
    from tinymlops.fleet import keyset

    if not local_only:
        with _client(server, token) as c:
            c.publish_key_update(plan.update)
    ks = keyset.commit(plan)
    err_console.print(f"key set version {ks.version}" + ("" if local_only else f" published to {server}"),
                      highlight=False)


@keys_app.command("list")
@handle_errors
def list_keys(server: Annotated[str | None, typer.Option(
                  "--server", envvar="TINYMLOPS_FLEET_URL", help="also show the version this service relays")] = None,
              token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List signing keys with their roles (root signs key updates, signing signs packages) and status."""
    import json

    from tinymlops.fleet import keyset

    local = keyset.load_local()
    out: dict[str, Any] = {"version": local.current().version, "keys": _rows(local)}
    if server:
        with _client(server, token) as c:
            updates = c.key_updates()
        out["server_version"] = max((int(json.loads(u["payload_json"])["version"]) for u in updates), default=0)
    if as_json:
        print_json(out)
        return
    title = f"key set version {out['version']}" + (f" (server relays {out['server_version']})" if server else "")
    print_table(title, ["key id", "roles", "status"],
                [[r["key_id"], ",".join(r["roles"]), r["status"]] for r in out["keys"]])


@keys_app.command("rotate")
@handle_errors
def rotate(server: PublishServerOpt = DEFAULT_SERVER, token: TokenOpt = None, local_only: LocalOpt = False,
           revoke_current: Annotated[bool, typer.Option(
               help="also revoke the key being replaced (it leaked): packages it signed are refused")] = False,
           as_json: JsonOpt = False) -> None:
    """Make a new package-signing key; devices trust it after their next poll.

    The first rotation turns today's key into the root key (root.key: it then signs only key updates; keep it
    offline) and provisions new devices with root.pub. Older signing keys stay trusted unless revoked.
    """
    from tinymlops.fleet import keyset

    plan = keyset.plan_rotation(keyset.load_local(), revoke_current)
    _publish(plan, server, token, local_only)
    local = keyset.load_local()
    if as_json:
        print_json({"version": plan.key_set.version, "active": local.active_id(), "keys": _rows(local)})
    else:
        console.print(f"new signing key {local.active_id()} (key set version {plan.key_set.version})")


@keys_app.command("revoke")
@handle_errors
def revoke(key_id: Annotated[str, typer.Argument(help="key id (see `tinymlops keys list`)")],
           server: PublishServerOpt = DEFAULT_SERVER, token: TokenOpt = None, local_only: LocalOpt = False,
           as_json: JsonOpt = False) -> None:
    """Revoke a signing key: every device refuses packages it signed from its next poll on."""
    from tinymlops.fleet import keyset

    plan = keyset.plan_revocation(keyset.load_local(), key_id)
    _publish(plan, server, token, local_only)
    if as_json:
        print_json({"version": plan.key_set.version, "revoked": sorted(plan.key_set.revoked)})
    else:
        console.print(f"revoked {key_id} (key set version {plan.key_set.version})")


@keys_app.command("publish")
@handle_errors
def publish(server: PublishServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Publish every local key update the service does not relay yet (a new service, or after --local-only)."""
    import json

    from tinymlops.fleet import keyset

    local = keyset.load_local()
    with _client(server, token) as c:
        have = {json.loads(u["payload_json"])["version"] for u in c.key_updates()}
        sent = [c.publish_key_update(u) for u in local.updates if json.loads(u["payload_json"])["version"] not in have]
    if as_json:
        print_json({"published": sent})
    else:
        console.print(f"published {len(sent)} key update(s) to {server}")


def register(app: typer.Typer) -> None:
    """Add the ``keys`` command group."""
    app.add_typer(keys_app, name="keys")
