"""UIDVALIDITY changes: stored UIDs are void, messages are re-identified by Message-ID,
nothing is done to a stale UID and nothing decided is decided again."""

from __future__ import annotations

from tests.core.conftest import MakeWorld
from tests.core.harness import crash_at_write, survive
from tests.core.invariants import check
from tests.core.scenario import deliver, expected


def test_renumbered_inbox_re_identifies_by_message_id(make_world: MakeWorld) -> None:
    world = make_world()
    originals = deliver(world, ["fee", "card"])  # the fee stays in INBOX, tagged
    world.cycle()
    originals |= deliver(world, ["transfer", "topup"])  # arrive, not yet triaged
    world.server.renumber("INBOX")
    report = world.cycle()
    assert any("UIDVALIDITY changed" in note for note in report.notes)
    assert any("2 message(s) since the last cycle re-identified" in n for n in report.notes)
    world.settle()
    check(world, originals, expected("move", ["fee", "card", "transfer", "topup"]))


def test_pending_decision_with_a_stale_uid_is_settled_by_message_id(
    make_world: MakeWorld,
) -> None:
    world = make_world("copy")
    names = ["fee", "card", "transfer"]
    originals = deliver(world, names)
    with crash_at_write(2):  # 1: the write-ahead record; 2: marking it done
        assert survive(world.cycle)
    world.server.renumber("INBOX")
    world.restart()
    assert len(world.store.pending()) == len(names)  # acted on, not marked done
    world.settle()
    check(world, originals, expected("copy", names))
