"""Telemetry ``seq`` as a 64-bit integer: agents number reports by millisecond clock (~1.8e12), past int32.

SQLite's INTEGER is always 64-bit, so this never showed there; on PostgreSQL ``integer`` is 32-bit and every
agent report failed with "integer out of range" (found by the compose stack test). The API allows seq <= 2**62.

Revision ID: 0005_telemetry_seq_bigint
Revises: 0004_device_encryption
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_telemetry_seq_bigint"
down_revision = "0004_device_encryption"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("telemetry") as batch:
        batch.alter_column("seq", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("telemetry") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
