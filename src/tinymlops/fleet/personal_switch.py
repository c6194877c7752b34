"""Which cohorts personalise on the device (:mod:`tinymlops.personalise`): the service side of the switch.

Operators flip it (``tinymlops fleet personalise COHORT [--off]``, ``PUT /v1/cohorts/{cohort}/personalise``, deploy
role), and so does a drift verdict whose config says ``retrain: {strategy: personalise}``. Devices learn it from
their desired state (``personalise``), devices that enrol later included; an agent started with
``--personalise`` personalises regardless.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Boolean, Float, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from tinymlops.fleet.store import Base, Device, Store


class CohortPersonalise(Base):
    __tablename__ = "cohort_personalise"

    cohort: Mapped[str] = mapped_column(String(64), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(String(500), default="")
    set_unix_s: Mapped[float] = mapped_column(Float)


def set_personalise(store: Store, cohort: str, enabled: bool, reason: str = "") -> dict[str, Any]:
    """Switch a cohort's on-device personalisation; return the new setting with the cohort's device count."""
    now = time.time()
    with store.session() as s:
        s.merge(CohortPersonalise(cohort=cohort, enabled=enabled, reason=reason[:500], set_unix_s=now))
        devices = len(list(s.scalars(select(Device.id).where(Device.cohort == cohort, Device.revoked.is_(False)))))
    return {"cohort": cohort, "enabled": enabled, "reason": reason[:500], "set_unix_s": now, "devices": devices}


def list_settings(store: Store) -> list[dict[str, Any]]:
    """Return every cohort's switch (cohorts never switched are off)."""
    with store.session() as s:
        rows = s.scalars(select(CohortPersonalise).order_by(CohortPersonalise.cohort))
        return [{"cohort": r.cohort, "enabled": r.enabled, "reason": r.reason, "set_unix_s": r.set_unix_s}
                for r in rows]


def personalise_for(session: Session, device_id: str) -> bool:
    """Return whether a device's cohort personalises."""
    q = (select(CohortPersonalise.enabled).join(Device, Device.cohort == CohortPersonalise.cohort)
         .where(Device.id == device_id))
    return bool(session.scalar(q))
