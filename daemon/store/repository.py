"""What every repository of the state store shares: the database, the lease fence, and
small helpers for chunked IN lists and upserts on both engines."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from daemon.store.database import Database
from daemon.store.leases import Fence

#: Values per IN list: far below both engines' limits on bound parameters.
_CHUNK = 500


class Repository:
    database: Database
    #: Set on a PostgreSQL state shared by replicas: every write for an account checks,
    #: in its own transaction, that this replica still holds the account's lease.
    fence: Fence | None = None

    def _fenced(self, conn: sa.Connection, accounts: Iterable[str]) -> dict[str, int]:
        """The lease epoch of each account (empty without a fence), or LeaseLostError."""
        return {} if self.fence is None else self.fence.check(conn, accounts)

    def _rows_in(self, make: Any, values: Sequence[Any]) -> list[sa.RowMapping]:
        """The rows of ``make(chunk)`` (a statement with an IN over ``chunk``) over
        ``values`` in chunks."""
        rows: list[sa.RowMapping] = []
        for start in range(0, len(values), _CHUNK):
            rows += self.database.rows(make(list(values[start : start + _CHUNK])))
        return rows

    def _upsert(
        self, conn: sa.Connection, table: sa.Table, keys: Sequence[str], **values: Any
    ) -> None:
        """Insert a row, or update the one with the same ``keys``."""
        dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
        statement = dialect.insert(table).values(**values)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=list(keys),
                set_={k: statement.excluded[k] for k in values if k not in keys},
            )
        )
