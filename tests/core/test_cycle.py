"""A triage cycle against the in-memory server: rules decide, the server is changed
accordingly, the audit log says why, on each capability set."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.core.cycle import NO_SAFE_MOVE, Mode
from tests.core.conftest import MakeWorld
from tests.core.harness import World, message, mid
from tests.core.invariants import check
from tests.core.memory import MemoryServer
from tests.core.scenario import SERVERS, deliver, expected


@pytest.mark.parametrize("kind", list(SERVERS))
def test_a_cycle_files_messages_by_the_rules(make_world: MakeWorld, kind: str) -> None:
    world = make_world(kind, batch_size=4)
    originals = deliver(world)
    report = world.cycle()
    assert (report.new, report.decided, report.skipped, report.failed) == (9, 9, 1, 0)
    assert report.abstained == 2  # the unsure one (low confidence) and the newsletter
    assert report.error is None
    check(world, originals, expected(kind))
    by_id = {d.message_id: d for d in world.store.history(kind="triage")}
    assert (by_id[mid("unsure")].reason or "").startswith("abstained, low confidence")
    assert "out of scope" in (by_id[mid("news")].reason or "")
    if kind == "no-safe-move":
        assert by_id[mid("card")].reason == NO_SAFE_MOVE
        assert world.server.snapshot().keys() == {"INBOX", "Archive/Transfers", "Archive/All"}


def test_copy_path_sends_copy_and_uid_expunge_never_move(make_world: MakeWorld) -> None:
    world = make_world("copy")
    deliver(world, ["card"])
    mailbox = world.server.connect()
    world.cycle(mailbox)
    sent = mailbox.faults.sent
    assert "UID MOVE" not in sent
    assert sent.count("UID COPY") == 1 and sent.count("UID EXPUNGE") == 1


def test_first_start_leaves_old_mail_alone(tmp_path: Path) -> None:
    server = MemoryServer()
    server.deliver(message("old", "Where is my card"))
    before = server.snapshot()
    world = World(tmp_path, server)
    try:
        report = world.cycle()
        assert report.new == 0 and any("first start" in n for n in report.notes)
        assert server.snapshot() == before
        assert world.store.history() == []
        server.deliver(message("new", "Where is my card"))
        assert world.cycle().new == 1  # mail after the first start is triaged
    finally:
        world.close()


def test_dry_run_changes_nothing_and_records_nothing(make_world: MakeWorld) -> None:
    world = make_world()
    deliver(world)
    before = world.server.snapshot()
    report = world.cycle(mode=Mode(dry_run=True))
    assert report.decided == 9
    assert world.server.snapshot() == before
    assert world.store.history() == []
    assert world.classifier.calls  # it did classify


def test_a_decided_message_is_never_decided_again(make_world: MakeWorld) -> None:
    world = make_world()
    originals = deliver(world, ["card", "fee"])
    world.cycle()
    assert world.settle()[-1].new == 0  # nothing is decided twice
    check(world, originals, expected("move", ["card", "fee"]))


def test_every_log_event_names_its_logger_and_a_cycle_binds_account_and_folder(
    make_world: MakeWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """The JSON log as the daemon writes it: each line says which module logged it, and
    the lines of a cycle carry the account and folder without the code passing them."""
    import json

    import structlog

    from daemon.logs import configure_logging

    world = make_world(batch_size=4)
    deliver(world, ["card", "unsure"])
    capsys.readouterr()
    configure_logging("json", "info")
    try:
        world.cycle()
    finally:
        structlog.reset_defaults()
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    decisions = [e for e in events if e["event"] == "decision"]
    assert len(decisions) == 2
    assert all(e["logger"].startswith("daemon.") for e in events), events
    assert {(e["logger"], e["account"], e["folder"]) for e in decisions} == {
        ("daemon.core.accounting", world.account.name, "INBOX")
    }
