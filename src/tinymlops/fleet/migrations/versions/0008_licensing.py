"""Offline licensing: devices' receipt keys and chain heads, issued licences, accepted receipts, findings.

Revision ID: 0008_licensing
Revises: 0006_keys_roles_credentials (0007, planned for consented field data, did not exist yet: a 0007 added later
must chain on this revision so the history keeps one head)
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_licensing"
down_revision = "0006_keys_roles_credentials"
branch_labels = None
depends_on = None


def _device_fk(primary_key: bool = False) -> sa.Column:
    return sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"),
                     primary_key=primary_key, nullable=False)


def upgrade() -> None:
    op.create_table(
        "licence_devices",
        _device_fk(primary_key=True),
        sa.Column("public_b64", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("registered_unix_s", sa.Float(), nullable=False),
        sa.Column("head_seq", sa.BigInteger(), nullable=False),
        sa.Column("state_json", sa.Text(), nullable=False),
        sa.Column("updated_unix_s", sa.Float(), nullable=False),
    )
    op.create_table(
        "licences",
        sa.Column("id", sa.String(64), primary_key=True),
        _device_fk(),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("customer", sa.String(128), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("issued_unix_s", sa.Float(), nullable=False),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.Column("signature_b64", sa.String(128), nullable=False),
        sa.UniqueConstraint("device_id", "sequence", name="uq_licences_device_sequence"),
    )
    op.create_index("ix_licences_device_id", "licences", ["device_id"])
    op.create_index("ix_licences_customer", "licences", ["customer"])
    op.create_table(
        "licence_receipts",
        _device_fk(primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("licence_id", sa.String(64), nullable=True),
        sa.Column("ts_unix_s", sa.Float(), nullable=False),
        sa.Column("received_unix_s", sa.Float(), nullable=False),
        sa.Column("receipt_json", sa.Text(), nullable=False),
    )
    op.create_table(
        "licence_findings",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _device_fk(),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("at_unix_s", sa.Float(), nullable=False),
    )
    op.create_index("ix_licence_findings_device_at", "licence_findings", ["device_id", "at_unix_s"])


def downgrade() -> None:
    op.drop_index("ix_licence_findings_device_at", table_name="licence_findings")
    op.drop_table("licence_findings")
    op.drop_table("licence_receipts")
    op.drop_index("ix_licences_customer", table_name="licences")
    op.drop_index("ix_licences_device_id", table_name="licences")
    op.drop_table("licences")
    op.drop_table("licence_devices")
