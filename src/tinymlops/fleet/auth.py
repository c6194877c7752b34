"""Tokens: generation and hashing of operator, enrolment and device credentials.

Every token is 256 bits from ``secrets`` and only its SHA-256 is stored. A fast hash is the right tool here: with
that much entropy there is nothing to brute-force, so a slow password KDF would only cost throughput on every
authenticated request. Lookups go by hash, so no comparison of secrets happens in Python at all.
"""

from __future__ import annotations

import hashlib
import secrets

OPERATOR_PREFIX = "tmo_op"
ENROLMENT_PREFIX = "tmo_enrol"
DEVICE_PREFIX = "tmo_dev"


def new_token(prefix: str) -> str:
    """Return a new random token with a readable prefix (``tmo_dev_...``)."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    """Return the hex SHA-256 of a token (what the database stores)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer(authorization: str | None) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
