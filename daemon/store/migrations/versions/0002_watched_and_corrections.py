"""Learning from corrections: where each triage folder was last looked at, and the
corrections found there (a message the user moved into another triage folder).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from daemon.store.schema import Id

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watched",
        sa.Column("account", sa.Text, primary_key=True),
        sa.Column("folder", sa.Text, primary_key=True),
        sa.Column("uidvalidity", sa.BigInteger, nullable=False),
        sa.Column("uidnext", sa.BigInteger, nullable=False),
        sa.Column("highestmodseq", sa.BigInteger),
        sa.Column("updated_at", sa.Text, nullable=False),
    )
    op.create_table(
        "corrections",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("decision_id", Id, sa.ForeignKey("decisions.id"), nullable=False, unique=True),
        sa.Column("message_id", sa.Text),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("predicted", sa.Text),
        sa.Column("corrected", sa.Text, nullable=False),
        sa.Column("folder", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("corrections_created", "corrections", ["created_at"])


def downgrade() -> None:
    op.drop_table("corrections")
    op.drop_table("watched")
