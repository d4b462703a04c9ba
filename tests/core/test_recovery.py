"""Exactly-once across crashes: kill the "process" at every state write and before and
after every mailbox command of a cycle, restart, and check the invariants, on a server
with MOVE and on one without (COPY + STORE \\Deleted + UID EXPUNGE).

The number of crash points was found by running the cycle once with a counter;
:func:`test_every_crash_point_is_covered` fails when the cycle's shape changes, so that the
parametrisation below is updated instead of silently covering fewer points.
"""

from __future__ import annotations

from typing import Literal

import pytest

from tests.core.conftest import MakeWorld
from tests.core.harness import World, crash_at_write, survive
from tests.core.invariants import check
from tests.core.memory import Fault, Faults
from tests.core.scenario import deliver, expected

PATHS = ("move", "copy")
BATCH = 4  # the 9 messages of the mixed batch take three batches
# Measured crash points of the mixed batch's cycle per capability set.
WRITES = {"move": 9, "copy": 9}
COMMANDS = {"move": 47, "copy": 55}


def started(make_world: MakeWorld, kind: str) -> tuple[World, dict[str, bytes]]:
    world = make_world(kind, batch_size=BATCH)
    return world, deliver(world)


def recovered(world: World, kind: str, originals: dict[str, bytes]) -> None:
    world.restart()
    world.settle()
    check(world, originals, expected(kind))


@pytest.mark.parametrize("kind", PATHS)
def test_every_crash_point_is_covered(make_world: MakeWorld, kind: str) -> None:
    world, originals = started(make_world, kind)
    writes: list[int] = []
    mailbox = world.server.connect()
    with crash_at_write(None, writes):
        world.cycle(mailbox)
    check(world, originals, expected(kind))
    assert (len(writes), len(mailbox.faults.sent)) == (WRITES[kind], COMMANDS[kind]), (
        f"the cycle now makes {len(writes)} state writes and sends {len(mailbox.faults.sent)} "
        f"commands ({mailbox.faults.sent}): update WRITES and COMMANDS"
    )


@pytest.mark.parametrize(
    ("kind", "n"), [(kind, n) for kind in PATHS for n in range(1, WRITES[kind] + 1)]
)
def test_crash_at_every_state_write(make_world: MakeWorld, kind: str, n: int) -> None:
    world, originals = started(make_world, kind)
    with crash_at_write(n):
        assert survive(world.cycle), f"state write {n} was not reached"
    recovered(world, kind, originals)


@pytest.mark.parametrize(
    ("kind", "n", "when"),
    [
        (kind, n, when)
        for kind in PATHS
        for n in range(1, COMMANDS[kind] + 1)
        for when in ("before", "after")
    ],
)
def test_crash_at_every_mailbox_command(
    make_world: MakeWorld, kind: str, n: int, when: Literal["before", "after"]
) -> None:
    """``before``: the command never reached the server; ``after``: the server applied it
    and its answer was lost with the process."""
    world, originals = started(make_world, kind)
    mailbox = world.server.connect(faults=Faults([Fault(n, when=when)]))
    assert survive(lambda: world.cycle(mailbox)), f"command {n} was not reached"
    recovered(world, kind, originals)
