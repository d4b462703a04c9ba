"""The state store: where triage stands per folder, the journal of decisions, corrections.

The ``decisions`` table is the audit log and the write-ahead journal: a decision is
committed as ``pending`` **before** the server is touched, and marked ``done`` (or
``failed``) after. :class:`StateStore` is the implementation of
:class:`daemon.store.base.Store`, the interface the rest of the daemon uses: four
repositories (folders, decisions, corrections, and the correction memory in
:mod:`daemon.store.memory`) over one :class:`Database`, which owns the plumbing
(connection, lock, migrations, transactions, backup).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from daemon.store.database import display, open_database, set_write_hook
from daemon.store.memory import MemoryRepository
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
from daemon.store.repository import Repository
from daemon.store.schema import corrections, decisions, folders, watched

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


class FolderRepository(Repository):
    """Per account and watched folder: UIDVALIDITY and the high-water UID; per triage
    folder: where it was when last looked at for corrections."""

    def folder(self, account: str, folder: str) -> FolderState | None:
        rows = self.database.rows(
            sa.select(folders).where(folders.c.account == account, folders.c.folder == folder)
        )
        return FolderState(**rows[0]) if rows else None

    def set_folder(self, account: str, folder: str, uidvalidity: int, high_water: int) -> None:
        with self.database.transaction() as conn:
            self._fenced(conn, [account])
            self._upsert(
                conn,
                folders,
                ("account", "folder"),
                account=account,
                folder=folder,
                uidvalidity=uidvalidity,
                high_water=high_water,
                updated_at=utcnow(),
            )

    def watched(self, account: str, folder: str) -> tuple[int, int, int | None] | None:
        """(UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ) of a triage folder when last looked at."""
        rows = self.database.rows(
            sa.select(watched.c.uidvalidity, watched.c.uidnext, watched.c.highestmodseq).where(
                watched.c.account == account, watched.c.folder == folder
            )
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
        with self.database.transaction() as conn:
            self._fenced(conn, [account])
            self._upsert(
                conn,
                watched,
                ("account", "folder"),
                account=account,
                folder=folder,
                uidvalidity=uidvalidity,
                uidnext=uidnext,
                highestmodseq=highestmodseq,
                updated_at=utcnow(),
            )


class DecisionRepository(Repository):
    """The journal: decisions recorded before acting, finished after."""

    def record(self, new: Sequence[NewDecision]) -> list[int]:
        """Insert decisions in one transaction (the write-ahead step); return their ids."""
        if not new:
            return []
        now = utcnow()
        values = [dict(zip(DECISION_COLUMNS, decision_row(d, now), strict=True)) for d in new]
        insert = sa.insert(decisions).returning(decisions.c.id, sort_by_parameter_order=True)
        with self.database.transaction() as conn:
            epochs = self._fenced(conn, {d.account for d in new})
            if epochs:
                for row in values:
                    row["lease_epoch"] = epochs[row["account"]]
            return [int(i) for i in conn.execute(insert, values).scalars()]

    def finish(self, ids: Sequence[int], status: Status, reason: str | None = None) -> None:
        self.finish_each([(i, status, reason) for i in ids])

    def finish_each(self, results: Sequence[tuple[int, Status, str | None]]) -> None:
        """Set each decision's final status (and reason, when given) in one transaction."""
        if not results:
            return
        now = utcnow()
        update = (
            sa.update(decisions)
            .where(decisions.c.id == sa.bindparam("_id"))
            .values(
                status=sa.bindparam("_status"),
                reason=sa.func.coalesce(sa.bindparam("_reason", type_=sa.Text), decisions.c.reason),
                done_at=now,
            )
        )
        with self.database.transaction() as conn:
            if self.fence is not None:
                ids = [i for i, _status, _reason in results]
                owners = conn.execute(
                    sa.select(decisions.c.account).distinct().where(decisions.c.id.in_(ids))
                ).scalars()
                self._fenced(conn, owners)
            conn.execute(
                update,
                [{"_id": i, "_status": status, "_reason": reason} for i, status, reason in results],
            )

    def known_uids(
        self, account: str, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> set[int]:
        """Which of ``uids`` already have a triage decision (any status)."""
        rows = self._rows_in(
            lambda chunk: sa.select(decisions.c.uid).where(
                decisions.c.kind == "triage",
                decisions.c.account == account,
                decisions.c.folder == folder,
                decisions.c.uidvalidity == uidvalidity,
                decisions.c.uid.in_(chunk),
            ),
            uids,
        )
        return {int(r["uid"]) for r in rows}

    def pending(self, account: str | None = None) -> list[Decision]:
        query = sa.select(decisions).where(decisions.c.status == "pending")
        if account is not None:
            query = query.where(decisions.c.account == account)
        return [decision_from_row(r) for r in self.database.rows(query.order_by(decisions.c.id))]

    def get(self, decision_id: int) -> Decision | None:
        rows = self.database.rows(sa.select(decisions).where(decisions.c.id == decision_id))
        return decision_from_row(rows[0]) if rows else None

    def history(
        self,
        account: str | None = None,
        since: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[Decision]:
        query = sa.select(decisions)
        if account is not None:
            query = query.where(decisions.c.account == account)
        if since is not None:
            query = query.where(decisions.c.created_at >= since)
        if kind is not None:
            query = query.where(decisions.c.kind == kind)
        query = query.order_by(decisions.c.id)
        if limit:
            query = query.limit(int(limit))
        return [decision_from_row(r) for r in self.database.rows(query)]

    def undone_ids(self) -> set[int]:
        rows = self.database.rows(
            sa.select(decisions.c.undo_of).where(
                decisions.c.kind == "undo", decisions.c.status == "done"
            )
        )
        return {int(r["undo_of"]) for r in rows if r["undo_of"] is not None}

    def decided_message_ids(self, account: str, message_ids: Sequence[str]) -> set[str]:
        """Which of ``message_ids`` already have a triage decision in ``account``."""
        rows = self._rows_in(
            lambda chunk: (
                sa.select(decisions.c.message_id)
                .distinct()
                .where(
                    decisions.c.kind == "triage",
                    decisions.c.account == account,
                    decisions.c.message_id.in_(chunk),
                )
            ),
            message_ids,
        )
        return {str(r["message_id"]) for r in rows}

    def undone_message_ids(self, account: str, message_ids: Sequence[str]) -> set[str]:
        """Which of ``message_ids`` were triaged in ``account`` and later restored by undo."""
        undo = decisions.alias("u")
        rows = self._rows_in(
            lambda chunk: (
                sa.select(decisions.c.message_id)
                .distinct()
                .join(
                    undo,
                    sa.and_(
                        undo.c.undo_of == decisions.c.id,
                        undo.c.kind == "undo",
                        undo.c.status == "done",
                    ),
                )
                .where(decisions.c.account == account, decisions.c.message_id.in_(chunk))
            ),
            message_ids,
        )
        return {str(r["message_id"]) for r in rows}

    def filed(self, account: str, message_ids: Sequence[str]) -> dict[str, Decision]:
        """The latest completed triage decision of each of ``message_ids``."""
        rows = self._rows_in(
            lambda chunk: (
                sa.select(decisions)
                .where(
                    decisions.c.kind == "triage",
                    decisions.c.status == "done",
                    decisions.c.account == account,
                    decisions.c.message_id.in_(chunk),
                )
                .order_by(decisions.c.id)
            ),
            message_ids,
        )
        return {str(row["message_id"]): decision_from_row(row) for row in rows}

    def counts(self) -> dict[str, int]:
        rows = self.database.rows(
            sa.select(decisions.c.status, sa.func.count().label("n")).group_by(decisions.c.status)
        )
        return {r["status"]: int(r["n"]) for r in rows}


class CorrectionRepository(Repository):
    """Messages the user filed elsewhere than CleanInbox did."""

    def add_correction(
        self, decision: Decision, corrected: str, folder: str, text: str
    ) -> tuple[int, bool]:
        """Record (or update: the user moved it again) a correction: its id, and True
        when new."""
        with self.database.transaction() as conn:
            self._fenced(conn, [decision.account])
            existed = conn.execute(
                sa.select(corrections.c.id).where(corrections.c.decision_id == decision.id)
            ).first()
            if existed is None:
                correction_id = conn.execute(
                    sa.insert(corrections)
                    .values(
                        account=decision.account,
                        decision_id=decision.id,
                        message_id=decision.message_id,
                        text=text,
                        predicted=decision.intent,
                        corrected=corrected,
                        folder=folder,
                        created_at=utcnow(),
                    )
                    .returning(corrections.c.id)
                ).scalar_one()
            else:
                correction_id = existed.id
                conn.execute(
                    sa.update(corrections)
                    .where(corrections.c.decision_id == decision.id)
                    .values(corrected=corrected, folder=folder, created_at=utcnow())
                )
        return int(correction_id), existed is None

    def corrections(self, account: str | None = None) -> list[Correction]:
        query = sa.select(corrections)
        if account is not None:
            query = query.where(corrections.c.account == account)
        return [Correction(**r) for r in self.database.rows(query.order_by(corrections.c.id))]


class StateStore(FolderRepository, DecisionRepository, CorrectionRepository, MemoryRepository):
    """The state, in a SQLite file or a PostgreSQL database (``location``: a path or a
    ``postgresql://`` URL). Use as a context manager to close it (and release SQLite's
    lock)."""

    def __init__(
        self,
        location: Path | str,
        *,
        password: str | None = None,
        read_only: bool = False,
        lock: bool = True,
        name: str = "cleaninbox",
    ) -> None:
        self.database = open_database(
            location, password=password, read_only=read_only, lock=lock, name=name
        )
        self.location = location

    @property
    def where(self) -> str:
        """The state's location as logs show it (a URL without its password)."""
        return display(self.location)

    @property
    def writes(self) -> int:
        return self.database.writes

    def backup(self, target: Path) -> int:
        """A consistent copy of the state at ``target`` while the daemon runs."""
        return self.database.backup(target)

    def close(self) -> None:
        self.database.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
