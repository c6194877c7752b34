"""On-device personalisation, switched per cohort (by operators, or by a drift verdict's ``personalise`` strategy).

Revision ID: 0010_personalise
Revises: 0009_field_data
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_personalise"
down_revision = "0009_field_data"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cohort_personalise",
        sa.Column("cohort", sa.String(64), primary_key=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False, server_default=""),
        sa.Column("set_unix_s", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cohort_personalise")
