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


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    if not MEMORY_FS.is_dir() or not os.access(MEMORY_FS, os.W_OK):
        yield tmp_path / "var"
        return
    path = Path(tempfile.mkdtemp(prefix="cleaninbox-core-", dir=MEMORY_FS))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_world(tmp_path: Path, state_dir: Path) -> Iterator[MakeWorld]:
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
        server = MemoryServer(**SERVERS[kind], condstore=condstore)
        world = World(
            root,
            server,
            feedback=feedback,
            batch_size=batch_size,
            state_dir=state_dir / f"world{len(worlds)}",
        )
        worlds.append(world)
        world.cycle()  # first start: old mail is left alone, the mark is set
        return world

    yield make
    for world in worlds:
        world.close()
