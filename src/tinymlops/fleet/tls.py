"""TLS for the fleet service and agent: uvicorn's server settings, the agent's pinned CA, plain HTTP on loopback only.

``fleet serve --tls-cert C --tls-key K`` serves HTTPS; ``--tls-client-ca CA`` additionally requires every client
to present a certificate signed by that CA (mutual TLS) whose subject CN (or a DNS/URI SAN) is the device id it
acts as (:mod:`tinymlops.fleet.certbind`). The agent's ``--ca-cert`` pins the CA it trusts for the
server (instead of the system store), and ``--client-cert/--client-key`` present its own certificate. Plain HTTP
is refused for anything but a loopback address unless ``--insecure`` is given.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tinymlops.errors import UsageError


def is_loopback(host: str) -> bool:
    """Return whether a host name or address is loopback (localhost, 127.0.0.0/8, ::1)."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_tls_off_loopback(host: str, tls: bool, insecure: bool, what: str) -> None:
    """Refuse plain HTTP to or on a non-loopback address unless ``insecure`` (UsageError)."""
    if not tls and not insecure and not is_loopback(host):
        raise UsageError(f"{what} {host!r} is not loopback: give TLS settings (--tls-cert/--tls-key on the server, "
                         "an https:// URL for the agent) or --insecure to send credentials in clear")


def server_ssl_kwargs(cert: Path | None, key: Path | None, client_ca: Path | None) -> dict[str, Any]:
    """Return uvicorn.Config keyword arguments for HTTPS (empty without a certificate)."""
    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if client_ca is not None and cert is None:
        raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    if cert is None or key is None:
        return {}
    for p in (cert, key, client_ca):
        if p is not None and not Path(p).is_file():
            raise UsageError(f"{p}: TLS file not found")
    kwargs: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    if client_ca is not None:
        from tinymlops.fleet.certbind import CertBindingProtocol

        # the protocol puts the certificate's names into each request, to bind them to the device id
        kwargs.update(ssl_ca_certs=str(client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED, http=CertBindingProtocol)
    return kwargs


def client_verify(server: str, ca_cert: Path | None, client_cert: Path | None = None,
                  client_key: Path | None = None, insecure: bool = False) -> ssl.SSLContext | bool:
    """Return httpx's ``verify`` for a server URL: a context pinned to ``ca_cert`` (system CAs without it)."""
    url = urlparse(server)
    require_tls_off_loopback(url.hostname or "", url.scheme == "https", insecure, "server")
    if url.scheme != "https":
        # plain HTTP speaks no TLS: a context that trusts no CA (nothing loaded, ~5 MB less RSS than httpx's
        # default bundle) makes any https:// hop fail closed
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else ssl.create_default_context()
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    return ctx
