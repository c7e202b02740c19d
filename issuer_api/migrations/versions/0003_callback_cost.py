"""Callbacks keep their cost: an exact decimal amount and its currency (null for unpriced models).

Revision ID: 0003_callback_cost
Revises: 0002_user_email
Create Date: 2025-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_callback_cost"
down_revision = "0002_user_email"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add callbacks.cost_amount (a decimal string, never a float) and callbacks.cost_currency."""
    op.add_column("callbacks", sa.Column("cost_amount", sa.String(64), nullable=True))
    op.add_column("callbacks", sa.Column("cost_currency", sa.String(3), nullable=True))


def downgrade() -> None:
    """Drop the cost columns."""
    with op.batch_alter_table("callbacks") as batch:
        batch.drop_column("cost_currency")
        batch.drop_column("cost_amount")
