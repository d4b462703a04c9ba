"""Moving a state from one engine to another: ``cleaninbox state migrate``.

Every table is copied with its ids (decisions keep the numbers the audit log, undo and
corrections refer to), inside one transaction on the target; before it commits, the
target's rows are read back and compared with the source's, table by table, by count and
by a SHA-256 over the rows in primary-key order. A difference rolls everything back.
The target must be empty; the source is opened with its lock, so a running daemon (which
holds it) makes the copy refuse to start.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from daemon.errors import StateError
from daemon.store.schema import TABLES
from daemon.store.state import StateStore

_BATCH = 1000


@dataclass(frozen=True)
class TableCopy:
    table: str
    rows: int
    sha256: str


def _ordered(table: sa.Table) -> sa.Select[Any]:
    return sa.select(table).order_by(*table.primary_key.columns)


def _checksum(rows: Iterable[sa.RowMapping]) -> tuple[int, str]:
    digest, count = hashlib.sha256(), 0
    for row in rows:
        digest.update(json.dumps(list(row.values()), default=str).encode())
        digest.update(b"\n")
        count += 1
    return count, digest.hexdigest()


def _batches(conn: sa.Connection, table: sa.Table) -> Iterator[list[dict[str, Any]]]:
    result = conn.execute(_ordered(table)).mappings()
    while batch := result.fetchmany(_BATCH):
        yield [dict(row) for row in batch]


def copy_state(source: StateStore, target: StateStore) -> list[TableCopy]:
    """Copy every row of ``source`` into the empty ``target``, verified; one transaction."""
    with target.database.engine.connect() as probe:
        for table in TABLES:
            held = probe.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            if held:
                raise StateError(
                    f"state {target.where} already holds {held} row(s) in {table.name}; "
                    "migrate into an empty database"
                )
    copies: list[TableCopy] = []
    with source.database.engine.connect() as src, target.database.transaction() as dst:
        for table in TABLES:
            for batch in _batches(src, table):
                dst.execute(sa.insert(table), batch)
            expected = _checksum(src.execute(_ordered(table)).mappings())
            found = _checksum(dst.execute(_ordered(table)).mappings())
            if found != expected:
                raise StateError(
                    f"copy of {table.name} does not match its source ({found[0]} rows, "
                    f"{expected[0]} expected); nothing was written"
                )
            copies.append(TableCopy(table.name, *expected))
        if dst.dialect.name == "postgresql":
            for table in TABLES:
                if "id" in table.c:  # ids inserted explicitly: move the sequence past them
                    dst.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"COALESCE((SELECT max(id) FROM {table.name}), 0) + 1, false)"
                    )
    return copies
