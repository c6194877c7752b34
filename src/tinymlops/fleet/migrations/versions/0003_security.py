"""Security: rollback authorisations relayed with the desired state; an auth epoch that revocations bump.

Revision ID: 0003_security
Revises: 0002_rollout
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_security"
down_revision = "0002_rollout"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("desired_state") as batch:
        batch.add_column(sa.Column("authorisation_json", sa.Text(), nullable=True))
    epochs = op.create_table(
        "auth_epochs",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.Integer(), nullable=False),
    )
    op.bulk_insert(epochs, [{"name": "revocation", "value": 0}])


def downgrade() -> None:
    op.drop_table("auth_epochs")
    with op.batch_alter_table("desired_state") as batch:
        batch.drop_column("authorisation_json")
