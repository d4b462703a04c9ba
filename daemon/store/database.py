"""The state store's engines: a SQLite file (the embedded default) or a PostgreSQL
database, behind one :class:`Database` (SQLAlchemy Core).

Each engine brings what is its own: SQLite its single-instance lock file, WAL mode, one
connection shared by the account threads and online backup; PostgreSQL a small
connection pool, ``pg_dump`` for backups and an advisory lock around migrations. Both run
the same migrations (:mod:`daemon.store.migrations`) and the same queries
(:mod:`daemon.store.state`); nothing here knows what a decision is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import StaticPool

from daemon.errors import StateError
from daemon.store import migrations

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


#: URL schemes taken for PostgreSQL (the settings refuse any other ``scheme://``).
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")

#: Connections one process keeps to PostgreSQL (pool) and may open beyond it in a burst.
POOL_SIZE, POOL_OVERFLOW = 4, 4
# PostgreSQL ends a session left idle inside a transaction this long (seconds). The
# daemon's transactions are a few statements with nothing to wait for between them; a
# replica paused inside one (SIGSTOP, a frozen VM, swap) would otherwise keep its row
# locks, the FOR SHARE of a fenced write on its lease rows among them, and no other
# replica could take its accounts over (claims skip locked rows) until TCP gave up.
IDLE_IN_TRANSACTION_TIMEOUT = 5.0

_WRITE = "cleaninbox_write"


def is_database_url(location: Path | str) -> bool:
    return isinstance(location, str) and "://" in location


def display(location: Path | str) -> str:
    """``location`` as logs and errors show it: a URL without its password."""
    if not is_database_url(location):
        return str(location)
    url = sa.engine.make_url(str(location))
    return url.set(drivername="postgresql").render_as_string(hide_password=True)


def without_password(location: Path | str) -> tuple[str, str | None]:
    """``location`` as a string without the URL's password, and that password."""
    if not is_database_url(location):
        return str(location), None
    url = sa.engine.make_url(str(location))
    password = None if url.password is None else str(url.password)
    return url._replace(password=None).render_as_string(hide_password=False), password


class Database:
    """One state database: transactions, reads, backup. Open with :func:`open_database`."""

    where: str
    engine: sa.Engine
    read_only: bool

    def __init__(self) -> None:
        self.writes = 0  # state writes committed (used by the crash-test hook)

    # -- what each engine provides ---------------------------------------------------------
    @contextmanager
    def _connection(self, write: bool) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            yield conn

    def explain(self, exc: BaseException) -> str:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

    def backup(self, target: Path) -> int:
        raise NotImplementedError

    def close(self) -> None:
        self.engine.dispose()

    # -- shared ----------------------------------------------------------------------------
    def _error(self, exc: sa.exc.DBAPIError) -> StateError:
        return StateError(f"state {self.where}: {self.explain(exc.orig or exc)}")

    @contextmanager
    def transaction(self, *, journal: bool = True) -> Iterator[sa.Connection]:
        """One write transaction: committed when the block ends, rolled back on error.
        ``journal`` False: coordination (leases), not state: not counted, no crash hook."""
        if self.read_only:
            raise StateError(f"state {self.where} is open read-only")
        try:
            with self._connection(write=True) as conn, conn.begin():
                yield conn
                hook = _write_hook
                if hook is not None and journal:
                    hook(self.writes + 1)  # a test may kill the process before this commit
        except sa.exc.DBAPIError as exc:
            raise self._error(exc) from exc
        if journal:
            self.writes += 1

    def rows(self, statement: sa.Executable) -> list[sa.RowMapping]:
        try:
            with self._connection(write=False) as conn:
                return list(conn.execute(statement).mappings())
        except sa.exc.DBAPIError as exc:
            raise self._error(exc) from exc

    def _migrate(self) -> None:
        try:
            with self._connection(write=True) as conn:
                migrations.upgrade(conn, self.where)
        except sa.exc.DBAPIError as exc:
            raise self._error(exc) from exc


class SqliteDatabase(Database):
    """One SQLite file in WAL mode, one connection shared by the account threads
    (serialised by :attr:`mutex`), and a lock file so only one CleanInbox writes it."""

    def __init__(self, path: Path, *, read_only: bool = False, lock: bool = True) -> None:
        super().__init__()
        self.path = path
        self.where = str(path)
        self.read_only = read_only
        self._lock_handle: Any = None
        self.mutex = threading.RLock()
        if lock and not read_only:
            self._acquire_lock()
        try:
            if not read_only:  # a writer without the lock (feedback import) may come first
                with contextlib.suppress(OSError):  # _connect says what is wrong
                    self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = self._connect()
            self.engine = sa.create_engine(
                "sqlite+pysqlite://", creator=lambda: self.db, poolclass=StaticPool
            )
            event.listen(self.engine, "begin", _begin_immediate)
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

    @contextmanager
    def _connection(self, write: bool) -> Iterator[sa.Connection]:
        with self.mutex, self.engine.connect() as conn:
            yield conn.execution_options(**{_WRITE: write})

    def explain(self, exc: BaseException) -> str:
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
            self.engine.dispose()
            self.db.close()
        finally:
            self._release_lock()


