"""Fleet initial schema: devices, enrolment and operator tokens, packages, desired state, telemetry, events.

Revision ID: 0001_fleet_initial
Revises:
Create Date: 2026-11-25

``upgrade`` is one long function on purpose: it is a flat listing of the tables as first shipped, and a
migration that has run in the field must stay byte-for-byte what it was.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_fleet_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("credential_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("current_package_id", sa.String(128), nullable=True),
        sa.Column("current_version", sa.String(32), nullable=True),
        sa.Column("previous_package_id", sa.String(128), nullable=True),
        sa.Column("previous_version", sa.String(32), nullable=True),
        sa.Column("samples_opt_in", sa.Boolean(), nullable=False),
        sa.Column("feedback_opt_in", sa.Boolean(), nullable=False),
        sa.Column("enrolled_unix_s", sa.Float(), nullable=False),
        sa.Column("last_seen_unix_s", sa.Float(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_devices_target", "devices", ["target"])
    op.create_index("ix_devices_cohort", "devices", ["cohort"])
    op.create_table(
        "enrolment_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("samples_opt_in", sa.Boolean(), nullable=False),
        sa.Column("feedback_opt_in", sa.Boolean(), nullable=False),
        sa.Column("created_unix_s", sa.Float(), nullable=False),
        sa.Column("expires_unix_s", sa.Float(), nullable=False),
        sa.Column("used_unix_s", sa.Float(), nullable=True),
        sa.Column("device_id", sa.String(64), nullable=True),
    )
    op.create_table(
        "operator_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_unix_s", sa.Float(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "packages",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("variant", sa.String(64), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("manifest_json", sa.Text(), nullable=False),
        sa.Column("signature_b64", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("artifact", sa.LargeBinary(), nullable=False),
        sa.Column("created_unix_s", sa.Float(), nullable=False),
    )
    op.create_index("ix_packages_model_name", "packages", ["model_name"])
    op.create_table(
        "desired_state",
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("package_id", sa.String(128), sa.ForeignKey("packages.id"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("set_unix_s", sa.Float(), nullable=False),
    )
    op.create_table(
        "cohort_desired_state",
        sa.Column("cohort", sa.String(64), primary_key=True),
        sa.Column("package_id", sa.String(128), sa.ForeignKey("packages.id"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("set_unix_s", sa.Float(), nullable=False),
    )
    op.create_table(
        "telemetry",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("package_id", sa.String(128), nullable=True),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("window_start_unix_s", sa.Float(), nullable=False),
        sa.Column("window_end_unix_s", sa.Float(), nullable=False),
        sa.Column("received_unix_s", sa.Float(), nullable=False),
        sa.Column("n_inferences", sa.Integer(), nullable=False),
        sa.Column("sketch_json", sa.Text(), nullable=False),
        sa.Column("samples_json", sa.Text(), nullable=True),
        sa.Column("feedback_json", sa.Text(), nullable=True),
        sa.UniqueConstraint("device_id", "seq", name="uq_telemetry_device_seq"),
    )
    op.create_index("ix_telemetry_device_id", "telemetry", ["device_id"])
    op.create_index("ix_telemetry_model_window", "telemetry", ["model_name", "model_version", "window_end_unix_s"])
    op.create_table(
        "deployment_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("package_id", sa.String(128), nullable=True),
        sa.Column("model_version", sa.String(32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at_unix_s", sa.Float(), nullable=False),
    )
    op.create_index("ix_deployment_events_device_id", "deployment_events", ["device_id"])
    op.create_index("ix_deployment_events_at_unix_s", "deployment_events", ["at_unix_s"])


def downgrade() -> None:
    for table in ("deployment_events", "telemetry", "cohort_desired_state", "desired_state", "packages",
                  "operator_tokens", "enrolment_tokens", "devices"):
        op.drop_table(table)
