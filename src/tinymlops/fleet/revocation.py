"""Revocation that reaches every server worker within a second: a shared epoch bumped on every revocation.

Each worker caches authentication verdicts (a DB lookup per request would halve ingestion throughput). A
revocation (device credential, operator token) increments ``auth_epochs.revocation`` in the same transaction; every
worker reads that one integer at most every :data:`EPOCH_CHECK_S` and drops its caches when it changed.
"""

from __future__ import annotations

from sqlalchemy import Integer, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from tinymlops.fleet.store import Base, Store

EPOCH_CHECK_S = 0.4
REVOCATION = "revocation"


class AuthEpoch(Base):
    __tablename__ = "auth_epochs"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


def bump(s: Session) -> None:
    """Invalidate every worker's auth caches (call inside the transaction that revokes)."""
    s.execute(update(AuthEpoch).where(AuthEpoch.name == REVOCATION).values(value=AuthEpoch.value + 1))


def current(st: Store) -> int:
    """Return the revocation epoch."""
    with st.session() as s:
        return int(s.scalar(select(AuthEpoch.value).where(AuthEpoch.name == REVOCATION)) or 0)


def revoke_operator_tokens(st: Store, name: str | None = None, token: str | None = None) -> int:
    """Revoke operator tokens by name or by value; every worker refuses them within a second. Return how many."""
    from tinymlops.fleet import auth
    from tinymlops.fleet.store import OperatorToken

    if (name is None) == (token is None):
        raise ValueError("give a token name or a token, not both")
    cond = OperatorToken.name == name if name is not None else OperatorToken.token_hash == auth.hash_token(token or "")
    with st.session() as s:
        n = int(s.execute(update(OperatorToken).where(cond, OperatorToken.revoked.is_(False))
                          .values(revoked=True)).rowcount)  # type: ignore[attr-defined]
        if n:
            bump(s)
    return n
