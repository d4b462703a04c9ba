"""The plan is one versioned record (daemon/core/actions.py): stored plans get their
schema version, and ``dest_uidnext`` (kept in the plan as well) leaves the table.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("UPDATE decisions SET plan = json_set(plan, '$.v', 2) WHERE plan IS NOT NULL")
    else:
        op.execute(
            "UPDATE decisions SET plan = jsonb_set(plan::jsonb, '{v}', '2')::text "
            "WHERE plan IS NOT NULL"
        )
    op.execute("ALTER TABLE decisions DROP COLUMN dest_uidnext")


def downgrade() -> None:
    raise NotImplementedError("plans are not un-versioned; restore a backup instead")
