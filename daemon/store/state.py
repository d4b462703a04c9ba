"""The state store: where triage stands per folder, the journal of decisions, corrections.

The ``decisions`` table is the audit log and the write-ahead journal: a decision is
committed as ``pending`` **before** the server is touched, and marked ``done`` (or
``failed``) after. :class:`StateStore` is the SQLite implementation of
:class:`daemon.store.base.Store`, the interface the rest of the daemon uses: three
repositories (folders, decisions, corrections) over one :class:`Database`, which owns the
plumbing (connection, lock, migrations, transactions, backup).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.store.database import Database, set_write_hook
from daemon.store.records import (
    DECISION_COLUMNS,
    Correction,
    Decision,
    FolderState,
    NewDecision,
    Status,
    decision_from_row,
    decision_row,
    utcnow,
)

__all__ = [
    "Correction",
    "Decision",
    "FolderState",
    "NewDecision",
    "StateStore",
    "Status",
    "set_write_hook",
    "utcnow",
]

#: SQLite's limit on bound parameters is far above this; chunks keep statements short.
_CHUNK = 500


class _Repository:
    database: Database

    def _rows_for(
        self, query: str, head: Sequence[Any], values: Sequence[Any]
    ) -> list[sqlite3.Row]:
        """``query`` (``{marks}`` for the IN list) over ``values`` in chunks, after ``head``."""
        rows: list[sqlite3.Row] = []
        for start in range(0, len(values), _CHUNK):
            chunk = list(values[start : start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            rows += self.database.rows(query.format(marks=marks), (*head, *chunk))
        return rows


class FolderRepository(_Repository):
    """Per account and watched folder: UIDVALIDITY and the high-water UID; per triage
    folder: where it was when last looked at for corrections."""

    def folder(self, account: str, folder: str) -> FolderState | None:
        rows = self.database.rows(
            "SELECT account, folder, uidvalidity, high_water, updated_at FROM folders "
            "WHERE account = ? AND folder = ?",
            (account, folder),
        )
        return FolderState(*rows[0]) if rows else None

    def set_folder(self, account: str, folder: str, uidvalidity: int, high_water: int) -> None:
        with self.database.transaction() as db:
            db.execute(
                "INSERT INTO folders(account, folder, uidvalidity, high_water, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(account, folder) DO UPDATE SET "
                "uidvalidity = excluded.uidvalidity, high_water = excluded.high_water, "
                "updated_at = excluded.updated_at",
                (account, folder, uidvalidity, high_water, utcnow()),
            )

    def watched(self, account: str, folder: str) -> tuple[int, int, int | None] | None:
        """(UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ) of a triage folder when last looked at."""
        rows = self.database.rows(
            "SELECT uidvalidity, uidnext, highestmodseq FROM watched "
            "WHERE account = ? AND folder = ?",
            (account, folder),
        )
        if not rows:
            return None
        row = rows[0]
        modseq = row["highestmodseq"]
        return int(row["uidvalidity"]), int(row["uidnext"]), int(modseq) if modseq else None

    def set_watched(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        uidnext: int,
        highestmodseq: int | None = None,
    ) -> None:
        with self.database.transaction() as db:
            db.execute(
                "INSERT INTO watched(account, folder, uidvalidity, uidnext, highestmodseq, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(account, folder) DO UPDATE "
                "SET uidvalidity = excluded.uidvalidity, uidnext = excluded.uidnext, "
                "highestmodseq = excluded.highestmodseq, updated_at = excluded.updated_at",
                (account, folder, uidvalidity, uidnext, highestmodseq, utcnow()),
            )


class DecisionRepository(_Repository):
    """The journal: decisions recorded before acting, finished after."""

    def record(self, decisions: Sequence[NewDecision]) -> list[int]:
        """Insert decisions in one transaction (the write-ahead step); return their ids."""
        if not decisions:
            return []
        now = utcnow()
        insert = (
            f"INSERT INTO decisions({', '.join(DECISION_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(DECISION_COLUMNS))})"
        )
        with self.database.transaction() as db:
            return [int(db.execute(insert, decision_row(d, now)).lastrowid or 0) for d in decisions]

    def finish(self, ids: Sequence[int], status: Status, reason: str | None = None) -> None:
        self.finish_each([(i, status, reason) for i in ids])

    def finish_each(self, results: Sequence[tuple[int, Status, str | None]]) -> None:
        """Set each decision's final status (and reason, when given) in one transaction."""
        if not results:
            return
        now = utcnow()
        with self.database.transaction() as db:
            db.executemany(
                "UPDATE decisions SET status = ?, reason = COALESCE(?, reason), done_at = ? "
                "WHERE id = ?",
                [(status, reason, now, i) for i, status, reason in results],
            )

    def known_uids(
        self, account: str, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> set[int]:
        """Which of ``uids`` already have a triage decision (any status)."""
        rows = self._rows_for(
            "SELECT uid FROM decisions WHERE kind = 'triage' AND account = ? AND folder = ? "
            "AND uidvalidity = ? AND uid IN ({marks})",
            (account, folder, uidvalidity),
            uids,
        )
        return {int(r["uid"]) for r in rows}

    def pending(self, account: str | None = None) -> list[Decision]:
        query = "SELECT * FROM decisions WHERE status = 'pending'"
        args: tuple[Any, ...] = ()
        if account is not None:
            query += " AND account = ?"
            args = (account,)
        return [decision_from_row(r) for r in self.database.rows(query + " ORDER BY id", args)]

    def get(self, decision_id: int) -> Decision | None:
        rows = self.database.rows("SELECT * FROM decisions WHERE id = ?", (decision_id,))
        return decision_from_row(rows[0]) if rows else None

    def history(
        self,
        account: str | None = None,
        since: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[Decision]:
        clauses, args = [], []
        for column, op, value in (
            ("account", "=", account),
            ("created_at", ">=", since),
            ("kind", "=", kind),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                args.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        tail = f" LIMIT {int(limit)}" if limit else ""
        rows = self.database.rows(f"SELECT * FROM decisions{where} ORDER BY id{tail}", args)
        return [decision_from_row(r) for r in rows]

    def undone_ids(self) -> set[int]:
        rows = self.database.rows(
            "SELECT undo_of FROM decisions WHERE kind = 'undo' AND status = 'done'"
        )
        return {int(r["undo_of"]) for r in rows if r["undo_of"] is not None}

    def decided_message_ids(self, account: str, message_ids: Sequence[str]) -> set[str]:
        """Which of ``message_ids`` already have a triage decision in ``account``."""
        rows = self._rows_for(
            "SELECT DISTINCT message_id FROM decisions WHERE kind = 'triage' "
            "AND account = ? AND message_id IN ({marks})",
            (account,),
            message_ids,
        )
        return {str(r["message_id"]) for r in rows}

    def undone_message_ids(self, account: str, message_ids: Sequence[str]) -> set[str]:
        """Which of ``message_ids`` were triaged in ``account`` and later restored by undo."""
        rows = self._rows_for(
            "SELECT DISTINCT d.message_id FROM decisions d JOIN decisions u "
            "ON u.undo_of = d.id AND u.kind = 'undo' AND u.status = 'done' "
            "WHERE d.account = ? AND d.message_id IN ({marks})",
            (account,),
            message_ids,
        )
        return {str(r["message_id"]) for r in rows}

    def filed(self, account: str, message_ids: Sequence[str]) -> dict[str, Decision]:
        """The latest completed triage decision of each of ``message_ids``."""
        rows = self._rows_for(
            "SELECT * FROM decisions WHERE kind = 'triage' AND status = 'done' "
            "AND account = ? AND message_id IN ({marks}) ORDER BY id",
            (account,),
            message_ids,
        )
        return {str(row["message_id"]): decision_from_row(row) for row in rows}

    def counts(self) -> dict[str, int]:
        rows = self.database.rows("SELECT status, count(*) AS n FROM decisions GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}


class CorrectionRepository(_Repository):
    """Messages the user filed elsewhere than CleanInbox did."""

    def add_correction(self, decision: Decision, corrected: str, folder: str, text: str) -> bool:
        """Record (or update: the user moved it again) a correction; True when new."""
        with self.database.transaction() as db:
            existed = db.execute(
                "SELECT 1 FROM corrections WHERE decision_id = ?", (decision.id,)
            ).fetchone()
            db.execute(
                "INSERT INTO corrections(account, decision_id, message_id, text, predicted, "
                "corrected, folder, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(decision_id) DO UPDATE SET corrected = excluded.corrected, "
                "folder = excluded.folder, created_at = excluded.created_at",
                (
                    decision.account,
                    decision.id,
                    decision.message_id,
                    text,
                    decision.intent,
                    corrected,
                    folder,
                    utcnow(),
                ),
            )
        return existed is None

    def corrections(self, account: str | None = None) -> list[Correction]:
        query, args = "SELECT * FROM corrections", []
        if account is not None:
            query, args = query + " WHERE account = ?", [account]
        return [Correction(**dict(r)) for r in self.database.rows(query + " ORDER BY id", args)]


class StateStore(FolderRepository, DecisionRepository, CorrectionRepository):
    """SQLite state. Open it; use as a context manager to release the lock."""

    def __init__(self, path: Path, *, read_only: bool = False, lock: bool = True) -> None:
        self.database = Database(path, read_only=read_only, lock=lock)
        self.path = path

    @property
    def db(self) -> sqlite3.Connection:
        """The SQLite connection (for inspection: tests, ``PRAGMA`` queries)."""
        return self.database.db

    @property
    def writes(self) -> int:
        return self.database.writes

    def backup(self, target: Path) -> int:
        """A consistent copy of the database at ``target`` while the daemon runs."""
        return self.database.backup(target)

    def close(self) -> None:
        self.database.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
