"""Fixtures of the in-process core layer (no Dovecot, no trained model)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.store import state
from tests.core.harness import World
from tests.core.memory import MemoryServer

MakeWorld = Callable[..., World]


def _database(request: pytest.FixtureRequest) -> str:
    """A fresh PostgreSQL schema on the session's server."""
    return str(request.getfixturevalue("pg_server").schema_url())


@pytest.fixture(autouse=True)
def _no_write_hook() -> Iterator[None]:
    """A crash hook left behind would kill the next test's state writes."""
    state.set_write_hook(None)
    yield
    state.set_write_hook(None)


# The crash tests make thousands of state commits, each one an fsync (WAL, synchronous=FULL)
# that costs milliseconds on a disk and nothing in memory-backed storage; durability is not
# what they test (a crash is a rolled-back transaction), so the database lives there when
# the machine has it.
MEMORY_FS = Path("/dev/shm")


@pytest.fixture(params=["sqlite", "postgresql"])
def state_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """Where the worlds keep their state, on each engine: a directory for SQLite files, or
    a PostgreSQL database (``make_world`` gives each world its own)."""
    if request.param == "postgresql":
        yield "postgresql"
        return
    if not MEMORY_FS.is_dir() or not os.access(MEMORY_FS, os.W_OK):
        yield tmp_path / "var"
        return
    path = Path(tempfile.mkdtemp(prefix="cleaninbox-core-", dir=MEMORY_FS))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_world(
    request: pytest.FixtureRequest, tmp_path: Path, state_dir: Path | str
) -> Iterator[MakeWorld]:
    """``make_world(kind="move", ...)``: a started world (first cycle run, so
    INBOX's high-water mark is set) on a server with that capability set."""
    from tests.core.scenario import SERVERS

    worlds: list[World] = []

    def make(
        kind: str = "move",
        *,
        condstore: bool = False,
        feedback: bool = False,
        batch_size: int = 100,
    ) -> World:
        root = tmp_path / f"world{len(worlds)}"
        root.mkdir()
        location: Path | str = (
            state_dir / f"world{len(worlds)}" if isinstance(state_dir, Path) else _database(request)
        )
        server = MemoryServer(**SERVERS[kind], condstore=condstore)
        world = World(
            root,
            server,
            feedback=feedback,
            batch_size=batch_size,
            state_dir=location,
        )
        worlds.append(world)
        world.cycle()  # first start: old mail is left alone, the mark is set
        return world

    yield make
    for world in worlds:
        world.close()
