"""Refresh tokens rotate on use and a reused one revokes its family (RFC 9700 §4.14); keys minted per user are
counted by time for the mint rate.

Revision ID: 0004_refresh_families
Revises: 0003_callback_cost
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_refresh_families"
down_revision = "0003_callback_cost"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create refresh_families and refresh_tokens; index minted_keys by (user_id, created_at)."""
    op.create_table(
        "refresh_families",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(64), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(32), nullable=True),
    )
    op.create_index("ix_refresh_families_user_id", "refresh_families", ["user_id"])
    op.create_table(
        "refresh_tokens",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("family_id", sa.String(64), sa.ForeignKey("refresh_families.id"), nullable=False),
        sa.Column("exp", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_refresh_tokens_family_id", "refresh_tokens", ["family_id"])
    op.create_index("ix_minted_keys_user_created", "minted_keys", ["user_id", "created_at"])


def downgrade() -> None:
    """Drop the refresh tables and the mint-rate index."""
    op.drop_index("ix_minted_keys_user_created", table_name="minted_keys")
    op.drop_index("ix_refresh_tokens_family_id", table_name="refresh_tokens")
    op.drop_table("refresh_tokens")
    op.drop_index("ix_refresh_families_user_id", table_name="refresh_families")
    op.drop_table("refresh_families")
