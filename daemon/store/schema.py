"""The state store's tables, defined once for SQLite and PostgreSQL (SQLAlchemy Core).

This is the schema as it is now; :mod:`daemon.store.migrations` (Alembic) is how a
database of any earlier version gets here, on either engine. The test suite checks that
a migrated database matches these definitions exactly.

Times are ISO 8601 UTC text (:func:`daemon.store.records.iso_utc`), so they compare and
sort the same on both engines; UIDs, UIDVALIDITY and MODSEQ are 64-bit (a UID may reach
2**32 - 1, beyond PostgreSQL's ``integer``).
"""

from __future__ import annotations

import sqlalchemy as sa

#: A row id: ``INTEGER PRIMARY KEY AUTOINCREMENT`` in SQLite (ids never reused), a 64-bit
#: identity in PostgreSQL.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

folders = sa.Table(
    "folders",
    metadata,
    sa.Column("account", sa.Text, primary_key=True),
    sa.Column("folder", sa.Text, primary_key=True),
    sa.Column("uidvalidity", sa.BigInteger, nullable=False),
    sa.Column("high_water", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Text, nullable=False),
)

decisions = sa.Table(
    "decisions",
    metadata,
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
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("text", sa.Text),
    sa.Column("undo_of", Id, sa.ForeignKey("decisions.id")),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("done_at", sa.Text),
    #: The lease epoch the intent was journaled under (PostgreSQL replicas; else null).
    sa.Column("lease_epoch", sa.BigInteger),
    #: When the correction memory decided: the entry followed and its cosine similarity.
    sa.Column("memory_id", Id),
    sa.Column("memory_similarity", sa.Float),
    sa.Index(
        "decisions_message",
        "account",
        "folder",
        "uidvalidity",
        "uid",
        unique=True,
        sqlite_where=sa.text("kind = 'triage'"),
        postgresql_where=sa.text("kind = 'triage'"),
    ),
    sa.Index("decisions_status", "status"),
    sa.Index("decisions_created", "created_at"),
    sa.Index("decisions_message_id", "message_id"),
    sqlite_autoincrement=True,
)

watched = sa.Table(
    "watched",
    metadata,
    sa.Column("account", sa.Text, primary_key=True),
    sa.Column("folder", sa.Text, primary_key=True),
    sa.Column("uidvalidity", sa.BigInteger, nullable=False),
    sa.Column("uidnext", sa.BigInteger, nullable=False),
    sa.Column("highestmodseq", sa.BigInteger),
    sa.Column("updated_at", sa.Text, nullable=False),
)

corrections = sa.Table(
    "corrections",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("account", sa.Text, nullable=False),
    sa.Column("decision_id", Id, sa.ForeignKey("decisions.id"), nullable=False, unique=True),
    sa.Column("message_id", sa.Text),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("predicted", sa.Text),
    sa.Column("corrected", sa.Text, nullable=False),
    sa.Column("folder", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Index("corrections_created", "created_at"),
    sqlite_autoincrement=True,
)

#: The correction memory (daemon/core/memory.py): each correction's sentence embedding
#: under one model, what that model said about it and what the user chose. ``account``
#: "*" is the pool shared by every account (``feedback import`` without an account).
memory = sa.Table(
    "memory",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("account", sa.Text, nullable=False),
    sa.Column("correction_id", Id, sa.ForeignKey("corrections.id"), unique=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("said", sa.Text, nullable=False),
    sa.Column("confident", sa.Boolean, nullable=False),
    sa.Column("chosen", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=False),  # float32, little-endian
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("used_at", sa.Text),
    sa.Column("uses", sa.Integer, nullable=False, server_default="0"),
    #: The memory's signature (count and newest id per account and model, asked before
    #: every batch) is read from this index alone, never from the wide rows.
    sa.Index("memory_scope", "account", "model_version", "id"),
    sqlite_autoincrement=True,
)

#: How many sure decisions the model made with each intent, per account (the memory's
#: remap rule: corrections that are most of what the model calls an intent remap it).
memory_seen = sa.Table(
    "memory_seen",
    metadata,
    sa.Column("account", sa.Text, primary_key=True),
    sa.Column("said", sa.Text, primary_key=True),
    sa.Column("seen", sa.BigInteger, nullable=False, server_default="0"),
)

#: Who holds each account (replicas on a PostgreSQL state; daemon/store/leases.py). A
#: claim raises the epoch; writes for the account are fenced on (owner, epoch, expiry).
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("account", sa.Text, primary_key=True),
    sa.Column("owner", sa.Text),
    sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

#: Replicas alive (seen within one lease TTL): the fair share is accounts / replicas.
replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("replica", sa.Text, primary_key=True),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
)

#: Tables ``state migrate`` copies, in an order that respects their foreign keys (leases
#: and replicas are live coordination, not history: they start empty).
TABLES: tuple[sa.Table, ...] = (
    folders,
    watched,
    decisions,
    corrections,
    memory,
    memory_seen,
)
