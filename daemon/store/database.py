"""SQLite plumbing for the state store: one file in WAL mode, its single-instance lock,
the migrations, transactions (with the crash tests' write hook) and online backup.

Nothing here knows what a decision is; the repositories (:mod:`daemon.store.state`) run
their queries through :meth:`Database.rows` and :meth:`Database.transaction`.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from daemon.errors import StateError
from daemon.store.migrations import MIGRATIONS

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


class Database:
    """One SQLite connection shared by the account threads (serialised by :attr:`mutex`)."""

    def __init__(self, path: Path, *, read_only: bool = False, lock: bool = True) -> None:
        self.path = path
        self.read_only = read_only
        self._lock_handle: Any = None
        self.mutex = threading.RLock()
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
            raise StateError(f"state {self.path}: {self.explain(exc)}") from exc
        return db

    def explain(self, exc: sqlite3.Error) -> str:
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
        """Apply the migrations this database lacks, each in its own transaction."""
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StateError(
                f"state {self.path} has schema version {version}, newer than this CleanInbox "
                f"({len(MIGRATIONS)}); upgrade CleanInbox"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            try:
                with self.transaction() as db:
                    for statement in script.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version = {number}")
            except sqlite3.Error as exc:
                raise StateError(
                    f"state {self.path}: migration {number} failed: {self.explain(exc)}"
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
                with self.mutex:
                    self.db.backup(copy)
                copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                if copy.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                    raise StateError(f"backup {target} failed its integrity check")
            finally:
                copy.close()
        except (sqlite3.Error, OSError) as exc:
            target.unlink(missing_ok=True)
            detail = self.explain(exc) if isinstance(exc, sqlite3.Error) else str(exc)
            raise StateError(f"backup to {target} failed: {detail}") from exc
        return target.stat().st_size

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            self._release_lock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise StateError(f"state {self.path} is open read-only")
        with self.mutex:
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
            raise StateError(f"state {self.path}: {self.explain(exc)}") from exc
        self.writes += 1

    def rows(self, query: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self.mutex:
            try:
                return list(self.db.execute(query, tuple(args)).fetchall())
            except sqlite3.Error as exc:
                raise StateError(f"state {self.path}: {self.explain(exc)}") from exc


# A test-only hook (daemon/service/faults.py): called before each commit with its number.
_write_hook: Callable[[int], None] | None = None


def set_write_hook(hook: Callable[[int], None] | None) -> None:
    global _write_hook
    _write_hook = hook
