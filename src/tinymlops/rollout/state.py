"""Rollout state in the fleet database: rollouts, the devices each one touched, and every gate decision.

The tables join the fleet store's declarative ``Base`` (migration ``0002_rollout``), so one database holds the
fleet and the rollouts that act on it, and a controller restarted after a crash reads back exactly where it was.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tinymlops.fleet.store import Base

ACTIVE = ("running", "rolling_back")
TERMINAL = ("succeeded", "rolled_back", "aborted", "stopped")


class Rollout(Base):
    """One staged rollout of a model version to one target."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(64), index=True)
    package_id: Mapped[str] = mapped_column(String(128))
    variant: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), index=True)  # running|rolling_back|succeeded|rolled_back|...
    stage_index: Mapped[int] = mapped_column(Integer, default=0)
    stage_started_unix_s: Mapped[float] = mapped_column(Float)
    stage_assigned_unix_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    config_json: Mapped[str] = mapped_column(Text)  # the plan frozen at start: a restart follows the same plan
    expected_latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_slo_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    override: Mapped[bool] = mapped_column(Boolean, default=False)
    abort_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_unix_s: Mapped[float] = mapped_column(Float)
    updated_unix_s: Mapped[float] = mapped_column(Float)
    finished_unix_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_unix_s: Mapped[float | None] = mapped_column(Float, nullable=True)


class RolloutDevice(Base):
    """A device a rollout switched to the candidate, and the package it goes back to on rollback."""

    __tablename__ = "rollout_devices"

    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage_index: Mapped[int] = mapped_column(Integer)
    previous_package_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    assigned_unix_s: Mapped[float] = mapped_column(Float)
    rolled_back_unix_s: Mapped[float | None] = mapped_column(Float, nullable=True)


class RolloutDecision(Base):
    """A gate evaluation and what the controller did about it."""

    __tablename__ = "rollout_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    stage_index: Mapped[int] = mapped_column(Integer)
    stage_label: Mapped[str] = mapped_column(String(64), default="")
    at_unix_s: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(16))  # pass|fail|inconclusive|abort
    action: Mapped[str] = mapped_column(String(16))  # advance|complete|hold|rollback|stop|abort
    reasons_json: Mapped[str] = mapped_column(Text)
    figures_json: Mapped[str] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
