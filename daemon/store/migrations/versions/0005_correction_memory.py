"""The correction memory: each correction's sentence embedding, what the model said and
what the user chose (daemon/core/memory.py); decisions record the entry they followed.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "memory",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("correction_id", Id, sa.ForeignKey("corrections.id"), unique=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("said", sa.Text, nullable=False),
        sa.Column("confident", sa.Boolean, nullable=False),
        sa.Column("chosen", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("used_at", sa.Text),
        sa.Column("uses", sa.Integer, nullable=False, server_default="0"),
        sqlite_autoincrement=True,
    )
    op.create_index("memory_scope", "memory", ["account", "model_version", "id"])
    op.add_column("decisions", sa.Column("memory_id", Id))
    op.add_column("decisions", sa.Column("memory_similarity", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("memory_similarity")
        batch.drop_column("memory_id")
    op.drop_index("memory_scope", "memory")
    op.drop_table("memory")
