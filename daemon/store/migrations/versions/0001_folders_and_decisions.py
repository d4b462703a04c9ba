"""Folders and the decisions journal.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from daemon.store.schema import Id

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "folders",
        sa.Column("account", sa.Text, primary_key=True),
        sa.Column("folder", sa.Text, primary_key=True),
        sa.Column("uidvalidity", sa.BigInteger, nullable=False),
        sa.Column("high_water", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
    )
    op.create_table(
        "decisions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.Text, nullable=False, server_default="triage"),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("folder", sa.Text, nullable=False),
        sa.Column("uidvalidity", sa.BigInteger, nullable=False),
        sa.Column("uid", sa.BigInteger, nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("size", sa.BigInteger),
        sa.Column("internal_date", sa.Text),
        sa.Column("intent", sa.Text),
        sa.Column("confidence", sa.Float),
        sa.Column("abstain", sa.Integer),
        sa.Column("top_k", sa.Text),
        sa.Column("model_version", sa.Text),
        sa.Column("rule", sa.Text),
        sa.Column("action", sa.Text),
        sa.Column("plan", sa.Text),
        sa.Column("destination", sa.Text),
        sa.Column("dest_uidnext", sa.BigInteger),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("text", sa.Text),
        sa.Column("undo_of", Id, sa.ForeignKey("decisions.id")),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("done_at", sa.Text),
        sqlite_autoincrement=True,
    )
    triage = sa.text("kind = 'triage'")
    op.create_index(
        "decisions_message",
        "decisions",
        ["account", "folder", "uidvalidity", "uid"],
        unique=True,
        sqlite_where=triage,
        postgresql_where=triage,
    )
    op.create_index("decisions_status", "decisions", ["status"])
    op.create_index("decisions_created", "decisions", ["created_at"])
    op.create_index("decisions_message_id", "decisions", ["message_id"])


def downgrade() -> None:
    op.drop_table("decisions")
    op.drop_table("folders")
