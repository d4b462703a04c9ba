"""The state database's migrations: Alembic revisions in ``versions/``, one list for
SQLite and PostgreSQL.

Each revision runs once, in its own transaction, in order; a database whose revision this
CleanInbox does not know (written by a newer one) is refused. Never edit a released
revision: add the next one (``versions/NNNN_what.py``, ``down_revision`` the previous).

SQLite databases from before Alembic carry their schema version in ``PRAGMA user_version``
(1 to 3, the same steps as revisions 0001 to 0003): they are stamped at that revision and
upgraded from there. Afterwards ``user_version`` is set to :data:`ALEMBIC_MANAGED`, so a
CleanInbox from before the switch refuses the database as newer instead of re-creating
its tables.

On PostgreSQL, replicas starting together serialise their migrations on an advisory lock.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from daemon.errors import StateError

#: ``PRAGMA user_version`` of a SQLite database whose schema Alembic manages.
ALEMBIC_MANAGED = 100
#: The last ``user_version`` written by the migrations before Alembic.
_LEGACY_LATEST = 3
#: pg_advisory_lock key held while migrating ("CleanInb" in ASCII).
_MIGRATION_LOCK = 0x436C65616E496E62


def _config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this CleanInbox knows."""
    script = ScriptDirectory(str(Path(__file__).parent))
    current = script.get_current_head()
    assert current is not None
    return current


def current(connection: sa.Connection) -> str | None:
    """The revision ``connection``'s database is at (None: no Alembic table yet)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: sa.Connection, where: str) -> None:
    """Bring the database behind ``connection`` (autocommit, not in a transaction) to
    :func:`head`. ``where`` names the database in errors (no password)."""
    sqlite = connection.dialect.name == "sqlite"
    if not sqlite:
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})")
    try:
        config = _config(connection)
        script = ScriptDirectory.from_config(config)
        revision = current(connection)
        connection.commit()
        if revision is not None:
            try:
                script.get_revision(revision)
            except Exception:
                raise StateError(
                    f"state {where} has schema revision {revision}, newer than this "
                    f"CleanInbox (its newest is {head()}); upgrade CleanInbox"
                ) from None
        elif sqlite:
            legacy = int(connection.exec_driver_sql("PRAGMA user_version").scalar_one())
            connection.commit()
            if legacy > _LEGACY_LATEST and legacy != ALEMBIC_MANAGED:
                raise StateError(
                    f"state {where} has schema version {legacy}, newer than this "
                    "CleanInbox; upgrade CleanInbox"
                )
            if 0 < legacy <= _LEGACY_LATEST:
                command.stamp(config, f"{legacy:04d}")
        if revision == head():
            return  # nothing to do, nothing written
        command.upgrade(config, "head")
        if sqlite:
            connection.exec_driver_sql(f"PRAGMA user_version = {ALEMBIC_MANAGED}")
            connection.commit()
    except StateError:
        raise
    except sa.exc.DBAPIError as exc:
        raise StateError(f"state {where}: migration failed: {exc.orig}") from exc
    finally:
        if not sqlite:
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})")
            connection.commit()
