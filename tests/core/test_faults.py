"""Mailbox errors at every command of a cycle: a refused action fails its decisions with
the reason and leaves the message where it was; a lost connection leaves the records
pending and the next cycle settles them."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from daemon.errors import ConnectionLostError, MailboxError
from tests.core.conftest import MakeWorld
from tests.core.harness import mid
from tests.core.invariants import Expect, check
from tests.core.memory import Fault, Faults
from tests.core.scenario import deliver, expected
from tests.core.test_recovery import BATCH, COMMANDS, PATHS

POINTS = [(kind, n) for kind in PATHS for n in range(1, COMMANDS[kind] + 1)]
# Without MOVE a move is COPY, STORE \Deleted, UID EXPUNGE. When the server refuses the
# STORE or the EXPUNGE after the COPY worked, the copy is taken back and \Deleted removed,
# so the failed decision's "left where it was" is true (these points once left the message
# in two places).
REFUSED_POINTS = POINTS
REFUSED = re.compile(r"^(flag|copy|move) .+ failed: .*injected MailboxError")


@pytest.mark.parametrize(("kind", "n"), REFUSED_POINTS)
def test_refused_command_fails_its_decisions_and_leaves_the_message(
    make_world: MakeWorld, kind: str, n: int
) -> None:
    world = make_world(kind, batch_size=BATCH)
    originals = deliver(world)
    mailbox = world.server.connect(faults=Faults([Fault(n, error=MailboxError)]))
    stopped: MailboxError | None = None
    try:
        world.cycle(mailbox)
    except MailboxError as exc:  # outside an action: the cycle stops, nothing is lost
        stopped = exc
    assert stopped is None or "injected" in str(stopped)
    assert mailbox.faults.fired, f"command {n} was not reached"
    history = world.store.history(kind="triage")
    failed = {d.message_id or "": d for d in history if d.status == "failed"}
    for decision in failed.values():
        assert REFUSED.match(decision.reason or ""), decision.reason
    world.settle()
    want = expected(kind)
    for message_id in failed:
        want[message_id] = replace(want[message_id], folder="INBOX", status="failed", partial=True)
    check(world, originals, want)


@pytest.mark.parametrize(("kind", "n"), POINTS)
def test_lost_connection_leaves_records_pending_for_the_next_cycle(
    make_world: MakeWorld, kind: str, n: int
) -> None:
    """The server applied the command; the answer was lost with the connection."""
    world = make_world(kind, batch_size=BATCH)
    originals = deliver(world)
    world.mailbox.faults.planned.append(Fault(n, when="after", error=ConnectionLostError))
    world.mailbox.faults.sent.clear()
    with pytest.raises(ConnectionLostError):
        world.cycle()
    assert not world.mailbox.connected
    assert all(d.status != "failed" for d in world.store.history())
    world.cycle()  # reconnects; reconciles what was pending
    assert world.store.pending() == []
    assert world.mailbox.opened == 2
    world.settle()
    check(world, originals, expected(kind))


def test_failed_move_is_recorded_with_the_servers_words(make_world: MakeWorld) -> None:
    world = make_world()
    originals = deliver(world, ["card", "fee"])
    world.mailbox.faults.planned.append(Fault(1, "UID MOVE", error=MailboxError))
    world.mailbox.faults.sent.clear()
    report = world.cycle()
    assert (report.failed, report.acted) == (1, 1)
    (card,) = [d for d in world.store.history() if d.status == "failed"]
    assert card.reason == "move Triage/Cards failed: injected MailboxError before UID MOVE #1"
    want = {
        **expected("move", ["fee"]),
        card.message_id or "": Expect(
            "INBOX", frozenset({"$intent_card_arrival"}), status="failed", partial=True
        ),
    }
    check(world, originals, want)


def test_a_move_whose_copy_cannot_be_taken_back_is_settled_by_recovery(
    make_world: MakeWorld,
) -> None:
    """Without MOVE: the EXPUNGE after the COPY is refused, and so is taking the copy back.
    The message may be in two places, so the decision is neither done nor failed: it stays
    pending, and the next cycle's recovery finishes the move (removes the source copy)."""
    world = make_world("copy")
    originals = deliver(world, ["card"])
    world.mailbox.faults.planned += [
        Fault(1, "UID EXPUNGE", error=MailboxError),  # the move's
        Fault(2, "UID EXPUNGE", error=MailboxError),  # the take-back's, in the destination
    ]
    world.mailbox.faults.sent.clear()
    report = world.cycle()
    assert (report.failed, report.acted) == (0, 0)
    (pending,) = world.store.pending()
    assert pending.message_id == mid("card")
    world.settle()
    (decision,) = world.store.history(kind="triage")
    assert decision.status == "done" and "completed after restart" in (decision.reason or "")
    check(world, originals, expected("copy", ["card"]))
