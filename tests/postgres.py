"""A real PostgreSQL for the tests: Debian's ``postgresql`` started in a temporary directory.

One server per test session (``pg_server``), listening on 127.0.0.1 and a Unix socket in
its own directory; each test gets a fresh database (``pg_url``), created from
``template0`` and dropped afterwards, so tests never see each other's rows. ``initdb``
refuses to run as root: as root the server runs as the ``postgres`` user Debian's package
creates, and every parent of its directory is made o+x for it.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dovecot import free_port

_names = itertools.count(1)


def _bin(tool: str) -> str | None:
    """``tool`` from PATH, else from Debian's versioned directory (not on PATH there)."""
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    return candidates[-1] if candidates else None


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@dataclass
class PostgresServer:
    directory: Path
    port: int
    pg_ctl: str
    _shared: str | None = None

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, template: str = "template0") -> str:
        name = f"t{os.getpid()}_{next(_names)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE {template}")
        return name

    def schema_url(self) -> str:
        """A URL to a fresh, empty PostgreSQL schema in one database shared by the session:
        as isolated as a database for CleanInbox's tables, and faster to make (creating
        a database copies its template, about 0.2 s here)."""
        if self._shared is None:
            self._shared = self.create_database()
        schema = f"s{next(_names)}"
        import psycopg

        with psycopg.connect(self.url(self._shared), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
        return f"{self.url(self._shared)}?options=-csearch_path%3D{schema}"

    def drop_database(self, name: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_server_user([self.pg_ctl, "-D", str(self.directory / "data"), *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.directory / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def log(self) -> str:
        return (self.directory / "server.log").read_text(errors="replace")


def start_server() -> PostgresServer:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.fail("PostgreSQL is not installed: run `make system-deps` (Debian's postgresql)")
    directory = Path(tempfile.mkdtemp(prefix="cleaninbox-pg-"))
    directory.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    subprocess.run(
        _as_server_user(
            [initdb, "-D", str(directory / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = PostgresServer(directory, free_port(), pg_ctl)
    server.start()
    return server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = start_server()
    try:
        yield server
    finally:
        try:
            server.stop("immediate")
        finally:
            shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server (databases are not dropped: the
    whole server goes at the end of the session)."""
    return pg_server.url(pg_server.create_database())
