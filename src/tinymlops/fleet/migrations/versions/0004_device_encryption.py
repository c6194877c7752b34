"""Per-device encryption: devices' X25519 public keys and package content keys wrapped per device.

Revision ID: 0004_device_encryption
Revises: 0003_security
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_device_encryption"
down_revision = "0003_security"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_keys",
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("public_b64", sa.String(64), nullable=False),
    )
    op.create_table(
        "package_keys",
        sa.Column("package_id", sa.String(128), sa.ForeignKey("packages.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("wrapped_b64", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("package_keys")
    op.drop_table("device_keys")
