"""``undo``: what the core did is put back (flags it added removed, copies deleted, the
message moved back), the undo is journaled like any action, and a restored message is not
triaged again."""

from __future__ import annotations

import pytest

from daemon.core.undo import undo, undoable
from tests.core.conftest import MakeWorld
from tests.core.harness import World, mid
from tests.core.memory import Crash, Fault, Faults, MemoryMailbox
from tests.core.scenario import deliver

NAMES = ["card", "stolen", "transfer", "fee", "unsure"]


def restored(world: World, originals: dict[str, bytes]) -> None:
    """Every message back in INBOX, byte-identical, without the flags the core added,
    once, and no copy left anywhere."""
    located = world.server.locate()
    for message_id, raw in originals.items():
        places = [(folder, m.raw, m.flags) for folder, m in located[message_id]]
        assert places == [("INBOX", raw, set())], (message_id, places)
    assert set(located) == set(originals)


def undo_all(world: World, mailbox: MemoryMailbox) -> list[str]:
    mailbox.open()
    return [r.status for r in undo(world.store, undoable(world.store), lambda _a: mailbox)]


@pytest.mark.parametrize("kind", ["move", "copy"])
def test_undo_restores_and_the_message_is_not_triaged_again(
    make_world: MakeWorld, kind: str
) -> None:
    world = make_world(kind)
    originals = deliver(world, NAMES)
    world.cycle()
    assert len(undoable(world.store)) == len(NAMES)
    assert undo_all(world, world.mailbox) == ["done"] * len(NAMES)
    restored(world, originals)
    report = world.cycle()  # the three moved back have new UIDs in INBOX now
    assert (report.new, report.skipped) == (3, 3)
    restored(world, originals)
    assert undoable(world.store) == []
    assert all(d.status != "pending" for d in world.store.history())


def test_crash_before_the_move_back_leaves_an_undo_that_can_be_run_again(
    make_world: MakeWorld,
) -> None:
    world = make_world()
    originals = deliver(world, ["card"])
    world.cycle()
    crashing = world.server.connect(faults=Faults([Fault(1, "UID MOVE")]))
    with pytest.raises(Crash):
        undo_all(world, crashing)
    world.restart()
    world.mailbox.open()
    world.triage.reconcile(world.account, world.mailbox)  # the interrupted undo: failed
    (interrupted,) = world.store.history(kind="undo")
    assert interrupted.status == "failed" and "interrupted" in (interrupted.reason or "")
    assert undo_all(world, world.mailbox) == ["done"]
    restored(world, originals)


def test_crash_after_the_move_back_does_not_triage_the_message_again(
    make_world: MakeWorld,
) -> None:
    world = make_world()
    originals = deliver(world, ["card"])
    world.cycle()
    crashing = world.server.connect(faults=Faults([Fault(1, "UID MOVE", when="after")]))
    with pytest.raises(Crash):
        undo_all(world, crashing)
    world.restart()
    world.settle()  # recovery sees the message back in INBOX: the undo is done
    (interrupted,) = world.store.history(kind="undo")
    assert interrupted.status == "done", interrupted.reason
    assert world.server.find("INBOX", mid("card")), "filed again after its undo"
    restored(world, originals)
