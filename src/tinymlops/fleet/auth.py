"""Tokens: generation and hashing of operator, enrolment and device credentials; operator roles.

Every token is 256 bits from ``secrets`` and only its SHA-256 is stored. A fast hash is the right tool here: with
that much entropy there is nothing to brute-force, so a slow password KDF would only cost throughput on every
authenticated request. Lookups go by hash, so no comparison of secrets happens in Python at all.
"""

from __future__ import annotations

import hashlib
import re
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


# ---- operator roles ------------------------------------------------------------------------------------------

ROLES = ("read", "deploy", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}
# writes a deploy token may make: ship packages and point devices at them. Every other write (revoking devices,
# key updates, anything a later router adds) needs admin: a new route is closed to deploy tokens until listed here.
_DEPLOY_WRITES = (re.compile(r"^POST /v1/packages$"), re.compile(r"^PUT /v1/packages/[^/]+/keys$"),
                  re.compile(r"^PUT /v1/desired-state$"), re.compile(r"^POST /v1/enrolment-tokens$"),
                  re.compile(r"^PUT /v1/cohorts/[^/]+/personalise$"))


def required_role(method: str, path: str) -> str:
    """Return the least operator role a request needs: reads ``read``, deployment writes ``deploy``, else ``admin``."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    return "deploy" if any(p.match(f"{method} {path}") for p in _DEPLOY_WRITES) else "admin"


def role_allows(role: str, needed: str) -> bool:
    """Return whether a token of ``role`` may make a request needing ``needed``."""
    return _RANK.get(role, -1) >= _RANK[needed]
