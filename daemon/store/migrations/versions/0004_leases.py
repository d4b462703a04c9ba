"""Accounts leased across replicas sharing a PostgreSQL state: who holds each account,
under which epoch, until when; which replicas are alive; and the epoch under which each
decision was journaled (docs/scaling.md).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("account", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text),
        sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "replicas",
        sa.Column("replica", sa.Text, primary_key=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("decisions", sa.Column("lease_epoch", sa.BigInteger))


def downgrade() -> None:
    op.drop_column("decisions", "lease_epoch")
    op.drop_table("replicas")
    op.drop_table("leases")
