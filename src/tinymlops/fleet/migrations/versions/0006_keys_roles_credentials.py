"""Keys, roles and credentials: operator-token roles and expiry, signed key updates, pending device credentials.

* ``operator_tokens.role`` (read | deploy | admin; existing tokens become admin) and ``expires_unix_s``;
* ``key_updates``: signed key-set updates (signing-key rotation/revocation) relayed to devices, one per version;
* ``device_credentials_pending``: a device's new credential until its first use retires the old one.

Revision ID: 0006_keys_roles_credentials
Revises: 0005_telemetry_seq_bigint
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_keys_roles_credentials"
down_revision = "0005_telemetry_seq_bigint"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operator_tokens") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="admin"))
        batch.add_column(sa.Column("expires_unix_s", sa.Float(), nullable=True))
    op.create_table(
        "key_updates",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("update_json", sa.Text(), nullable=False),
        sa.Column("created_unix_s", sa.Float(), nullable=False),
    )
    op.create_table(
        "device_credentials_pending",
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("credential_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_unix_s", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("device_credentials_pending")
    op.drop_table("key_updates")
    with op.batch_alter_table("operator_tokens") as batch:
        batch.drop_column("expires_unix_s")
        batch.drop_column("role")
