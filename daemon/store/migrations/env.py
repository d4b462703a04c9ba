"""Alembic's entry point: runs the migrations on the connection the store passes in
(:func:`daemon.store.migrations.upgrade`); there is no ``alembic.ini`` and no URL here."""

from __future__ import annotations

from alembic import context

from daemon.store.schema import metadata


def run() -> None:
    context.configure(
        connection=context.config.attributes["connection"],
        target_metadata=metadata,
        transactional_ddl=True,  # SQLite and PostgreSQL both roll DDL back with a transaction
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if hasattr(context, "config"):  # run by Alembic (importing the module does nothing)
    run()
