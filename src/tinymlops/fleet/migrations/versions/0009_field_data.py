"""Consented field data: the field-data policy (signed field key, limits), consents, sealed batches, forget audit.

Revision ID: 0009_field_data
Revises: 0008_licensing
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_field_data"
down_revision = "0008_licensing"
branch_labels = None
depends_on = None


def _device_fk() -> sa.Column:
    return sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "field_policy",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("statement_json", sa.Text(), nullable=False),
        sa.Column("retention_s", sa.Float(), nullable=False),
        sa.Column("max_samples_per_device", sa.Integer(), nullable=False),
        sa.Column("reservoir_size", sa.Integer(), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("updated_unix_s", sa.Float(), nullable=False),
    )
    op.create_table(
        "field_consents",
        sa.Column("id", sa.String(32), primary_key=True),
        _device_fk(),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("granted_by", sa.String(64), nullable=False),
        sa.Column("granted_unix_s", sa.Float(), nullable=False),
        sa.Column("revoked_by", sa.String(64), nullable=True),
        sa.Column("revoked_unix_s", sa.Float(), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_field_consents_device_id", "field_consents", ["device_id"])
    op.create_table(
        "field_batches",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _device_fk(),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("consent_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("window_start_unix_s", sa.Float(), nullable=False),
        sa.Column("window_end_unix_s", sa.Float(), nullable=False),
        sa.Column("received_unix_s", sa.Float(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.UniqueConstraint("device_id", "seq", name="uq_field_batches_device_seq"),
    )
    op.create_index("ix_field_batches_device_id", "field_batches", ["device_id"])
    op.create_index("ix_field_batches_cohort", "field_batches", ["cohort"])
    op.create_index("ix_field_batches_received_unix_s", "field_batches", ["received_unix_s"])
    op.create_table(
        "field_forgets",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("at_unix_s", sa.Float(), nullable=False),
        sa.Column("batches_deleted", sa.Integer(), nullable=False),
        sa.Column("samples_deleted", sa.Integer(), nullable=False),
        sa.Column("consents_revoked", sa.Integer(), nullable=False),
    )
    op.create_index("ix_field_forgets_device_id", "field_forgets", ["device_id"])


def downgrade() -> None:
    op.drop_index("ix_field_forgets_device_id", table_name="field_forgets")
    op.drop_table("field_forgets")
    for ix in ("received_unix_s", "cohort", "device_id"):
        op.drop_index(f"ix_field_batches_{ix}", table_name="field_batches")
    op.drop_table("field_batches")
    op.drop_index("ix_field_consents_device_id", table_name="field_consents")
    op.drop_table("field_consents")
    op.drop_table("field_policy")
