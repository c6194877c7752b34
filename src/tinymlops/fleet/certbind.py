"""Client-certificate <-> device-id binding under mutual TLS.

uvicorn does not put the peer certificate into the ASGI scope, so :class:`CertBindingProtocol` (an h11 protocol,
selected with ``uvicorn.Config(http=...)`` when ``fleet serve --tls-client-ca`` is given) reads it once per
connection from the TLS socket and adds the identities it names (subject CN and DNS/URI SANs) to every request's
``scope["state"]``. The device routes then require the device id in the URL (or the enrolment request) to be one
of them: a device holding device A's certificate cannot act as device B, even with B's bearer credential.
Kept out of the ``service`` package: worker processes unpickle this class first, before the app is imported.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

SCOPE_KEY = "tls_client_ids"


def cert_identities(peercert: dict[str, Any] | None) -> frozenset[str]:
    """Return the names a verified peer certificate vouches for (``ssl.SSLSocket.getpeercert()`` form)."""
    if not peercert:
        return frozenset()
    names = {v for rdn in peercert.get("subject", ()) for k, v in rdn if k == "commonName"}
    names |= {v for k, v in peercert.get("subjectAltName", ()) if k in ("DNS", "URI")}
    return frozenset(names)


class CertBindingProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus the verified client certificate's identities in each request's state."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        ids = cert_identities(ssl_object.getpeercert() if ssl_object is not None else None)
        self.app_state = {**self.app_state, SCOPE_KEY: ids}


def scope_identities(scope: Any) -> frozenset[str]:
    """Return the client certificate's identities of a request (empty without mutual TLS)."""
    state = scope.get("state") or {}
    ids = state.get(SCOPE_KEY)
    return ids if isinstance(ids, frozenset) else frozenset()
