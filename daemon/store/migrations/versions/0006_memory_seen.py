"""The correction memory's remap rule: sure decisions the model made per intent and
account (``memory_seen``), the denominator of "most of what the model calls X was moved".
Filled from the journal's sure decisions the model made (not those the memory made), so
corrections made before the upgrade are weighed against the mail they came from.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "memory_seen",
        sa.Column("account", sa.Text, primary_key=True),
        sa.Column("said", sa.Text, primary_key=True),
        sa.Column("seen", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.execute(
        "INSERT INTO memory_seen (account, said, seen) "
        "SELECT account, intent, COUNT(*) FROM decisions "
        "WHERE kind = 'triage' AND intent IS NOT NULL AND COALESCE(abstain, 0) = 0 "
        "AND memory_id IS NULL GROUP BY account, intent"
    )


def downgrade() -> None:
    op.drop_table("memory_seen")
