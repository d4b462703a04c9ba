"""The in-memory mailbox behaves like the real backends where the core can tell: the
same script of operations gives the same answers on it and on the Maildir backend, and
its IMAP-specific behaviour (COPY fallback, read-only selection, faults) is as designed."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config.settings import Account
from daemon.errors import ConnectionLostError, MailboxError
from daemon.mailbox.base import Mailbox
from daemon.mailbox.maildir import MaildirMailbox
from tests.core.harness import message, mid
from tests.core.memory import Crash, Fault, Faults, MemoryServer


def script(box: Mailbox) -> list[object]:
    """Operations the core uses; their answers, UIDs made relative to the folder's first."""
    box.open()
    box.ensure_folder("Triage/Cards")
    box.ensure_folder("Archive")
    for name in ("a", "b", "c"):
        box.append("INBOX", message(name, f"text {name}"))
    inbox = box.select("INBOX")
    uids = box.uids_above("INBOX", 0)
    first = uids[0]
    out: list[object] = [inbox.exists, [u - first for u in uids]]
    box.add_flags("INBOX", [first], ["$intent_x", "\\Flagged"])
    box.copy("INBOX", [first + 1], "Archive")
    box.move("INBOX", [first, first + 2], "Triage/Cards")
    out.append(sorted(box.existing("INBOX", uids)) == [first + 1])
    cards = box.message_ids_from("Triage/Cards", 1)
    out.append(sorted(v or "" for v in cards.values()))
    (moved,) = box.find_message_id("Triage/Cards", mid("a"))
    fetched = box.fetch("Triage/Cards", [moved], 1 << 16)[0]
    out.append(sorted(fetched.flags))
    out.append(b"text a" in fetched.raw)  # (Maildir stores LF line ends, IMAP keeps CRLF)
    out.append(box.status("Triage/Cards").uidnext > max(cards))
    box.delete("Archive", box.find_message_id("Archive", mid("b")))
    out.append(box.find_message_id("Archive", mid("b")))
    out.append(box.folder_exists("Nope"))
    return out


def test_same_answers_as_the_maildir_backend(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    maildir = MaildirMailbox(Account(name="m", kind="maildir", path=root))
    assert script(MemoryServer().connect()) == script(maildir)


def test_moves_give_new_uids_and_a_recreated_folder_a_new_uidvalidity() -> None:
    server = MemoryServer()
    box = server.connect()
    box.open()
    box.ensure_folder("X")
    server.deliver(message("a", "x"))
    box.move("INBOX", [1], "X")
    assert box.uids_above("X", 0) == [1]
    box.move("X", [1], "INBOX")
    assert box.uids_above("INBOX", 0) == [2]  # UIDs are never reused
    before = box.status("X").uidvalidity
    server.remove("X")
    server.create("X")
    assert box.status("X").uidvalidity != before


@pytest.mark.parametrize(("uidplus", "left"), [(True, []), (False, [1])])
def test_copy_fallback_without_move(uidplus: bool, left: list[int]) -> None:
    server = MemoryServer(move=False, uidplus=uidplus)
    box = server.connect()
    box.open()
    box.ensure_folder("X")
    server.deliver(message("a", "x"))
    box.faults.sent.clear()
    box.move("INBOX", [1], "X")
    assert box.faults.sent == ["SELECT", "UID COPY", "UID STORE"] + (
        ["UID EXPUNGE"] if uidplus else []
    )
    assert box.uids_above("INBOX", 0) == left  # without UIDPLUS: left marked \Deleted


def test_read_only_selection_refuses_changes() -> None:
    server = MemoryServer()
    server.deliver(message("a", "x"))
    box = server.connect()
    box.open()
    box.read_only = True
    with pytest.raises(MailboxError, match="read-only"):
        box.add_flags("INBOX", [1], ["\\Seen"])
    assert server.folders["INBOX"].messages[1].flags == set()


def test_faults_fire_once_before_or_after_the_effect() -> None:
    server = MemoryServer()
    server.deliver(message("a", "x"))
    faults = Faults(
        [Fault(1, "UID STORE", "after", Crash), Fault(2, "UID STORE", "before", MailboxError)]
    )
    box = server.connect(faults=faults)
    box.open()
    with pytest.raises(Crash):
        box.add_flags("INBOX", [1], ["$a"])
    assert server.folders["INBOX"].messages[1].flags == {"$a"}  # applied, answer lost
    with pytest.raises(MailboxError, match="injected"):
        box.add_flags("INBOX", [1], ["$b"])
    assert server.folders["INBOX"].messages[1].flags == {"$a"}
    box.faults.planned.append(Fault(1, "UID SEARCH", error=ConnectionLostError))
    with pytest.raises(ConnectionLostError):
        box.uids_above("INBOX", 0)
    with pytest.raises(MailboxError, match="not connected"):
        box.uids_above("INBOX", 0)
