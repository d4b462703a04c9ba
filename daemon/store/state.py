"""The state store: SQLite in WAL mode, versioned migrations, a single-instance lock.

Per account/folder it keeps UIDVALIDITY and the high-water UID; the ``decisions`` table
is the audit log and the write-ahead journal: a decision is committed as ``pending``
**before** the server is touched, and marked ``done`` (or ``failed``) after.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from daemon.errors import StateError

Status = Literal["pending", "done", "skipped", "failed", "undone"]

MIGRATIONS: list[str] = [
    # 1: folders and decisions
    """
    CREATE TABLE folders (
        account TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        high_water INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (account, folder)
    );
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL DEFAULT 'triage',
        account TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        message_id TEXT,
        size INTEGER,
        internal_date TEXT,
        intent TEXT,
        confidence REAL,
        abstain INTEGER,
        top_k TEXT,
        model_version TEXT,
        rule TEXT,
        action TEXT,
        plan TEXT,
        destination TEXT,
        dest_uidnext INTEGER,
        status TEXT NOT NULL,
        reason TEXT,
        text TEXT,
        undo_of INTEGER REFERENCES decisions(id),
        created_at TEXT NOT NULL,
        done_at TEXT
    );
    CREATE UNIQUE INDEX decisions_message
        ON decisions(account, folder, uidvalidity, uid) WHERE kind = 'triage';
    CREATE INDEX decisions_status ON decisions(status);
    CREATE INDEX decisions_created ON decisions(created_at);
    CREATE INDEX decisions_message_id ON decisions(message_id);
    """,
    # 2: learning from corrections: where each triage folder was last looked at, and the
    # corrections found there (a message the user moved into another triage folder)
    """
    CREATE TABLE watched (
        account TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL,
        highestmodseq INTEGER,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (account, folder)
    );
    CREATE TABLE corrections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL,
        decision_id INTEGER NOT NULL UNIQUE REFERENCES decisions(id),
        message_id TEXT,
        text TEXT NOT NULL,
        predicted TEXT,
        corrected TEXT NOT NULL,
        folder TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX corrections_created ON corrections(created_at);
    """,
]


if sys.platform == "win32":  # pragma: no cover - exercised by the Windows CI job only
    import msvcrt

    def _lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Correction:
    id: int
    account: str
    decision_id: int
    message_id: str | None
    text: str
    predicted: str | None
    corrected: str
    folder: str
    created_at: str


@dataclass(frozen=True)
class FolderState:
    account: str
    folder: str
    uidvalidity: int
    high_water: int
    updated_at: str = ""  # ISO 8601 UTC of the last successful update


@dataclass(frozen=True)
class Decision:
    id: int
    kind: str
    account: str
    folder: str
    uidvalidity: int
    uid: int
    message_id: str | None
    size: int | None
    internal_date: str | None
    intent: str | None
    confidence: float | None
    abstain: bool | None
    top_k: list[list[Any]] | None
    model_version: str | None
    rule: str | None
    action: str | None
    plan: dict[str, Any] | None
    destination: str | None
    dest_uidnext: int | None
    status: str
    reason: str | None
    text: str | None
    undo_of: int | None
    created_at: str
    done_at: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "account": self.account,
            "folder": self.folder,
            "uidvalidity": self.uidvalidity,
            "uid": self.uid,
            "message_id": self.message_id,
            "intent": self.intent,
            "confidence": self.confidence,
            "abstain": self.abstain,
            "top_k": self.top_k,
            "model_version": self.model_version,
            "rule": self.rule,
            "action": self.action,
            "destination": self.destination,
            "status": self.status,
            "reason": self.reason,
            "created_at": self.created_at,
            "done_at": self.done_at,
            "undo_of": self.undo_of,
        }


@dataclass(frozen=True)
class NewDecision:
    """What the cycle records before it acts."""

    kind: str
    account: str
    folder: str
    uidvalidity: int
    uid: int
    message_id: str | None
    size: int | None
    internal_date: str | None
    intent: str | None
    confidence: float | None
    abstain: bool | None
    top_k: list[tuple[str, float]] | None
    model_version: str | None
    rule: str | None
    action: str
    plan: dict[str, Any] | None
    destination: str | None
    dest_uidnext: int | None
    status: Status
    reason: str | None = None
    text: str | None = None
    undo_of: int | None = None


def _row_to_decision(row: sqlite3.Row) -> Decision:
    return Decision(
        id=row["id"],
        kind=row["kind"],
        account=row["account"],
        folder=row["folder"],
        uidvalidity=row["uidvalidity"],
        uid=row["uid"],
        message_id=row["message_id"],
        size=row["size"],
        internal_date=row["internal_date"],
        intent=row["intent"],
        confidence=row["confidence"],
        abstain=None if row["abstain"] is None else bool(row["abstain"]),
        top_k=json.loads(row["top_k"]) if row["top_k"] else None,
        model_version=row["model_version"],
        rule=row["rule"],
        action=row["action"],
        plan=json.loads(row["plan"]) if row["plan"] else None,
        destination=row["destination"],
        dest_uidnext=row["dest_uidnext"],
        status=row["status"],
        reason=row["reason"],
        text=row["text"],
        undo_of=row["undo_of"],
        created_at=row["created_at"],
        done_at=row["done_at"],
    )


class StateStore:
    """SQLite state. Open with :meth:`open`; use as a context manager to release the lock."""

    def __init__(self, path: Path, *, read_only: bool = False, lock: bool = True) -> None:
        self.path = path
        self.read_only = read_only
        self._lock_handle: Any = None
        self._mutex = threading.RLock()  # one connection shared by the account threads
        self.writes = 0  # state writes committed (used by the crash-test hook)
        if lock and not read_only:
            self._acquire_lock()
        try:
            self.db = self._connect()
            if not read_only:
                self._migrate()
        except BaseException:
            self._release_lock()
            raise

    # -- lifecycle -------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_path = self.path.with_name(self.path.name + ".lock")
            handle = lock_path.open("a+")
        except OSError as exc:
            raise StateError(f"state {self.path}: cannot create lock file: {exc.strerror}") from exc
        if not _lock(handle.fileno()):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StateError(
                f"state {self.path} is in use by {holder}; only one CleanInbox may run on it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._lock_handle = handle

    def _release_lock(self) -> None:
        if self._lock_handle is not None:
            try:
                _unlock(self._lock_handle.fileno())
            finally:
                self._lock_handle.close()
                self._lock_handle = None

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            if not self.path.exists():
                raise StateError(f"state {self.path} does not exist (no cycle has run yet)")
            uri = f"file:{self.path}?mode=ro"
        else:
            uri = f"file:{self.path}?mode=rwc"
        try:
            db = sqlite3.connect(
                uri, uri=True, timeout=10, isolation_level=None, check_same_thread=False
            )
            db.row_factory = sqlite3.Row
            if not self.read_only:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StateError(f"state {self.path}: cannot switch to WAL mode ({mode})")
                db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state {self.path}: {self._explain(exc)}") from exc
        return db

    def _explain(self, exc: sqlite3.Error) -> str:
        text = str(exc)
        if "disk I/O error" in text or "full" in text:
            try:
                free = shutil.disk_usage(self.path.parent).free
            except OSError:
                free = None
            if free is not None and free < 1 << 20:
                return (
                    f"the disk is full ({free} bytes free in {self.path.parent}); "
                    "free space and start again"
                )
        if "readonly" in text or "read-only" in text:
            return "the database is read-only; CleanInbox needs to write its state"
        if "not a database" in text or "malformed" in text:
            return f"the database is corrupt ({text}); restore it from a backup or move it away"
        if "disk" in text and "full" in text:
            return "the disk is full"
        if "unable to open" in text:
            return "cannot open the database file (missing directory or no permission)"
        return text

    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StateError(
                f"state {self.path} has schema version {version}, newer than this CleanInbox "
                f"({len(MIGRATIONS)}); upgrade CleanInbox"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            try:
                with self._transaction() as db:
                    for statement in script.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version = {number}")
            except sqlite3.Error as exc:
                raise StateError(
                    f"state {self.path}: migration {number} failed: {self._explain(exc)}"
                ) from exc

    def backup(self, target: Path) -> int:
        """A consistent copy of the database at ``target`` while the daemon runs (SQLite's
        online backup API, which copies committed state only). Returns its size in bytes."""
        if target.exists():
            raise StateError(f"backup target {target} exists; choose a new file")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            copy = sqlite3.connect(target)
            try:
                with self._mutex:
                    self.db.backup(copy)
                copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                if copy.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                    raise StateError(f"backup {target} failed its integrity check")
            finally:
                copy.close()
        except (sqlite3.Error, OSError) as exc:
            target.unlink(missing_ok=True)
            detail = self._explain(exc) if isinstance(exc, sqlite3.Error) else str(exc)
            raise StateError(f"backup to {target} failed: {detail}") from exc
        return target.stat().st_size

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            self._release_lock()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise StateError(f"state {self.path} is open read-only")
        with self._mutex:
            yield from self._locked_transaction()

    def _locked_transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            hook = _write_hook
            if hook is not None:
                hook(self.writes + 1)  # a test may kill the process before this commit
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.db.in_transaction:
                with suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            raise StateError(f"state {self.path}: {self._explain(exc)}") from exc
        self.writes += 1

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._mutex:
            try:
                return list(self.db.execute(query, tuple(args)).fetchall())
            except sqlite3.Error as exc:
                raise StateError(f"state {self.path}: {self._explain(exc)}") from exc

    # -- folders ---------------------------------------------------------------------------

    def folder(self, account: str, folder: str) -> FolderState | None:
        rows = self._rows(
            "SELECT * FROM folders WHERE account = ? AND folder = ?", (account, folder)
        )
        if not rows:
            return None
        row = rows[0]
        return FolderState(
            row["account"],
            row["folder"],
            row["uidvalidity"],
            row["high_water"],
            row["updated_at"],
        )

    def set_folder(self, account: str, folder: str, uidvalidity: int, high_water: int) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO folders(account, folder, uidvalidity, high_water, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(account, folder) DO UPDATE SET "
                "uidvalidity = excluded.uidvalidity, high_water = excluded.high_water, "
                "updated_at = excluded.updated_at",
                (account, folder, uidvalidity, high_water, utcnow()),
            )

    # -- decisions -------------------------------------------------------------------------

    def record(self, decisions: Sequence[NewDecision]) -> list[int]:
        """Insert decisions in one transaction (the write-ahead step); return their ids."""
        ids: list[int] = []
        if not decisions:
            return ids
        now = utcnow()
        with self._transaction() as db:
            for d in decisions:
                cursor = db.execute(
                    "INSERT INTO decisions(kind, account, folder, uidvalidity, uid, message_id, "
                    "size, internal_date, intent, confidence, abstain, top_k, model_version, "
                    "rule, action, plan, destination, dest_uidnext, status, reason, text, "
                    "undo_of, created_at, done_at) "
                    f"VALUES ({', '.join('?' * 24)})",
                    (
                        d.kind,
                        d.account,
                        d.folder,
                        d.uidvalidity,
                        d.uid,
                        d.message_id,
                        d.size,
                        d.internal_date,
                        d.intent,
                        d.confidence,
                        None if d.abstain is None else int(d.abstain),
                        json.dumps(d.top_k) if d.top_k is not None else None,
                        d.model_version,
                        d.rule,
                        d.action,
                        json.dumps(d.plan) if d.plan is not None else None,
                        d.destination,
                        d.dest_uidnext,
                        d.status,
                        d.reason,
                        d.text,
                        d.undo_of,
                        now,
                        None if d.status == "pending" else now,
                    ),
                )
                ids.append(int(cursor.lastrowid or 0))
        return ids

    def finish(self, ids: Sequence[int], status: Status, reason: str | None = None) -> None:
        if not ids:
            return
        now = utcnow()
        with self._transaction() as db:
            db.executemany(
                "UPDATE decisions SET status = ?, reason = COALESCE(?, reason), done_at = ? "
                "WHERE id = ?",
                [(status, reason, now, i) for i in ids],
            )

    def finish_each(self, results: Sequence[tuple[int, Status, str | None]]) -> None:
        if not results:
            return
        now = utcnow()
        with self._transaction() as db:
            db.executemany(
                "UPDATE decisions SET status = ?, reason = COALESCE(?, reason), done_at = ? "
                "WHERE id = ?",
                [(status, reason, now, i) for i, status, reason in results],
            )

    def known_uids(
        self, account: str, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> set[int]:
        """Which of ``uids`` already have a triage decision (any status)."""
        found: set[int] = set()
        for start in range(0, len(uids), 500):
            chunk = list(uids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._rows(
                f"SELECT uid FROM decisions WHERE kind = 'triage' AND account = ? AND folder = ? "
                f"AND uidvalidity = ? AND uid IN ({marks})",
                (account, folder, uidvalidity, *chunk),
            )
            found.update(int(r["uid"]) for r in rows)
        return found

    def pending(self, account: str | None = None) -> list[Decision]:
        query = "SELECT * FROM decisions WHERE status = 'pending'"
        args: tuple[Any, ...] = ()
        if account is not None:
            query += " AND account = ?"
            args = (account,)
        return [_row_to_decision(r) for r in self._rows(query + " ORDER BY id", args)]

    def get(self, decision_id: int) -> Decision | None:
        rows = self._rows("SELECT * FROM decisions WHERE id = ?", (decision_id,))
        return _row_to_decision(rows[0]) if rows else None

    def history(
        self,
        account: str | None = None,
        since: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[Decision]:
        clauses, args = [], []
        if account is not None:
            clauses.append("account = ?")
            args.append(account)
        if since is not None:
            clauses.append("created_at >= ?")
            args.append(since)
        if kind is not None:
            clauses.append("kind = ?")
            args.append(kind)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        tail = f" LIMIT {int(limit)}" if limit else ""
        rows = self._rows(f"SELECT * FROM decisions{where} ORDER BY id{tail}", args)
        return [_row_to_decision(r) for r in rows]

    def undone_ids(self) -> set[int]:
        rows = self._rows("SELECT undo_of FROM decisions WHERE kind = 'undo' AND status = 'done'")
        return {int(r["undo_of"]) for r in rows if r["undo_of"] is not None}

    def _rows_for_ids(
        self, query: str, account: str, message_ids: Sequence[str]
    ) -> list[sqlite3.Row]:
        """``query`` (with ``{marks}`` for the IN list) over ``message_ids``, 500 at a time
        (SQLite's bound-parameter limit), for ``account``."""
        rows: list[sqlite3.Row] = []
        for start in range(0, len(message_ids), 500):
            chunk = list(message_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows += self._rows(query.format(marks=marks), (account, *chunk))
        return rows

    def decided_message_ids(self, account: str, message_ids: Sequence[str]) -> set[str]:
        """Which of ``message_ids`` already have a triage decision in ``account``."""
        rows = self._rows_for_ids(
            "SELECT DISTINCT message_id FROM decisions WHERE kind = 'triage' "
            "AND account = ? AND message_id IN ({marks})",
            account,
            message_ids,
        )
        return {str(r["message_id"]) for r in rows}

    def undone_message_ids(self, account: str, message_ids: Sequence[str]) -> set[str]:
        """Which of ``message_ids`` were triaged in ``account`` and later restored by undo."""
        rows = self._rows_for_ids(
            "SELECT DISTINCT d.message_id FROM decisions d JOIN decisions u "
            "ON u.undo_of = d.id AND u.kind = 'undo' AND u.status = 'done' "
            "WHERE d.account = ? AND d.message_id IN ({marks})",
            account,
            message_ids,
        )
        return {str(r["message_id"]) for r in rows}

    # -- corrections -------------------------------------------------------------------------

    def watched(self, account: str, folder: str) -> tuple[int, int, int | None] | None:
        """(UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ) of a triage folder when last looked at."""
        rows = self._rows(
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
        with self._transaction() as db:
            db.execute(
                "INSERT INTO watched(account, folder, uidvalidity, uidnext, highestmodseq, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(account, folder) DO UPDATE "
                "SET uidvalidity = excluded.uidvalidity, uidnext = excluded.uidnext, "
                "highestmodseq = excluded.highestmodseq, updated_at = excluded.updated_at",
                (account, folder, uidvalidity, uidnext, highestmodseq, utcnow()),
            )

    def filed(self, account: str, message_ids: Sequence[str]) -> dict[str, Decision]:
        """The latest completed triage decision of each of ``message_ids``."""
        rows = self._rows_for_ids(
            "SELECT * FROM decisions WHERE kind = 'triage' AND status = 'done' "
            "AND account = ? AND message_id IN ({marks}) ORDER BY id",
            account,
            message_ids,
        )
        return {str(row["message_id"]): _row_to_decision(row) for row in rows}

    def add_correction(self, decision: Decision, corrected: str, folder: str, text: str) -> bool:
        """Record (or update: the user moved it again) a correction; True when new."""
        with self._transaction() as db:
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
        return [
            Correction(
                id=int(r["id"]),
                account=r["account"],
                decision_id=int(r["decision_id"]),
                message_id=r["message_id"],
                text=r["text"],
                predicted=r["predicted"],
                corrected=r["corrected"],
                folder=r["folder"],
                created_at=r["created_at"],
            )
            for r in self._rows(query + " ORDER BY id", args)
        ]

    def counts(self) -> dict[str, int]:
        rows = self._rows("SELECT status, count(*) AS n FROM decisions GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}


# A test-only hook (daemon/service/faults.py): called before each commit with its number.
_write_hook: Callable[[int], None] | None = None


def set_write_hook(hook: Callable[[int], None] | None) -> None:
    global _write_hook
    _write_hook = hook