def _begin_immediate(conn: sa.Connection) -> None:
    """SQLite: a write transaction takes the write lock when it begins (no deadlock
    between two writers upgrading their read locks); reads run without one."""
    if conn.get_execution_options().get(_WRITE):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class PostgresDatabase(Database):
    """A PostgreSQL database: a pool of at most ``POOL_SIZE + POOL_OVERFLOW`` connections,
    each transaction on its own. Any number of processes may open it: replicas lease the
    accounts (:mod:`daemon.store.leases`) and every write is fenced on its lease."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        read_only: bool = False,
        application_name: str = "cleaninbox",
    ) -> None:
        super().__init__()
        parsed = sa.engine.make_url(url).set(drivername="postgresql+psycopg")
        if password is not None:
            parsed = parsed.set(password=password)
        self.url = parsed
        self.where = display(url)
        self.read_only = read_only
        self.engine = sa.create_engine(
            parsed,
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
            # No pre-ping (a round trip per checkout): after a lost server, the first
            # statement fails, SQLAlchemy drops the pool, and the retry reconnects.
            pool_recycle=600,
            pool_timeout=30,
            # UTF-8 whatever the database's encoding: in a SQL_ASCII database (initdb
            # under the C locale) psycopg would otherwise hand back bytes for text.
            connect_args={
                "connect_timeout": 10,
                "application_name": application_name,
                "client_encoding": "utf8",
            },
        )
        # A SET on each new connection rather than libpq's startup ``options``, which
        # PgBouncer refuses unless configured to ignore them.
        event.listen(self.engine, "connect", _end_idle_transactions)
        try:
            if read_only:
                self.rows(sa.text("SELECT 1"))
            else:
                self._migrate()
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    def backup(self, target: Path) -> int:
        """``pg_dump --format=custom`` of the database to ``target`` (restore it with
        ``pg_restore``); a consistent snapshot taken while replicas run."""
        if target.exists():
            raise StateError(f"backup target {target} exists; choose a new file")
        pg_dump = shutil.which("pg_dump")
        if pg_dump is None:
            raise StateError(
                "backup of a PostgreSQL state runs pg_dump, which is not installed "
                "(Debian: postgresql-client); or use your database service's backups"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        url = self.url.set(drivername="postgresql")._replace(password=None)
        env = dict(os.environ)
        if self.url.password is not None:
            env["PGPASSWORD"] = str(self.url.password)
        result = subprocess.run(
            [
                pg_dump,
                "--format=custom",
                "--no-password",
                f"--file={target}",
                url.render_as_string(hide_password=False),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if result.returncode != 0:
            target.unlink(missing_ok=True)
            detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
            raise StateError(f"backup of {self.where} failed: {detail}")
        return target.stat().st_size


def _end_idle_transactions(dbapi_connection: Any, _record: object) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute(
            "SET SESSION idle_in_transaction_session_timeout = "
            f"{int(IDLE_IN_TRANSACTION_TIMEOUT * 1000)}"
        )
    dbapi_connection.commit()


def open_database(
    location: Path | str,
    *,
    password: str | None = None,
    read_only: bool = False,
    lock: bool = True,
    name: str = "cleaninbox",
) -> Database:
    """The database at ``location``: a SQLite file path or a ``postgresql://`` URL
    (``name``: the connections' ``application_name`` in PostgreSQL, e.g. the replica's)."""
    if not is_database_url(location):
        return SqliteDatabase(Path(location), read_only=read_only, lock=lock)
    scheme = str(location).split("://", 1)[0].lower()
    if scheme not in POSTGRES_SCHEMES:
        raise StateError(
            f"state {display(location)}: unsupported database {scheme!r}; "
            "give a SQLite file path or a postgresql:// URL"
        )
    return PostgresDatabase(
        str(location), password=password, read_only=read_only, application_name=name[:63]
    )


# A test-only hook (daemon/service/faults.py): called before each commit with its number.
_write_hook: Callable[[int], None] | None = None


def set_write_hook(hook: Callable[[int], None] | None) -> None:
    global _write_hook
    _write_hook = hook
