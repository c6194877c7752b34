"""Rollout state: rollouts, the devices each touched (with their previous package), gate decisions.

Revision ID: 0002_rollout
Revises: 0001_fleet_initial
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_rollout"
down_revision = "0001_fleet_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("package_id", sa.String(128), nullable=False),
        sa.Column("variant", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("stage_started_unix_s", sa.Float(), nullable=False),
        sa.Column("stage_assigned_unix_s", sa.Float(), nullable=True),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("expected_latency_ms", sa.Float(), nullable=True),
        sa.Column("latency_slo_ms", sa.Float(), nullable=True),
        sa.Column("override", sa.Boolean(), nullable=False),
        sa.Column("abort_requested", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_unix_s", sa.Float(), nullable=False),
        sa.Column("updated_unix_s", sa.Float(), nullable=False),
        sa.Column("finished_unix_s", sa.Float(), nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_unix_s", sa.Float(), nullable=True),
    )
    op.create_index("ix_rollouts_model_name", "rollouts", ["model_name"])
    op.create_index("ix_rollouts_target", "rollouts", ["target"])
    op.create_index("ix_rollouts_status", "rollouts", ["status"])
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.String(64), sa.ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("previous_package_id", sa.String(128), nullable=True),
        sa.Column("assigned_unix_s", sa.Float(), nullable=False),
        sa.Column("rolled_back_unix_s", sa.Float(), nullable=True),
    )
    op.create_table(
        "rollout_decisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.String(64), sa.ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("stage_label", sa.String(64), nullable=False),
        sa.Column("at_unix_s", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reasons_json", sa.Text(), nullable=False),
        sa.Column("figures_json", sa.Text(), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_rollout_decisions_rollout_id", "rollout_decisions", ["rollout_id"])


def downgrade() -> None:
    op.drop_index("ix_rollout_decisions_rollout_id", "rollout_decisions")
    op.drop_table("rollout_decisions")
    op.drop_table("rollout_devices")
    op.drop_index("ix_rollouts_status", "rollouts")
    op.drop_index("ix_rollouts_target", "rollouts")
    op.drop_index("ix_rollouts_model_name", "rollouts")
    op.drop_table("rollouts")
